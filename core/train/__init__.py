"""Training: tile datasets and spatial validation split, the supervised loop, the label-free
encoder training, the Train Model job that ties inputs together, and the HTML training report.
"""

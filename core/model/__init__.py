"""Models: the self-contained model file, the network wrapper that runs batches on a device, device
choice, the label-free clustering (filter bank, k-means segmenter) and the model_info command
line.
"""

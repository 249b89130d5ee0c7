"""Segment Anything: checkpoint loading, image windows at the raster's resolution, prompted
segmentation from layers, automatic masks with cross-window merging, and decoder fine-tuning
data.
"""

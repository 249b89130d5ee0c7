"""Inference: the threaded read/infer/write pipeline, Segment Raster (supervised classes and
probabilities), its input checks, and label-free segments (k-means over embeddings).
"""

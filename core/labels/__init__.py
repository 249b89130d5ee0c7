"""Labels: class tables (values, names, colours), label rasters and polygons burnt onto an image
grid, and pseudo-labels grown from points with superpixels.
"""

"""Raster and vector I/O: opening and checking rasters, windows, safe writers that rename into
place, band statistics and normalisation, resampling to a model's resolution, and the origin-
anchored tile grid with its blending.
"""

"""Raster and vector I/O: opening and checking rasters, windows, safe writers that rename into
place (``raster.OutputRaster``, ``vector.VectorWriter``) published together by
``outputs.OutputSet`` (all or nothing, GeoPackage layers added without touching the others),
QGIS default styles written as QML (``styles``), band statistics and normalisation, resampling
to a model's resolution, the origin-anchored tile grid with its blending, and ellipsoidal
measures (``geodesy``).
"""

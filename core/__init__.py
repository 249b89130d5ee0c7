"""MapSeg's engine: numpy, GDAL, torch and scikit-learn only. Never imports qgis."""

"""MapSeg's Qt widgets (qgis.PyQt only); the logic they drive lives in ``install/``."""

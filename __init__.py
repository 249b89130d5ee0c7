"""MapSeg QGIS plugin: deep-learning segmentation of geospatial rasters in Processing."""


def classFactory(iface):  # noqa: N802 - QGIS plugin entry point
    from .plugin import MapSegPlugin

    return MapSegPlugin(iface)

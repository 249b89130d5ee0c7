"""The MapSeg Processing provider.

Algorithms are imported here, but none of them imports torch at module level: QGIS starts fast
and the provider loads even where PyTorch is missing (those algorithms then explain themselves
through ``canExecute``).
"""

from pathlib import Path

from qgis.core import QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import settings
from .algorithms import ALGORITHMS

HERE = Path(__file__).resolve().parent


class MapSegProvider(QgsProcessingProvider):
    def id(self):
        return "mapseg"

    def name(self):
        return "MapSeg"

    def longName(self):
        return "MapSeg: deep-learning segmentation of geospatial rasters"

    def icon(self):
        return QIcon(str(HERE / "icon.svg"))

    def svgIconPath(self):
        return str(HERE / "icon.svg")

    def load(self):
        # Options > Processing > Providers > MapSeg, the way QGIS's own providers do it.
        settings.register(self.icon())
        return super().load()

    def unload(self):
        settings.unregister()
        super().unload()

    def supportedOutputRasterLayerExtensions(self):
        # Outputs are written by GDAL as tiled, compressed GeoTIFF with colour tables.
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg", "shp", "geojson", "fgb"]

    def defaultVectorFileExtension(self, hasGeometry=True):
        return "gpkg"

    def loadAlgorithms(self):
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())
        # Shipped Graphical Modeler chains appear in the Toolbox under MapSeg > Models.
        for path in sorted((HERE / "models").glob("*.model3")):
            model = QgsProcessingModelAlgorithm()
            if model.fromFile(str(path)):
                model.setSourceFilePath(str(path))
                self.addAlgorithm(model)

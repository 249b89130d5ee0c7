"""Polygonize Classes: a class raster -> polygons with class, name, area, perimeter."""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsProcessingLayerPostProcessorInterface,
    QgsRendererCategory,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from ..core.vectorize.polygonize import polygonize_classes
from . import params as P
from .base import MapSegAlgorithm
from .destinations import output_value, vector_destination

# Post-processors must outlive processAlgorithm (QGIS holds no Python reference to them):
# one per destination, replaced when the same destination is written again.
_POST_PROCESSORS: dict = {}


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the loaded layer by ``class`` with the raster's colour table and names."""

    def __init__(self, colors: dict, names: dict, classes) -> None:
        super().__init__()
        self.colors = dict(colors)
        self.names = dict(names)
        self.classes = sorted(classes)

    def renderer(self) -> QgsCategorizedSymbolRenderer:
        categories = []
        for value in self.classes:
            symbol = QgsFillSymbol.createSimple({"outline_style": "no"})
            rgba = self.colors.get(value)
            if rgba is not None:
                symbol.setColor(QColor(*[int(c) for c in rgba]))
            else:  # a class without a colour-table entry: a stable grey
                symbol.setColor(QColor.fromHsv(0, 0, 96 + (value * 37) % 128))
            label = self.names.get(value) or str(value)
            categories.append(QgsRendererCategory(value, symbol, label))
        return QgsCategorizedSymbolRenderer("class", categories)

    def postProcessLayer(self, layer, context, feedback):
        if not isinstance(layer, QgsVectorLayer) or layer.fields().indexOf("class") < 0:
            return
        layer.setRenderer(self.renderer())
        layer.triggerRepaint()


class PolygonizeClasses(MapSegAlgorithm):
    NAME = "polygonizeclasses"
    DISPLAY = "Polygonize Classes"
    GROUP = "Vector"

    INPUT = "INPUT"
    BAND = "BAND"
    IGNORE_VALUES = "IGNORE_VALUES"
    MIN_AREA = "MIN_AREA"
    EIGHT_CONNECTED = "EIGHT_CONNECTED"
    SIMPLIFY = "SIMPLIFY"
    DISSOLVE = "DISSOLVE"
    OUTPUT = "OUTPUT"

    def parameters(self) -> list:
        return [
            P.raster(self.INPUT, "Class raster"),
            P.band(self.BAND, "Class band", self.INPUT),
            P.text(self.IGNORE_VALUES, "Class values to ignore, e.g. 0,255 (nodata always is)", ""),
            P.double(
                self.MIN_AREA,
                "Minimum patch area (map units², m² if geographic; 0 = all)",
                0.0,
                minimum=0.0,
            ),
            P.flag(self.EIGHT_CONNECTED, "Join diagonal neighbours (8-connected)"),
            P.double(
                self.SIMPLIFY, "Simplification tolerance (map units; 0 = none)", 0.0, minimum=0.0
            ),
            P.flag(self.DISSOLVE, "Dissolve: one multipolygon per class"),
            P.polygons_out(self.OUTPUT, "Class polygons"),
        ]

    def process(self, parameters, context, feedback):
        src = self.raster_source(parameters, self.INPUT, context)
        requested, dest = vector_destination(self, parameters, self.OUTPUT, context)
        result = polygonize_classes(
            src,
            dest,
            band=self.parameterAsInt(parameters, self.BAND, context),
            ignore_values=self.parameterAsString(parameters, self.IGNORE_VALUES, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            eight_connected=self.parameterAsBoolean(parameters, self.EIGHT_CONNECTED, context),
            simplify=self.parameterAsDouble(parameters, self.SIMPLIFY, context),
            dissolve=self.parameterAsBoolean(parameters, self.DISSOLVE, context),
            reporter=self.reporter(feedback),
        )
        feedback.pushInfo(
            f"Wrote {result.features} polygons of {len(result.classes)} classes to "
            f"{result.path} (areas in {result.area_unit})."
        )
        value = output_value(context, requested, result.uri, "classes")
        if context.willLoadLayerOnCompletion(value):
            styler = ClassStyler(result.colors, result.names, result.classes)
            _POST_PROCESSORS[value] = styler
            context.layerToLoadOnCompletionDetails(value).setPostProcessor(styler)
        return {self.OUTPUT: value}

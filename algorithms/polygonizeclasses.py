"""Polygonize Classes: a class raster -> polygons with class, name, area, perimeter."""

from __future__ import annotations

from ..core.vectorize.polygonize import polygonize_classes
from . import params as P
from .base import MapSegAlgorithm
from .destinations import output_value, vector_destination


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
        # The layer's default style (categorised by class with the raster's colours and
        # names) is stored with the data; the dialog's loaded layer gets it too.
        return {self.OUTPUT: output_value(context, requested, result.uri, "classes")}

"""Topographic Sinks: depth of the DEM's depressions (filled DEM - DEM), with sink polygons."""

from __future__ import annotations

from . import params as P
from .base import MapSegAlgorithm
from .destinations import output_value, vector_destination


class TopographicSinks(MapSegAlgorithm):
    NAME = "topographicsinks"
    DISPLAY = "Topographic Sinks"
    GROUP = "Terrain"
    REQUIRES = ("whitebox_workflows",)

    INPUT = "INPUT"
    BAND = "BAND"
    MAX_DEPTH = "MAX_DEPTH"
    MIN_DEPTH = "MIN_DEPTH"
    MIN_AREA = "MIN_AREA"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    OUTPUT_DEPTH = "OUTPUT_DEPTH"
    OUTPUT_FILLED = "OUTPUT_FILLED"
    OUTPUT_SINKS = "OUTPUT_SINKS"
    SINK_CELLS = "SINK_CELLS"
    SINK_COUNT = "SINK_COUNT"
    VOLUME = "VOLUME"

    def parameters(self) -> list:
        return [
            P.raster(self.INPUT, "DEM"),
            P.band(self.BAND, "Elevation band", self.INPUT),
            P.double(
                self.MIN_DEPTH, "Minimum depth of a sink cell (elevation units)", 0.0, minimum=0.0
            ),
            P.double(
                self.MIN_AREA,
                "Minimum sink polygon area (map units², m² if geographic)",
                0.0,
                minimum=0.0,
            ),
            P.advanced(
                P.double(
                    self.MAX_DEPTH,
                    "Cap depths at (elevation units; empty = no cap)",
                    minimum=0.0,
                    optional=True,
                )
            ),
            P.advanced(
                P.double(
                    self.MEMORY_LIMIT,
                    "Memory limit (GB; empty = MAPSEG_MEMORY_LIMIT_GB or half the RAM)",
                    minimum=0.0,
                    optional=True,
                )
            ),
            P.raster_out(self.OUTPUT_DEPTH, "Sink depth"),
            P.raster_out(self.OUTPUT_FILLED, "Filled DEM", optional=True),
            P.polygons_out(self.OUTPUT_SINKS, "Sink polygons", optional=True),
            P.number_out(self.SINK_CELLS, "Sink cells"),
            P.number_out(self.SINK_COUNT, "Sink polygons"),
            P.number_out(self.VOLUME, "Total sink volume"),
        ]

    def process(self, parameters, context, feedback):
        from ..core.terrain.sinks import topographic_sinks

        src = self.raster_source(parameters, self.INPUT, context)
        depth = self.parameterAsOutputLayer(parameters, self.OUTPUT_DEPTH, context)
        filled = self.optional_output(parameters, self.OUTPUT_FILLED, context)
        sinks, sinks_dest = vector_destination(self, parameters, self.OUTPUT_SINKS, context)
        result = topographic_sinks(
            src,
            depth,
            band=self.parameterAsInt(parameters, self.BAND, context) or 1,
            filled_dest=filled,
            sinks_dest=sinks_dest,
            max_depth=self.optional_double(parameters, self.MAX_DEPTH, context),
            min_depth=self.parameterAsDouble(parameters, self.MIN_DEPTH, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            memory_limit_gb=self.optional_double(parameters, self.MEMORY_LIMIT, context) or None,
            reporter=self.reporter(feedback),
        )
        feedback.pushInfo(
            f"{result.sink_cells} sink cells, deepest {result.max_depth:g}, volume "
            f"{result.volume:g} (areas in {result.area_unit})."
        )
        outputs = {
            self.OUTPUT_DEPTH: output_value(context, depth, result.depth_path),
            self.SINK_CELLS: result.sink_cells,
            self.SINK_COUNT: result.sinks,
            self.VOLUME: result.volume,
        }
        if filled:
            outputs[self.OUTPUT_FILLED] = output_value(context, filled, result.filled_path)
        if sinks:
            outputs[self.OUTPUT_SINKS] = output_value(context, sinks, result.sinks_path, "sinks")
        return outputs

"""Topographic Sinks: depth of the DEM's depressions (filled DEM - DEM), with sink polygons."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from .base import MapSegAlgorithm


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
    OUTPUT_DEPTH = "OUTPUT_DEPTH"
    OUTPUT_FILLED = "OUTPUT_FILLED"
    OUTPUT_SINKS = "OUTPUT_SINKS"
    SINK_CELLS = "SINK_CELLS"
    SINK_COUNT = "SINK_COUNT"
    VOLUME = "VOLUME"

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("DEM")))
        self.addParameter(
            QgsProcessingParameterBand(
                self.BAND, self.tr("Elevation band"), 1, self.INPUT, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_DEPTH,
                self.tr("Minimum depth of a sink cell (elevation units)"),
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA,
                self.tr("Minimum sink polygon area (map units², m² if geographic)"),
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            self.advanced(
                QgsProcessingParameterNumber(
                    self.MAX_DEPTH,
                    self.tr("Cap depths at (elevation units; empty = no cap)"),
                    QgsProcessingParameterNumber.Double,
                    None,
                    optional=True,
                    minValue=0.0,
                )
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(self.OUTPUT_DEPTH, self.tr("Sink depth"))
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_FILLED, self.tr("Filled DEM"), optional=True, createByDefault=False
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.OUTPUT_SINKS,
                self.tr("Sink polygons"),
                QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=False,
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.SINK_CELLS, self.tr("Sink cells")))
        self.addOutput(QgsProcessingOutputNumber(self.SINK_COUNT, self.tr("Sink polygons")))
        self.addOutput(QgsProcessingOutputNumber(self.VOLUME, self.tr("Total sink volume")))

    def process(self, parameters, context, feedback):
        from ..core.terrain.sinks import topographic_sinks

        src = self.raster_source(parameters, self.INPUT, context)
        max_depth = None
        if parameters.get(self.MAX_DEPTH) not in (None, ""):
            max_depth = self.parameterAsDouble(parameters, self.MAX_DEPTH, context)
        filled = self.parameterAsOutputLayer(parameters, self.OUTPUT_FILLED, context) or None
        sinks = self.parameterAsOutputLayer(parameters, self.OUTPUT_SINKS, context) or None
        result = topographic_sinks(
            src,
            self.parameterAsOutputLayer(parameters, self.OUTPUT_DEPTH, context),
            band=self.parameterAsInt(parameters, self.BAND, context) or 1,
            filled_dest=filled,
            sinks_dest=sinks,
            max_depth=max_depth,
            min_depth=self.parameterAsDouble(parameters, self.MIN_DEPTH, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            reporter=self.reporter(feedback),
        )
        feedback.pushInfo(
            f"{result.sink_cells} sink cells, deepest {result.max_depth:g}, volume "
            f"{result.volume:g} (areas in {result.area_unit})."
        )
        outputs = {
            self.OUTPUT_DEPTH: result.depth_path,
            self.SINK_CELLS: result.sink_cells,
            self.SINK_COUNT: result.sinks,
            self.VOLUME: result.volume,
        }
        if filled:
            outputs[self.OUTPUT_FILLED] = result.filled_path
        if sinks:
            outputs[self.OUTPUT_SINKS] = sinks
        return outputs

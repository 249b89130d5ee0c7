"""Segment Raster: a MapSeg model applied to a raster of any size, tile by tile."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import MapSegAlgorithm


class SegmentRaster(MapSegAlgorithm):
    NAME = "segmentraster"
    DISPLAY = "Segment raster"
    GROUP = "Deep learning"
    REQUIRES = ("torch", "torchvision")

    INPUT = "INPUT"
    MODEL = "MODEL"
    EXTENT = "EXTENT"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    RESAMPLE_TO_MODEL = "RESAMPLE_TO_MODEL"
    OUTPUT = "OUTPUT"
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    DEVICES = ["auto", "cpu", "cuda"]

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        # A file parameter (not a layer): a later release adds a shipped default model here.
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                self.tr("MapSeg model file"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter="MapSeg model (*.pt)",
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, self.tr("Extent (empty: the whole raster)"), optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DEVICE, self.tr("Device"), options=self.DEVICES, defaultValue=0
            )
        )
        for name, label in (
            (self.TILE_SIZE, "Tile size in pixels (0: the model's)"),
            (self.OVERLAP, "Tile overlap in pixels (0: an eighth of the tile)"),
            (self.BATCH_SIZE, "Tiles per batch (0: automatic)"),
        ):
            self.addParameter(
                self.advanced(
                    QgsProcessingParameterNumber(
                        name,
                        self.tr(label),
                        type=QgsProcessingParameterNumber.Integer,
                        defaultValue=0,
                        minValue=0,
                        optional=True,
                    )
                )
            )
        self.addParameter(
            self.advanced(
                QgsProcessingParameterBoolean(
                    self.RESAMPLE_TO_MODEL,
                    self.tr("Process at the model's pixel size (resample)"),
                    defaultValue=False,
                )
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Classes")))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_PROBABILITY,
                self.tr("Probability of the winning class"),
                optional=True,
                createByDefault=False,
            )
        )

    def process(self, parameters, context, feedback):
        from ..core.infer import Options, segment_raster

        source = self.raster_source(parameters, self.INPUT, context)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if not rect.isNull():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())

        def number(name):
            return int(self.parameterAsInt(parameters, name, context) or 0)

        options = Options(
            tile_size=number(self.TILE_SIZE),
            overlap=number(self.OVERLAP),
            batch_size=number(self.BATCH_SIZE),
            device=self.DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            resample_to_model=self.parameterAsBool(parameters, self.RESAMPLE_TO_MODEL, context),
        )
        prob = None
        if parameters.get(self.OUTPUT_PROBABILITY) not in (None, ""):
            prob = self.parameterAsOutputLayer(parameters, self.OUTPUT_PROBABILITY, context)
        result = segment_raster(
            source,
            self.parameterAsFile(parameters, self.MODEL, context),
            self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            probability=prob or None,
            extent=extent,
            options=options,
            reporter=self.reporter(feedback),
        )
        feedback.pushInfo(
            f"{result.tiles} tiles on {result.device} in {result.seconds:.1f} s "
            f"(tile {result.tile_size}, overlap {result.overlap}, batch {result.batch_size})."
        )
        return {self.OUTPUT: result.output, self.OUTPUT_PROBABILITY: result.probability}

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
    QgsProcessingParameterString,
)

from .base import MapSegAlgorithm


class SegmentRaster(MapSegAlgorithm):
    NAME = "segmentraster"
    DISPLAY = "Segment Raster"
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
    NUM_SEGMENTS = "NUM_SEGMENTS"
    SMOOTHING = "SMOOTHING"
    RESOLUTION = "RESOLUTION"
    BANDS = "BANDS"
    DEVICES = ["auto", "cpu", "cuda"]
    RESOLUTIONS = ["full", "medium", "low"]

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                self.tr("MapSeg model file (empty: the shipped default model)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter="MapSeg model (*.pt)",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.NUM_SEGMENTS,
                self.tr("Number of segments (label-free models)"),
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=6,
                minValue=2,
                maxValue=50,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.RESOLUTION,
                self.tr("Resolution (medium: 2x, low: 4x coarser pixels; faster, blockier)"),
                options=self.RESOLUTIONS,
                defaultValue=0,
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
        self.addParameter(
            self.advanced(
                QgsProcessingParameterNumber(
                    self.SMOOTHING,
                    self.tr("Smoothing: minimum patch size in pixels (0: none)"),
                    type=QgsProcessingParameterNumber.Integer,
                    defaultValue=0,
                    minValue=0,
                    optional=True,
                )
            )
        )
        self.addParameter(
            self.advanced(
                QgsProcessingParameterString(
                    self.BANDS,
                    self.tr("Input bands fed to the model, e.g. 3,2,1 (empty: default)"),
                    optional=True,
                )
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Classes")))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_PROBABILITY,
                self.tr("Probability of the winning class (label-free: confidence)"),
                optional=True,
                createByDefault=False,
            )
        )

    def process(self, parameters, context, feedback):
        from ..core.infer.inputs import parse_bands
        from ..core.infer.segment import Options, segment_raster

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
            num_segments=number(self.NUM_SEGMENTS),
            smoothing=number(self.SMOOTHING),
            resolution=self.RESOLUTIONS[self.parameterAsEnum(parameters, self.RESOLUTION, context)],
            bands=parse_bands(self.parameterAsString(parameters, self.BANDS, context)),
        )
        prob = None
        if parameters.get(self.OUTPUT_PROBABILITY) not in (None, ""):
            prob = self.parameterAsOutputLayer(parameters, self.OUTPUT_PROBABILITY, context)
        result = segment_raster(
            source,
            self.parameterAsFile(parameters, self.MODEL, context) or None,
            self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            probability=prob or None,
            extent=extent,
            options=options,
            reporter=self.reporter(feedback),
        )
        if result.segments:
            feedback.pushInfo(
                f"Divided into {result.segments} segments (ids 1..{result.segments})."
            )
        feedback.pushInfo(
            f"{result.tiles} tiles on {result.device} in {result.seconds:.1f} s "
            f"(tile {result.tile_size}, overlap {result.overlap}, batch {result.batch_size})."
        )
        return {self.OUTPUT: result.output, self.OUTPUT_PROBABILITY: result.probability}

"""SAM Automatic Masks: every object Segment Anything finds, over a raster of any size."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from .base import MapSegAlgorithm
from .segmentwithsam import add_sam_inputs, load_sam


class SamAutomaticMasks(MapSegAlgorithm):
    NAME = "samautomaticmasks"
    DISPLAY = "SAM Automatic Masks"
    GROUP = "Segment Anything"
    REQUIRES = ("torch", "torchvision", "segment_anything")

    INPUT = "INPUT"
    CHECKPOINT = "CHECKPOINT"
    BANDS = "BANDS"
    DEVICE = "DEVICE"
    POINTS_PER_SIDE = "POINTS_PER_SIDE"
    PRED_IOU_THRESH = "PRED_IOU_THRESH"
    STABILITY_THRESH = "STABILITY_THRESH"
    MIN_AREA = "MIN_AREA"
    PROCESSING_PIXEL_SIZE = "PROCESSING_PIXEL_SIZE"
    OVERLAP = "OVERLAP"
    POINTS_PER_BATCH = "POINTS_PER_BATCH"
    OUTPUT = "OUTPUT"

    def initAlgorithm(self, config=None):
        number = QgsProcessingParameterNumber
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        add_sam_inputs(self)
        self.addParameter(
            number(
                self.POINTS_PER_SIDE,
                self.tr("Point prompts per window side"),
                type=number.Integer,
                defaultValue=32,
                minValue=1,
                maxValue=128,
            )
        )
        for name, label, default in (
            (self.PRED_IOU_THRESH, "Minimum predicted IoU (0-1)", 0.88),
            (self.STABILITY_THRESH, "Minimum stability score (0-1)", 0.95),
        ):
            self.addParameter(
                number(
                    name,
                    self.tr(label),
                    type=number.Double,
                    defaultValue=default,
                    minValue=0.0,
                    maxValue=1.0,
                )
            )
        self.addParameter(
            number(
                self.MIN_AREA,
                self.tr("Minimum mask area in map units (0: keep all)"),
                type=number.Double,
                defaultValue=0.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            self.advanced(
                number(
                    self.PROCESSING_PIXEL_SIZE,
                    self.tr("Processing pixel size in map units (0: the raster's)"),
                    type=number.Double,
                    defaultValue=0.0,
                    minValue=0.0,
                    optional=True,
                )
            )
        )
        for name, label, default in (
            (self.OVERLAP, "Window overlap in pixels (0: a quarter of SAM's input)", 0),
            (self.POINTS_PER_BATCH, "Point prompts per batch", 64),
        ):
            self.addParameter(
                self.advanced(
                    number(
                        name,
                        self.tr(label),
                        type=number.Integer,
                        defaultValue=default,
                        minValue=0 if name == self.OVERLAP else 1,
                        optional=True,
                    )
                )
            )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.OUTPUT, self.tr("SAM masks"), type=QgsProcessing.TypeVectorPolygon
            )
        )

    def process(self, parameters, context, feedback):
        from ..core.io.vector import split_destination
        from ..core.sam.auto import automatic_masks

        source = self.raster_source(parameters, self.INPUT, context)
        sam, _ = load_sam(self, parameters, context, feedback, self.CHECKPOINT, self.DEVICE)
        output, layer_name = split_destination(
            self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        )
        overlap = self.parameterAsInt(parameters, self.OVERLAP, context)
        pixel = self.parameterAsDouble(parameters, self.PROCESSING_PIXEL_SIZE, context)
        automatic_masks(
            source,
            sam,
            output,
            bands=self.parameterAsInts(parameters, self.BANDS, context) or None,
            pixel_size=pixel or None,
            points_per_side=self.parameterAsInt(parameters, self.POINTS_PER_SIDE, context),
            pred_iou_thresh=self.parameterAsDouble(parameters, self.PRED_IOU_THRESH, context),
            stability_thresh=self.parameterAsDouble(parameters, self.STABILITY_THRESH, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            overlap=overlap or None,
            points_per_batch=self.parameterAsInt(parameters, self.POINTS_PER_BATCH, context) or 64,
            layer_name=layer_name,
            reporter=self.reporter(feedback),
        )
        return {self.OUTPUT: output}

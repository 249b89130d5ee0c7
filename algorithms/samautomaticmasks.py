"""SAM Automatic Masks: every object Segment Anything finds, over a raster of any size."""

from __future__ import annotations

from . import params as P
from .sam_base import SamAlgorithm


class SamAutomaticMasks(SamAlgorithm):
    NAME = "samautomaticmasks"
    DISPLAY = "SAM Automatic Masks"

    POINTS_PER_SIDE = "POINTS_PER_SIDE"
    PRED_IOU_THRESH = "PRED_IOU_THRESH"
    STABILITY_THRESH = "STABILITY_THRESH"
    MIN_AREA = "MIN_AREA"
    OVERLAP = "OVERLAP"
    POINTS_PER_BATCH = "POINTS_PER_BATCH"

    def parameters(self) -> list:
        return [
            P.raster(self.INPUT, "Input raster"),
            *self.sam_inputs(),
            P.integer(self.POINTS_PER_SIDE, "Point prompts per window side", 32, 1, 128),
            P.double(self.PRED_IOU_THRESH, "Minimum predicted IoU (0-1)", 0.88, 0.0, 1.0),
            P.double(self.STABILITY_THRESH, "Minimum stability score (0-1)", 0.95, 0.0, 1.0),
            P.double(
                self.MIN_AREA, "Minimum mask area in map units (0: keep all)", 0.0, minimum=0.0
            ),
            self.processing_pixel_size(),
            P.advanced(
                P.integer(
                    self.OVERLAP,
                    "Window overlap in pixels (0: a quarter of SAM's input)",
                    0,
                    minimum=0,
                    optional=True,
                )
            ),
            P.advanced(
                P.integer(
                    self.POINTS_PER_BATCH, "Point prompts per batch", 64, minimum=1, optional=True
                )
            ),
            P.polygons_out(self.OUTPUT, "SAM masks"),
        ]

    def process(self, parameters, context, feedback):
        from ..core.io.vector import split_destination
        from ..core.sam.auto import automatic_masks

        source = self.raster_source(parameters, self.INPUT, context)
        sam, _ = self.load_sam(parameters, context, feedback)
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

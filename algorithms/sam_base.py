"""What both Segment Anything algorithms share: their group, needs, common parameters and the
loading of SAM on the chosen device. Not an algorithm itself (never registered)."""

from __future__ import annotations

from . import params as P
from .base import MapSegAlgorithm


class SamAlgorithm(MapSegAlgorithm):
    GROUP = "Segment Anything"
    REQUIRES = ("torch", "torchvision", "segment_anything")

    INPUT = "INPUT"
    CHECKPOINT = "CHECKPOINT"
    BANDS = "BANDS"
    DEVICE = "DEVICE"
    PROCESSING_PIXEL_SIZE = "PROCESSING_PIXEL_SIZE"
    OUTPUT = "OUTPUT"

    def sam_inputs(self) -> list:
        """The checkpoint, RGB band and device parameters."""
        return [
            P.file_in(
                self.CHECKPOINT,
                "Segment Anything checkpoint (.pth)",
                "SAM checkpoint (*.pth *.pt);;All files (*)",
                optional=False,
            ),
            P.band(self.BANDS, "Bands used as red, green, blue (empty: 1, 2, 3)", self.INPUT, True),
            P.device(self.DEVICE),
        ]

    def processing_pixel_size(self):
        return P.advanced(
            P.double(
                self.PROCESSING_PIXEL_SIZE,
                "Processing pixel size in map units (0: the raster's)",
                0.0,
                minimum=0.0,
                optional=True,
            )
        )

    def load_sam(self, parameters, context, feedback, model_name: str | None = None):
        """(sam, config) on the chosen device, with a log line naming the encoder found; with a
        fine-tuned model (``model_name`` given and set), its mask decoder replaces SAM's own."""
        from ..core.model.device import resolve_device
        from ..core.sam.checkpoint import describe, load_sam
        from ..core.sam.finetune import load_finetuned_sam

        device = resolve_device(self.choice(parameters, self.DEVICE, context))
        path = self.parameterAsFile(parameters, self.CHECKPOINT, context)
        model = self.parameterAsFile(parameters, model_name, context) if model_name else ""
        if model:
            sam, config = load_finetuned_sam(model, path, device)
            feedback.pushInfo(f"The mask decoder fine-tuned in {model}.")
        else:
            sam, config = load_sam(path, device)
        feedback.pushInfo(f"{describe(config)}, on {device}.")
        return sam, config

"""Export Model: a MapSeg model file (.pt) to ONNX, for ONNX Runtime, Deepness and Segment
Raster without PyTorch."""

from __future__ import annotations

from . import params as P
from .base import MapSegAlgorithm


class ExportModel(MapSegAlgorithm):
    NAME = "exportmodel"
    DISPLAY = "Export Model"
    GROUP = "Deep learning"
    REQUIRES = ("torch", "torchvision", "onnx", "onnxruntime")

    MODEL = "MODEL"
    TILE_SIZE = "TILE_SIZE"
    OUTPUT = "OUTPUT"
    MAX_DIFFERENCE = "MAX_DIFFERENCE"

    def parameters(self) -> list:
        return [
            P.file_in(self.MODEL, "MapSeg model file (.pt)", "MapSeg model (*.pt)", optional=False),
            P.advanced(
                P.integer(
                    self.TILE_SIZE, "Tile size in pixels (0: the model's)", 0, 0, optional=True
                )
            ),
            P.file_out(self.OUTPUT, "ONNX model", "ONNX model (*.onnx)"),
            P.number_out(self.MAX_DIFFERENCE, "Largest difference from the PyTorch model"),
        ]

    def process(self, parameters, context, feedback):
        from ..core.model.export import export_model

        dest = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        result = export_model(
            self.parameterAsFile(parameters, self.MODEL, context),
            dest,
            tile=self.optional_int(parameters, self.TILE_SIZE, context) or 0,
            reporter=self.reporter(feedback),
        )
        return {self.OUTPUT: result["output"], self.MAX_DIFFERENCE: result["max_difference"]}

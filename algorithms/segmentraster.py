"""Segment Raster: a MapSeg model applied to a raster of any size, tile by tile."""

from __future__ import annotations

from . import params as P
from .base import INSTALL_HINT, MapSegAlgorithm, missing_modules

RESOLUTIONS = ["full", "medium", "low"]
ZERO = dict(default=0, minimum=0, optional=True)  # 0: automatic / none


class SegmentRaster(MapSegAlgorithm):
    NAME = "segmentraster"
    DISPLAY = "Segment Raster"
    GROUP = "Deep learning"
    # .onnx models (and the shipped default) need only onnxruntime; .pt models PyTorch, or
    # onnxruntime once exported (see core.infer.runtime): checked per model when it runs
    REQUIRES = ()

    INPUT = "INPUT"
    MODEL = "MODEL"
    CHECKPOINT = "CHECKPOINT"
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
    TEST_TIME_AUGMENTATION = "TEST_TIME_AUGMENTATION"
    RESOLUTION = "RESOLUTION"
    BANDS = "BANDS"
    DASK_SCHEDULER = "DASK_SCHEDULER"

    def parameters(self) -> list:
        return [
            P.raster(self.INPUT, "Input raster"),
            P.file_in(
                self.MODEL,
                "Model file: MapSeg .pt or ONNX .onnx (empty: the shipped default model)",
                "Segmentation model (*.pt *.onnx);;MapSeg model (*.pt);;ONNX model (*.onnx)",
            ),
            P.file_in(
                self.CHECKPOINT,
                "SAM checkpoint (.pth; only for SAM models fine-tuned by Train Model)",
                "SAM checkpoint (*.pth *.pt);;All files (*)",
            ),
            P.integer(self.NUM_SEGMENTS, "Number of segments (label-free models)", 6, 2, 50),
            P.choice(
                self.RESOLUTION,
                "Resolution (medium: 2x, low: 4x coarser pixels; faster, blockier)",
                RESOLUTIONS,
            ),
            P.extent(self.EXTENT, "Extent (empty: the whole raster)"),
            P.device(self.DEVICE),
            P.advanced(
                P.integer(
                    self.TILE_SIZE,
                    "Tile size in pixels (0: the model's)",
                    **self._default("TILE_SIZE"),
                )
            ),
            P.advanced(
                P.integer(
                    self.OVERLAP,
                    "Tile overlap in pixels (0: an eighth of the tile, a quarter when label-free)",
                    **ZERO,
                )
            ),
            P.advanced(
                P.integer(
                    self.BATCH_SIZE, "Tiles per batch (0: automatic)", **self._default("BATCH_SIZE")
                )
            ),
            P.advanced(
                P.flag(self.RESAMPLE_TO_MODEL, "Process at the model's pixel size (resample)")
            ),
            P.advanced(
                P.integer(
                    self.SMOOTHING, "Smoothing: minimum patch size in pixels (0: none)", **ZERO
                )
            ),
            P.advanced(
                P.flag(
                    self.TEST_TIME_AUGMENTATION,
                    "Test-time augmentation: average 8 flipped/rotated views (8x slower)",
                )
            ),
            P.advanced(
                P.text(self.BANDS, "Input bands fed to the model, e.g. 3,2,1 (empty: default)")
            ),
            P.advanced(
                P.text(
                    self.DASK_SCHEDULER, "Dask scheduler, e.g. tcp://10.0.0.5:8786 (empty: here)"
                )
            ),
            P.raster_out(self.OUTPUT, "Classes"),
            P.raster_out(
                self.OUTPUT_PROBABILITY,
                "Probability of the winning class (label-free: confidence)",
                optional=True,
            ),
        ]

    def canExecute(self):
        if not missing_modules(["onnxruntime"]) or not missing_modules(["torch", "torchvision"]):
            return True, ""
        return False, (
            "Segment Raster needs onnxruntime (enough for .onnx models and the default model) "
            "or PyTorch (torch, torchvision), which QGIS's Python cannot import. "
            + INSTALL_HINT.format(pkgs="onnxruntime")
        )

    @staticmethod
    def _default(key: str) -> dict:
        """0 (automatic) unless MapSeg's Processing settings give a default."""
        return {**ZERO, "default": P.setting_value(key, 0)}

    def process(self, parameters, context, feedback):
        from ..core.infer.inputs import parse_bands
        from ..core.infer.segment import Options, segment_raster

        source = self.raster_source(parameters, self.INPUT, context)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        extent = None
        if self.given(parameters, self.EXTENT):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if not rect.isNull():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())

        def number(name):
            return int(self.parameterAsInt(parameters, name, context) or 0)

        options = Options(
            tile_size=number(self.TILE_SIZE),
            overlap=number(self.OVERLAP),
            batch_size=number(self.BATCH_SIZE),
            device=self.choice(parameters, self.DEVICE, context),
            resample_to_model=self.parameterAsBool(parameters, self.RESAMPLE_TO_MODEL, context),
            num_segments=number(self.NUM_SEGMENTS),
            smoothing=number(self.SMOOTHING),
            resolution=self.choice(parameters, self.RESOLUTION, context),
            bands=parse_bands(self.parameterAsString(parameters, self.BANDS, context)),
            checkpoint=self.parameterAsFile(parameters, self.CHECKPOINT, context) or "",
            tta=self.parameterAsBool(parameters, self.TEST_TIME_AUGMENTATION, context),
        )
        prob = self.optional_output(parameters, self.OUTPUT_PROBABILITY, context)
        run = segment_raster
        scheduler = self.parameterAsString(parameters, self.DASK_SCHEDULER, context).strip()
        if scheduler:  # the blocks run on a Dask cluster (core.distributed.dask_segment)
            from ..core.distributed.dask_segment import on_cluster

            run = on_cluster(scheduler)
        result = run(
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
            f"{result.tiles} tiles on {result.device} with {result.runtime} in "
            f"{result.seconds:.1f} s "
            f"(tile {result.tile_size}, overlap {result.overlap}, batch {result.batch_size})."
        )
        return {self.OUTPUT: result.output, self.OUTPUT_PROBABILITY: result.probability}

"""Train Model: train a segmentation network on rasters and labels, write a MapSeg model file."""

from __future__ import annotations

from qgis.core import QgsProcessingException

from ..core.distributed import DDP_DEVICE
from . import params as P
from .base import MapSegAlgorithm

# Choices are names (static strings): scripts and saved models refer to them by name.
ARCHITECTURES = ["unet", "deeplabv3", "fcn", "refinenet", "sam"]
# name -> (engine loss, class-weighted); the first is the default (robust to imbalance).
LOSSES = {
    "dice_ce": ("dice_ce", True),
    "ce": ("ce", True),
    "ce_unweighted": ("ce", False),
}


class TrainModel(MapSegAlgorithm):
    NAME = "trainmodel"
    DISPLAY = "Train Model"
    GROUP = "Deep learning"
    REQUIRES = ("torch", "torchvision")

    INPUT = "INPUT"
    LABELS = "LABELS"
    LABEL_POLYGONS = "LABEL_POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    BACKGROUND_VALUE = "BACKGROUND_VALUE"
    CLASSES = "CLASSES"
    ARCHITECTURE = "ARCHITECTURE"
    ARCH_OPTIONS = "ARCH_OPTIONS"
    INIT_MODEL = "INIT_MODEL"
    EPOCHS = "EPOCHS"
    MAX_TRAINING_TIME = "MAX_TRAINING_TIME"
    TILE_SIZE = "TILE_SIZE"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    VALIDATION_FRACTION = "VALIDATION_FRACTION"
    LOSS = "LOSS"
    AUGMENT = "AUGMENT"
    DEVICE = "DEVICE"
    SEED = "SEED"
    IGNORE_VALUE = "IGNORE_VALUE"
    CHECKPOINT = "CHECKPOINT"
    OBJECT_CLASS = "OBJECT_CLASS"
    ENCODER_WEIGHTS = "ENCODER_WEIGHTS"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    VAL_MIOU = "VAL_MIOU"
    VAL_ACCURACY = "VAL_ACCURACY"

    def parameters(self) -> list:
        return [
            P.rasters(self.INPUT, "Input rasters"),
            P.rasters(self.LABELS, "Label rasters (one per input, same order)", optional=True),
            P.features(
                self.LABEL_POLYGONS, "Label polygons (instead of label rasters)", P.POLYGONS, True
            ),
            P.field(self.CLASS_FIELD, "Class field of the label polygons", self.LABEL_POLYGONS),
            P.integer(
                self.BACKGROUND_VALUE,
                "Class of pixels outside every polygon (empty: unlabelled)",
                optional=True,
            ),
            P.text(self.CLASSES, "Classes (value:name:#colour, ...)"),
            P.choice(self.ARCHITECTURE, "Network architecture", ARCHITECTURES),
            P.file_in(self.INIT_MODEL, "Model to fine-tune", "MapSeg model (*.pt)"),
            P.integer(self.EPOCHS, "Epochs", 30, minimum=1),
            P.double(
                self.MAX_TRAINING_TIME,
                "Maximum training time (minutes, 0: no limit)",
                60.0,
                minimum=0.0,
            ),
            P.integer(self.TILE_SIZE, "Tile size (pixels, 0: chosen for the device)", 0, 0),
            *[P.advanced(param) for param in self._tuning()],
            P.file_out(self.OUTPUT_MODEL, "Trained model", "MapSeg model (*.pt)"),
            P.file_out(self.OUTPUT_REPORT, "Training report", "HTML files (*.html)", True),
            P.number_out(self.VAL_MIOU, "Validation mIoU"),
            P.number_out(self.VAL_ACCURACY, "Validation accuracy"),
        ]

    def _tuning(self) -> list:
        return [
            P.text(self.ARCH_OPTIONS, "Network options (key=value, ...)"),
            P.integer(self.BATCH_SIZE, "Batch size (0: chosen for the device)", 0, minimum=0),
            P.double(self.LEARNING_RATE, "Learning rate", 0.001, minimum=1e-7),
            P.double(
                self.VALIDATION_FRACTION, "Validation fraction (spatial blocks)", 0.2, 0.0, 0.9
            ),
            P.choice(self.LOSS, "Loss", list(LOSSES)),
            P.flag(self.AUGMENT, "Augment (flips, rotations, brightness)", True),
            self._device(),
            P.integer(self.SEED, "Random seed", 0, minimum=0),
            P.integer(self.IGNORE_VALUE, "Label value meaning 'not labelled'", 255),
            P.file_in(
                self.CHECKPOINT,
                "Segment Anything checkpoint (.pth, for the sam architecture)",
                "SAM checkpoint (*.pth);;All files (*)",
            ),
            P.integer(
                self.OBJECT_CLASS,
                "Object class: this label value against all others (empty: every class)",
                optional=True,
            ),
            P.file_in(
                self.ENCODER_WEIGHTS,
                "Pretrained encoder weights (torchvision .pth, local file)",
                "PyTorch weights (*.pth *.pt);;All files (*)",
            ),
        ]

    def _raster_paths(self, parameters, name, context) -> list:
        layers = self.parameterAsLayerList(parameters, name, context) or []
        return [self.gdal_path(layer) for layer in layers]

    def _device(self):
        """auto, cpu, cuda, and cuda_ddp: every CUDA GPU, one training process each."""
        param = P.device(self.DEVICE)
        param.setOptions(param.options() + [DDP_DEVICE])
        return param

    def process(self, parameters, context, feedback) -> dict:
        from ..core.train.job import train_model
        from ..core.train.report import write_training_report

        job = self._job(parameters, context, feedback)
        if not job.output.lower().endswith(".pt"):
            job.output += ".pt"
        if job.fit.device == DDP_DEVICE:  # one process per GPU (core.distributed.launch)
            from ..core.distributed.launch import train_ddp

            meta = train_ddp(job, self.reporter(feedback))
        else:
            meta = train_model(job, self.reporter(feedback))
        results = {
            self.OUTPUT_MODEL: job.output,
            # A label-free model (no labels given) has no validation scores.
            self.VAL_MIOU: meta["metrics"].get("miou"),
            self.VAL_ACCURACY: meta["metrics"].get("accuracy"),
        }
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        if report:
            results[self.OUTPUT_REPORT] = write_training_report(report, meta)
        if meta["training"]["stopped_early"]:
            feedback.pushInfo(
                "Training was stopped early; the model file holds the best model found before "
                "the stop."
            )
        return results

    def _job(self, parameters, context, feedback):
        """The engine's TrainJob from the dialog's values."""
        from ..core.train.job import TrainJob
        from ..core.train.loop import FitConfig

        architecture = self.choice(parameters, self.ARCHITECTURE, context)
        arch_kwargs = self._arch_kwargs(parameters, context, architecture)
        loss, weighted = self._loss(parameters, context, architecture)
        polygons, layer_name = self._polygons(parameters, context, feedback)
        return TrainJob(
            images=self._raster_paths(parameters, self.INPUT, context),
            output=self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context),
            label_rasters=self._raster_paths(parameters, self.LABELS, context),
            polygons=polygons,
            polygon_layer=layer_name,
            class_field=self.parameterAsString(parameters, self.CLASS_FIELD, context),
            background=self.optional_int(parameters, self.BACKGROUND_VALUE, context),
            classes=self.parameterAsString(parameters, self.CLASSES, context),
            ignore_value=self.parameterAsInt(parameters, self.IGNORE_VALUE, context),
            architecture=architecture,
            arch_kwargs=arch_kwargs,
            object_class=self.optional_int(parameters, self.OBJECT_CLASS, context),
            init_model=self.parameterAsFile(parameters, self.INIT_MODEL, context),
            tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
            val_fraction=self.parameterAsDouble(parameters, self.VALIDATION_FRACTION, context),
            weighted=weighted,
            encoder_weights=self.parameterAsFile(parameters, self.ENCODER_WEIGHTS, context),
            fit=FitConfig(
                epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                learning_rate=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
                max_minutes=self.parameterAsDouble(parameters, self.MAX_TRAINING_TIME, context),
                loss=loss,
                augment=self.parameterAsBoolean(parameters, self.AUGMENT, context),
                device=self.choice(parameters, self.DEVICE, context),
                seed=self.parameterAsInt(parameters, self.SEED, context),
                balanced=architecture == "sam",  # as many tiles with the object as without
            ),
        )

    def _arch_kwargs(self, parameters, context, architecture: str) -> dict:
        from ..core.model.options import parse_net_options

        kwargs = parse_net_options(self.parameterAsString(parameters, self.ARCH_OPTIONS, context))
        checkpoint = self.parameterAsFile(parameters, self.CHECKPOINT, context)
        if checkpoint and architecture != "sam":
            raise QgsProcessingException(
                "CHECKPOINT (a Segment Anything .pth) is only used with ARCHITECTURE sam."
            )
        if checkpoint:
            kwargs["checkpoint"] = checkpoint
        return kwargs

    def _loss(self, parameters, context, architecture: str) -> tuple:
        name = self.choice(parameters, self.LOSS, context)
        return LOSSES[name]

    def _polygons(self, parameters, context, feedback) -> tuple:
        if not self.given(parameters, self.LABEL_POLYGONS):
            return "", ""
        path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, self.LABEL_POLYGONS, context, ["gpkg", "shp"], "gpkg", feedback
        )
        return path, layer_name or ""

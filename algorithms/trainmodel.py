"""Train Model: train a segmentation network on rasters and labels, write a MapSeg model file."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .base import MapSegAlgorithm

# New architectures go at the end: scripts and saved models refer to them by index.
ARCHITECTURES = ["unet", "deeplabv3", "fcn", "refinenet", "sam"]
LOSSES = [
    ("ce", True, "Cross-entropy, class-weighted"),
    ("dice_ce", True, "Dice + cross-entropy (class-weighted)"),
    ("ce", False, "Cross-entropy, unweighted"),
]
DEVICES = ["auto", "cpu", "cuda"]


def parse_options(text: str) -> dict:
    """``"base_width=16, backbone=resnet50"`` -> ``{"base_width": 16, "backbone": "resnet50"}``."""
    options = {}
    for item in (text or "").replace(";", ",").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise QgsProcessingException(
                f"Cannot read the network option '{item.strip()}': write key=value, e.g. "
                "'base_width=16' or 'backbone=resnet50'."
            )
        key, value = (s.strip() for s in item.split("=", 1))
        for cast in (int, float):
            try:
                options[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            low = value.lower()
            options[key] = {"true": True, "false": False}.get(low, value)
    return options


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
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    VAL_MIOU = "VAL_MIOU"
    VAL_ACCURACY = "VAL_ACCURACY"

    def initAlgorithm(self, config=None):
        tr = self.tr
        Num = QgsProcessingParameterNumber
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.INPUT, tr("Input rasters"), QgsProcessing.TypeRaster
            )
        )
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.LABELS,
                tr("Label rasters (one per input, same order)"),
                QgsProcessing.TypeRaster,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.LABEL_POLYGONS,
                tr("Label polygons (instead of label rasters)"),
                [QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.CLASS_FIELD,
                tr("Class field of the label polygons"),
                parentLayerParameterName=self.LABEL_POLYGONS,
                optional=True,
            )
        )
        self.addParameter(
            Num(
                self.BACKGROUND_VALUE,
                tr("Class of pixels outside every polygon (empty: unlabelled)"),
                Num.Integer,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.CLASSES,
                tr("Classes (value:name:#colour, ...)"),
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.ARCHITECTURE, tr("Network architecture"), ARCHITECTURES, defaultValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.INIT_MODEL,
                tr("Model to fine-tune"),
                extension="pt",
                optional=True,
            )
        )
        self.addParameter(Num(self.EPOCHS, tr("Epochs"), Num.Integer, 30, minValue=1))
        self.addParameter(
            Num(
                self.MAX_TRAINING_TIME,
                tr("Maximum training time (minutes, 0: no limit)"),
                Num.Double,
                60.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            Num(self.TILE_SIZE, tr("Tile size (pixels)"), Num.Integer, 256, minValue=16)
        )
        adv = [
            QgsProcessingParameterString(
                self.ARCH_OPTIONS,
                tr("Network options (key=value, ...)"),
                optional=True,
            ),
            Num(self.BATCH_SIZE, tr("Batch size"), Num.Integer, 8, minValue=1),
            Num(self.LEARNING_RATE, tr("Learning rate"), Num.Double, 0.001, minValue=1e-7),
            Num(
                self.VALIDATION_FRACTION,
                tr("Validation fraction (spatial blocks)"),
                Num.Double,
                0.2,
                minValue=0.0,
                maxValue=0.9,
            ),
            QgsProcessingParameterEnum(
                self.LOSS, tr("Loss"), [name for _, _, name in LOSSES], defaultValue=0
            ),
            QgsProcessingParameterBoolean(
                self.AUGMENT, tr("Augment (flips, rotations, brightness)"), True
            ),
            QgsProcessingParameterEnum(self.DEVICE, tr("Device"), DEVICES, defaultValue=0),
            Num(self.SEED, tr("Random seed"), Num.Integer, 0, minValue=0),
            Num(
                self.IGNORE_VALUE,
                tr("Label value meaning 'not labelled'"),
                Num.Integer,
                255,
            ),
            QgsProcessingParameterFile(
                self.CHECKPOINT,
                tr("Segment Anything checkpoint (.pth, for the sam architecture)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter="SAM checkpoint (*.pth);;All files (*)",
                optional=True,
            ),
            Num(
                self.OBJECT_CLASS,
                tr("Object class: this label value against all others (empty: every class)"),
                Num.Integer,
                optional=True,
            ),
        ]
        for param in adv:
            self.addParameter(self.advanced(param))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_MODEL, tr("Trained model"), tr("MapSeg model (*.pt)")
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_REPORT,
                tr("Training report"),
                tr("HTML files (*.html)"),
                optional=True,
                createByDefault=True,
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.VAL_MIOU, tr("Validation mIoU")))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_ACCURACY, tr("Validation accuracy")))

    def _raster_paths(self, parameters, name, context) -> list:
        paths = []
        for layer in self.parameterAsLayerList(parameters, name, context) or []:
            if layer.providerType() != "gdal":
                raise QgsProcessingException(
                    f"The layer '{layer.name()}' comes from the '{layer.providerType()}' "
                    "provider; MapSeg reads rasters through GDAL. Save it as a GeoTIFF first."
                )
            paths.append(layer.source())
        return paths

    def process(self, parameters, context, feedback) -> dict:
        from ..core.train.job import TrainJob, train_model
        from ..core.train.loop import FitConfig
        from ..core.train.report import write_training_report

        polygons, layer_name = "", ""
        if parameters.get(self.LABEL_POLYGONS):
            polygons, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
                parameters, self.LABEL_POLYGONS, context, ["gpkg", "shp"], "gpkg", feedback
            )
        background = None
        if parameters.get(self.BACKGROUND_VALUE) not in (None, ""):
            background = self.parameterAsInt(parameters, self.BACKGROUND_VALUE, context)
        architecture = ARCHITECTURES[self.parameterAsEnum(parameters, self.ARCHITECTURE, context)]
        arch_kwargs = parse_options(self.parameterAsString(parameters, self.ARCH_OPTIONS, context))
        checkpoint = self.parameterAsFile(parameters, self.CHECKPOINT, context)
        if checkpoint and architecture != "sam":
            raise QgsProcessingException(
                "CHECKPOINT (a Segment Anything .pth) is only used with ARCHITECTURE sam."
            )
        if checkpoint:
            arch_kwargs["checkpoint"] = checkpoint
        loss_index = self.parameterAsEnum(parameters, self.LOSS, context)
        if architecture == "sam" and parameters.get(self.LOSS) is None:
            loss_index = 1  # SAM fine-tuning: dice + cross-entropy unless LOSS says otherwise
        loss, weighted, _ = LOSSES[loss_index]
        object_class = None
        if parameters.get(self.OBJECT_CLASS) not in (None, ""):
            object_class = self.parameterAsInt(parameters, self.OBJECT_CLASS, context)
        job = TrainJob(
            images=self._raster_paths(parameters, self.INPUT, context),
            output=self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context),
            label_rasters=self._raster_paths(parameters, self.LABELS, context),
            polygons=polygons,
            polygon_layer=layer_name or "",
            class_field=self.parameterAsString(parameters, self.CLASS_FIELD, context),
            background=background,
            classes=self.parameterAsString(parameters, self.CLASSES, context),
            ignore_value=self.parameterAsInt(parameters, self.IGNORE_VALUE, context),
            architecture=architecture,
            arch_kwargs=arch_kwargs,
            object_class=object_class,
            init_model=self.parameterAsFile(parameters, self.INIT_MODEL, context),
            tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
            val_fraction=self.parameterAsDouble(parameters, self.VALIDATION_FRACTION, context),
            weighted=weighted,
            fit=FitConfig(
                epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                learning_rate=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
                max_minutes=self.parameterAsDouble(parameters, self.MAX_TRAINING_TIME, context),
                loss=loss,
                augment=self.parameterAsBoolean(parameters, self.AUGMENT, context),
                device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
                seed=self.parameterAsInt(parameters, self.SEED, context),
                balanced=architecture == "sam",  # as many tiles with the object as without
            ),
        )
        if not job.output.lower().endswith(".pt"):
            job.output += ".pt"
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

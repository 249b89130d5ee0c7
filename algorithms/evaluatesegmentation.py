"""Evaluate Segmentation: pixel and object accuracy of a class raster against a reference."""

from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingException,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from . import params as P
from .base import MapSegAlgorithm

FIELD_TYPES = {
    "class_value": QVariant.Int,
    "class_name": QVariant.String,
    "reference_pixels": QVariant.LongLong,
    "predicted_pixels": QVariant.LongLong,
}


class EvaluateSegmentation(MapSegAlgorithm):
    NAME = "evaluatesegmentation"
    DISPLAY = "Evaluate Segmentation"
    GROUP = "Deep learning"
    REQUIRES = ("scipy",)

    PREDICTION = "PREDICTION"
    PREDICTION_BAND = "PREDICTION_BAND"
    REFERENCE = "REFERENCE"
    REFERENCE_BAND = "REFERENCE_BAND"
    REFERENCE_POLYGONS = "REFERENCE_POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    IGNORE_VALUES = "IGNORE_VALUES"
    OBJECT_CLASS = "OBJECT_CLASS"
    OBJECT_IOU_THRESHOLD = "OBJECT_IOU_THRESHOLD"
    OUTPUT_TABLE = "OUTPUT_TABLE"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    NUMBERS = {
        "MIOU": "Mean IoU",
        "OVERALL_ACCURACY": "Overall accuracy",
        "KAPPA": "Cohen's kappa",
        "MEAN_F1": "Mean F1",
        "EVALUATED_PIXELS": "Evaluated pixels",
        "OBJECT_F1": "Object F1",
        "OBJECT_TP": "Matched objects (true positives)",
        "OBJECT_FP": "Unmatched predicted objects (false positives)",
        "OBJECT_FN": "Unmatched reference objects (false negatives)",
    }

    def parameters(self) -> list:
        return [
            P.raster(self.PREDICTION, "Predicted class raster"),
            P.advanced(P.band(self.PREDICTION_BAND, "Prediction band", self.PREDICTION)),
            P.raster(self.REFERENCE, "Reference class raster", optional=True),
            P.advanced(P.band(self.REFERENCE_BAND, "Reference band", self.REFERENCE)),
            P.features(
                self.REFERENCE_POLYGONS,
                "Reference polygons (instead of a reference raster)",
                P.POLYGONS,
                optional=True,
            ),
            P.field(
                self.CLASS_FIELD,
                "Class field of the reference polygons",
                self.REFERENCE_POLYGONS,
            ),
            P.text(
                self.IGNORE_VALUES,
                "Class values to ignore, e.g. 0, 255 (nodata is always ignored)",
                "",
            ),
            P.advanced(
                P.integer(
                    self.OBJECT_CLASS,
                    "Object class value (object F1; default: two-class maps only)",
                    optional=True,
                )
            ),
            P.advanced(
                P.double(self.OBJECT_IOU_THRESHOLD, "IoU an object match needs", 0.5, 0.01, 1.0)
            ),
            P.table_out(self.OUTPUT_TABLE, "Per-class scores"),
            P.file_out(
                self.OUTPUT_REPORT, "HTML report", "HTML files (*.html)", True, create=False
            ),
            *[P.number_out(key, label) for key, label in self.NUMBERS.items()],
        ]

    def process(self, parameters, context, feedback):
        from ..core.evaluate.evaluation import evaluate_segmentation, parse_ignore, table_rows
        from ..core.io.raster import check_destination

        prediction = self.raster_source(parameters, self.PREDICTION, context)
        reference = None
        if self.given(parameters, self.REFERENCE):
            reference = self.raster_source(parameters, self.REFERENCE, context)
        polygons, layer_name = self._polygons(parameters, context, feedback)
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        if report:
            check_destination(report, [prediction, reference or ""])
        object_class = self.optional_int(parameters, self.OBJECT_CLASS, context)
        result = evaluate_segmentation(
            prediction,
            reference=reference,
            polygons=polygons,
            polygon_layer=layer_name or None,
            class_field=self.parameterAsString(parameters, self.CLASS_FIELD, context),
            prediction_band=self.parameterAsInt(parameters, self.PREDICTION_BAND, context) or 1,
            reference_band=self.parameterAsInt(parameters, self.REFERENCE_BAND, context) or 1,
            ignore=parse_ignore(self.parameterAsString(parameters, self.IGNORE_VALUES, context)),
            object_class=object_class,
            object_iou=self.parameterAsDouble(parameters, self.OBJECT_IOU_THRESHOLD, context),
            reporter=self.reporter(feedback),
        )
        s, obj = result.scores, result.objects or {}
        for note in result.notes:
            feedback.pushInfo(note)
        feedback.pushInfo(
            f"Mean IoU {s['miou']:.4f}, overall accuracy {s['accuracy']:.4f}, kappa "
            f"{s['kappa']:.4f}, mean F1 {s['mean_f1']:.4f} over {s['pixels']} pixels."
        )
        if obj:
            feedback.pushInfo(
                f"Object F1 {obj['f1'] if obj['f1'] is not None else 'undefined (no objects)'}: "
                f"{obj['tp']} matched, {obj['fp']} false positives, {obj['fn']} false negatives "
                f"(class {obj['class']}, IoU >= {obj['iou_threshold']:g})."
            )

        if report:
            from ..core.evaluate.report import write_evaluation_report

            write_evaluation_report(report, result, prediction, reference or polygons)

        # Written only now, so a failure above leaves no table behind.
        table_id = self._write_table(parameters, context, table_rows(result))
        return {
            self.OUTPUT_TABLE: table_id,
            self.OUTPUT_REPORT: report or None,
            "MIOU": s["miou"],
            "OVERALL_ACCURACY": s["accuracy"],
            "KAPPA": s["kappa"],
            "MEAN_F1": s["mean_f1"],
            "EVALUATED_PIXELS": s["pixels"],
            "OBJECT_F1": obj.get("f1"),
            "OBJECT_TP": obj.get("tp"),
            "OBJECT_FP": obj.get("fp"),
            "OBJECT_FN": obj.get("fn"),
        }

    def _polygons(self, parameters, context, feedback) -> tuple:
        if not self.given(parameters, self.REFERENCE_POLYGONS):
            return None, None
        polygons, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters,
            self.REFERENCE_POLYGONS,
            context,
            ["gpkg", "shp", "geojson", "fgb"],
            "gpkg",
            feedback,
        )
        if not polygons:
            raise QgsProcessingException("The reference polygons could not be loaded.")
        return polygons, layer_name

    def _write_table(self, parameters, context, rows) -> str:
        """The per-class table through QGIS's sink (any format Processing offers)."""
        fields = QgsFields()
        for name in rows[0]:
            fields.append(QgsField(name, FIELD_TYPES.get(name, QVariant.Double)))
        sink, table_id = self.parameterAsSink(
            parameters,
            self.OUTPUT_TABLE,
            context,
            fields,
            QgsWkbTypes.NoGeometry,
            QgsCoordinateReferenceSystem(),
        )
        if sink is None:
            raise QgsProcessingException("Cannot create the per-class table (OUTPUT_TABLE).")
        for row in rows:
            feature = QgsFeature(fields)
            feature.setAttributes(list(row.values()))
            sink.addFeature(feature, QgsFeatureSink.FastInsert)
        del sink  # close the file before QGIS loads it
        return table_id

"""Write the Graphical Modeler models shipped under models/ (run after changing this file).

`.venv/bin/python scripts/build_models.py` rebuilds every .model3 with QGIS's own model API, so
the files are exactly what the Modeler itself saves and stay in step with parameter ids.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessing,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildDependency,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)
from qgis.core import (
    QgsProcessingModelChildParameterSource as Source,
)
from qgis.PyQt.QtCore import QPointF

ROOT = Path(__file__).resolve().parents[1]


def child(
    model,
    child_id,
    alg_id,
    description,
    x,
    y,
    sources,
    outputs=(),
    config=None,
    depends_on=(),
):
    alg = QgsProcessingModelChildAlgorithm(alg_id)
    if config:
        alg.setConfiguration(config)
    if depends_on:
        alg.setDependencies([QgsProcessingModelChildDependency(c, b) for c, b in depends_on])
    alg.setChildId(child_id)
    alg.setDescription(description)
    alg.setPosition(QPointF(x, y))
    for name, source in sources.items():
        alg.addParameterSources(name, source if isinstance(source, list) else [source])
    model_outputs = {}
    for output_name, child_output in outputs:
        out = QgsProcessingModelOutput(output_name)
        out.setChildId(child_id)
        out.setChildOutputName(child_output)
        out.setPosition(QPointF(x + 200, y + 60))
        model_outputs[output_name] = out
    alg.setModelOutputs(model_outputs)
    model.addChildAlgorithm(alg)
    return alg


def param(model, definition, x, y):
    component = QgsProcessingModelParameter(definition.name())
    component.setPosition(QPointF(x, y))
    model.addModelParameter(definition, component)


def dem_sinks_to_polygons() -> QgsProcessingModelAlgorithm:
    model = QgsProcessingModelAlgorithm("DEM sinks to polygons", "Models", "mapseg")
    model.setHelpContent(
        {
            "ALG_DESC": "Topographic Sinks on a DEM, sink cells deeper than the minimum depth "
            "as a class raster, then Polygonize Classes: one polygon per connected sink area "
            "with its area and perimeter.",
        }
    )
    param(model, QgsProcessingParameterRasterLayer("dem", "DEM"), 80, 60)
    min_depth = QgsProcessingParameterNumber(
        "min_depth", "Minimum sink depth", QgsProcessingParameterNumber.Double, 0.1, False, 0
    )
    param(model, min_depth, 80, 160)
    min_area = QgsProcessingParameterNumber(
        "min_area", "Minimum polygon area", QgsProcessingParameterNumber.Double, 0, False, 0
    )
    param(model, min_area, 80, 260)
    child(
        model,
        "sinks",
        "mapseg:topographicsinks",
        "Topographic Sinks",
        320,
        80,
        {
            "INPUT": Source.fromModelParameter("dem"),
            "MIN_DEPTH": Source.fromModelParameter("min_depth"),
        },
    )
    # Depth > 0 (the sinks step already zeroed cells at or below the minimum depth) -> class 1;
    # everything else becomes nodata, which Polygonize Classes always ignores.
    child(
        model,
        "mask",
        "native:reclassifybytable",
        "Sink cells as class 1",
        320,
        200,
        {
            "INPUT_RASTER": Source.fromChildOutput("sinks", "OUTPUT_DEPTH"),
            "RASTER_BAND": Source.fromStaticValue(1),
            "TABLE": Source.fromStaticValue(["0", "", "1"]),
            "RANGE_BOUNDARIES": Source.fromStaticValue(0),  # min < value <= max
            "NO_DATA": Source.fromStaticValue(0),
            "NODATA_FOR_MISSING": Source.fromStaticValue(True),
            "DATA_TYPE": Source.fromStaticValue(0),  # Byte
        },
    )
    child(
        model,
        "polygons",
        "mapseg:polygonizeclasses",
        "Polygonize Classes",
        320,
        320,
        {
            "INPUT": Source.fromChildOutput("mask", "OUTPUT"),
            "MIN_AREA": Source.fromModelParameter("min_area"),
        },
        outputs=[("Sink polygons", "OUTPUT")],
    )
    return model


def points_to_landcover() -> QgsProcessingModelAlgorithm:
    model = QgsProcessingModelAlgorithm("Points to land-cover map", "Models", "mapseg")
    model.setHelpContent(
        {
            "ALG_DESC": "A land-cover map from a few clicked points: Pseudo-label From Points "
            "spreads each point's class over its superpixel, Train Model learns from those "
            "partial labels (unlabelled pixels are ignored), Segment Raster maps the whole "
            "scene and Polygonize Classes turns the map into styled polygons. When a reference "
            "raster is given, Evaluate Segmentation scores the map against it.",
        }
    )
    param(model, QgsProcessingParameterRasterLayer("scene", "Scene"), 80, 60)
    points = QgsProcessingParameterFeatureSource(
        "points", "Labelled points", [QgsProcessing.TypeVectorPoint]
    )
    param(model, points, 80, 140)
    param(
        model,
        QgsProcessingParameterField(
            "class_field", "Class field", parentLayerParameterName="points"
        ),
        80,
        220,
    )
    minutes = QgsProcessingParameterNumber(
        "training_minutes",
        "Training time (minutes)",
        QgsProcessingParameterNumber.Double,
        5,
        False,
        0.1,
    )
    param(model, minutes, 80, 300)
    size = QgsProcessingParameterNumber(
        "superpixel_size",
        "Superpixel size (pixels)",
        QgsProcessingParameterNumber.Integer,
        20,
        False,
        2,
    )
    param(model, size, 80, 380)
    reference = QgsProcessingParameterRasterLayer(
        "reference", "Reference map (optional)", optional=True
    )
    param(model, reference, 80, 460)
    child(
        model,
        "pseudo",
        "mapseg:pseudolabelfrompoints",
        "Pseudo-label From Points",
        340,
        80,
        {
            "INPUT": Source.fromModelParameter("scene"),
            "POINTS": Source.fromModelParameter("points"),
            "CLASS_FIELD": Source.fromModelParameter("class_field"),
            "SUPERPIXEL_SIZE": Source.fromModelParameter("superpixel_size"),
        },
    )
    child(
        model,
        "train",
        "mapseg:trainmodel",
        "Train Model",
        340,
        200,
        {
            "INPUT": Source.fromModelParameter("scene"),
            "LABELS": Source.fromChildOutput("pseudo", "OUTPUT"),
            "MAX_TRAINING_TIME": Source.fromModelParameter("training_minutes"),
            "TILE_SIZE": Source.fromModelParameter("tile_size"),
        },
        outputs=[("Model", "OUTPUT_MODEL")],
    )
    child(
        model,
        "segment",
        "mapseg:segmentraster",
        "Segment Raster",
        340,
        320,
        {
            "INPUT": Source.fromModelParameter("scene"),
            "MODEL": Source.fromChildOutput("train", "OUTPUT_MODEL"),
        },
        outputs=[("Land-cover map", "OUTPUT")],
    )
    child(
        model,
        "polygons",
        "mapseg:polygonizeclasses",
        "Polygonize Classes",
        340,
        440,
        {"INPUT": Source.fromChildOutput("segment", "OUTPUT")},
        outputs=[("Land-cover polygons", "OUTPUT")],
    )
    # Evaluate only when a reference is given: a conditional branch gates the step.
    condition = {"name": "with reference", "expression": "@reference IS NOT NULL"}
    child(
        model,
        "has_reference",
        "native:condition",
        "Reference given?",
        600,
        320,
        {},
        config={"conditions": [condition]},
    )
    child(
        model,
        "evaluate",
        "mapseg:evaluatesegmentation",
        "Evaluate Segmentation",
        600,
        440,
        {
            "PREDICTION": Source.fromChildOutput("segment", "OUTPUT"),
            "REFERENCE": Source.fromModelParameter("reference"),
        },
        outputs=[("Evaluation report", "OUTPUT_REPORT")],
        depends_on=[("has_reference", "with reference")],
    )
    return model


MODELS = {
    "dem_sinks_to_polygons": dem_sinks_to_polygons,
    "points_to_landcover": points_to_landcover,
}


def main() -> int:
    app = QgsApplication([], False)
    app.initQgis()
    for name, build in MODELS.items():
        path = ROOT / "models" / f"{name}.model3"
        assert build().toFile(str(path)), f"could not write {path}"
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

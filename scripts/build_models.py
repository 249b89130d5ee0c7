"""Write the Graphical Modeler models shipped under models/ (run after changing this file).

`.venv/bin/python scripts/build_models.py` rebuilds every .model3 with QGIS's own model API, so
the files are exactly what the Modeler itself saves and stay in step with parameter ids.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)
from qgis.core import (
    QgsProcessingModelChildParameterSource as Source,
)
from qgis.PyQt.QtCore import QPointF

ROOT = Path(__file__).resolve().parents[1]


def child(model, child_id, alg_id, description, x, y, sources, outputs=()):
    alg = QgsProcessingModelChildAlgorithm(alg_id)
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


MODELS = {"dem_sinks_to_polygons": dem_sinks_to_polygons}


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

"""mapseg:evaluatesegmentation through QGIS Processing, qgis_process and the Toolbox dialog."""

from __future__ import annotations

import base64
import csv
import re

import numpy as np
import pytest
from conftest import (
    CancelAfter,
    qgis_process_json,
    run_alg,
    sample_file,
    save_dialog_screenshot,
    write_raster,
)
from osgeo import gdal, ogr
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    jaccard_score,
)
from test_evaluate import GT, OBJECTS_PRED, OBJECTS_REF, draw, random_maps, square_polygons

ALG = "evaluatesegmentation"


def sk(y_true, y_pred):
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    return {
        "MIOU": jaccard_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "OVERALL_ACCURACY": accuracy_score(y_true, y_pred),
        "KAPPA": cohen_kappa_score(y_true, y_pred, labels=labels),
        "MEAN_F1": f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
    }


def read_table(path):
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    assert layer.GetGeomType() == ogr.wkbNone
    return [feat.items() for feat in layer]


def test_scores_table_and_report(provider, tmp_path):
    pred, ref = random_maps()
    ref[:4, :] = 255  # reference nodata
    names = ["", "water", "forest", "field", "town", "bare", "cloud"]
    p = write_raster(tmp_path / "pred.tif", pred.astype(np.uint8), category_names=names)
    r = write_raster(tmp_path / "ref.tif", ref.astype(np.uint8), nodata=255)
    out = run_alg(
        ALG,
        {
            "PREDICTION": p,
            "REFERENCE": r,
            "IGNORE_VALUES": "6",
            "OUTPUT_TABLE": str(tmp_path / "scores.gpkg"),
            "OUTPUT_REPORT": str(tmp_path / "report.html"),
        },
    )
    keep = (ref != 255) & (pred != 6)
    expected = sk(ref[keep], pred[keep])
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert out["EVALUATED_PIXELS"] == keep.sum()
    assert out["OBJECT_F1"] is None  # five classes: no object scores

    rows = read_table(out["OUTPUT_TABLE"])
    assert [row["class_value"] for row in rows] == [1, 2, 3, 4, 5]
    assert [row["class_name"] for row in rows] == names[1:6]
    y_true, y_pred = ref[keep], pred[keep]
    iou = jaccard_score(y_true, y_pred, labels=[1, 2, 3, 4, 5], average=None)
    np.testing.assert_allclose([row["iou"] for row in rows], iou)
    classes = (1, 2, 3, 4, 5)
    assert [row["reference_pixels"] for row in rows] == [(y_true == c).sum() for c in classes]
    assert [row["predicted_pixels"] for row in rows] == [(y_pred == c).sum() for c in classes]

    html = (tmp_path / "report.html").read_text()
    assert "forest" in html and f"{expected['MIOU']:.4f}" in html
    png = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def boxes_to_squares(boxes, value):
    """Pixel boxes (row0, row1, col0, col1) of the GT grid as map squares (UTM 33N)."""
    return [
        (GT[0] + 10 * c0, GT[3] - 10 * (r1 + 1), GT[0] + 10 * (c1 + 1), GT[3] - 10 * r0, value)
        for r0, r1, c0, c1 in boxes
    ]


def test_polygons_in_another_crs_and_object_f1(provider, tmp_path):
    p = write_raster(tmp_path / "pred.tif", draw(OBJECTS_PRED))
    u_shape = [(30, 37, 20, 22), (30, 37, 30, 32), (36, 37, 20, 32)]
    squares = boxes_to_squares([(0, 39, 0, 39)], 0)  # background first: objects burn over it
    squares += boxes_to_squares(OBJECTS_REF + u_shape, 1)
    poly = square_polygons(tmp_path / "ref_wgs84.gpkg", 4326, squares)
    out = run_alg(
        ALG,
        {
            "PREDICTION": p,
            "REFERENCE_POLYGONS": poly,
            "CLASS_FIELD": "cls",
            "OUTPUT_TABLE": str(tmp_path / "scores.csv"),
        },
    )
    ref = draw(OBJECTS_REF)
    pred = draw(OBJECTS_PRED)
    for key, value in sk(ref.ravel(), pred.ravel()).items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    # Same objects as the engine test: split, merge, miss, false alarm, shifted, U-shape.
    assert (out["OBJECT_TP"], out["OBJECT_FP"], out["OBJECT_FN"]) == (4, 3, 3)
    assert out["OBJECT_F1"] == pytest.approx(8 / 14)
    with open(out["OUTPUT_TABLE"], newline="") as f:  # CSV works as well as GeoPackage
        rows = list(csv.DictReader(f))
    assert [r["class_value"] for r in rows] == ["0", "1"]
    iou = jaccard_score(ref.ravel(), pred.ravel(), average=None)
    np.testing.assert_allclose([float(r["iou"]) for r in rows], iou)


def test_qgis_process_aligns_differing_grids(tmp_path):
    pred, ref = random_maps((30, 40), seed=7)
    p = write_raster(tmp_path / "pred.tif", pred)
    fine = np.repeat(np.repeat(ref, 2, axis=0), 2, axis=1)  # 5 m pixels, 2x2 per 10 m pixel
    r = write_raster(tmp_path / "ref.tif", fine, geotransform=(GT[0], 5.0, 0, GT[3], 0, -5.0))
    doc = qgis_process_json(
        ALG,
        {
            "PREDICTION": p,
            "REFERENCE": r,
            "OUTPUT_TABLE": str(tmp_path / "scores.gpkg"),
            "OBJECT_CLASS": 2,
            "OBJECT_IOU_THRESHOLD": 0.3,
        },
    )
    res = doc["results"]
    for key, value in sk(ref.ravel(), pred.ravel()).items():
        assert res[key] == pytest.approx(value, abs=1e-9), key
    assert res["EVALUATED_PIXELS"] == 1200
    assert res["OBJECT_TP"] + res["OBJECT_FP"] > 0 and 0.0 <= res["OBJECT_F1"] <= 1.0
    assert len(read_table(tmp_path / "scores.gpkg")) == 6  # classes 1..6
    log = " ".join(doc["log"]["info"])
    assert "resampled onto the prediction's grid with nearest neighbour" in log


def test_strata_against_the_landsat_training_data(provider, tmp_path):
    """The NC strata map against the land-cover polygons and the labelled-pixel raster.

    Measured (and checked with gdal_rasterize + numpy): the 2264 pixels whose centres fall in
    the 34 polygons agree exactly with strata.tif (7 classes); the labelled-pixel raster, which
    also labels polygon edges, agrees on 2859 of its 2872 pixels (0.99547).
    """
    strata = str(sample_file("strata.tif"))
    out = run_alg(
        ALG,
        {
            "PREDICTION": strata,
            "REFERENCE_POLYGONS": str(sample_file("landsat96_polygons.shp")),
            "CLASS_FIELD": "id",
            "OUTPUT_TABLE": str(tmp_path / "strata.gpkg"),
        },
    )
    assert out["EVALUATED_PIXELS"] == 2264
    assert out["OVERALL_ACCURACY"] == 1.0 and out["MIOU"] == 1.0 and out["KAPPA"] == 1.0
    assert [row["class_value"] for row in read_table(out["OUTPUT_TABLE"])] == list(range(1, 8))

    labelled = str(sample_file("landsat96_labelled_pixels.tif"))
    out = run_alg(
        ALG,
        {"PREDICTION": strata, "REFERENCE": labelled, "OUTPUT_TABLE": str(tmp_path / "px.gpkg")},
    )
    pred, ref = gdal.Open(strata).ReadAsArray(), gdal.Open(labelled).ReadAsArray()
    keep = (ref > 0) & (pred > 0)
    assert out["EVALUATED_PIXELS"] == keep.sum() == 2872
    assert out["OVERALL_ACCURACY"] == pytest.approx(2859 / 2872)
    for key, value in sk(ref[keep].astype(int), pred[keep].astype(int)).items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert 0.98 < out["KAPPA"] < 1.0


def test_bad_inputs_leave_no_table(provider, tmp_path):
    from qgis.core import QgsProcessingException

    pred, ref = random_maps((10, 10))
    p = write_raster(tmp_path / "pred.tif", pred)
    r = write_raster(tmp_path / "ref.tif", ref)
    far = write_raster(tmp_path / "far.tif", ref, geotransform=(0.0, 10.0, 0, 0.0, 0, -10.0))
    poly = square_polygons(tmp_path / "poly.gpkg", 3857, boxes_to_squares([(0, 4, 0, 4)], 1))
    table = tmp_path / "scores.gpkg"
    cases = [
        ({"REFERENCE": far}, "does not overlap"),
        ({}, "exactly one reference"),
        ({"REFERENCE": r, "REFERENCE_POLYGONS": poly, "CLASS_FIELD": "cls"}, "not both"),
        ({"REFERENCE_POLYGONS": poly}, "need CLASS_FIELD"),
        ({"REFERENCE_POLYGONS": poly, "CLASS_FIELD": "label"}, "holds text"),
        ({"REFERENCE": r, "REFERENCE_BAND": 3}, "Band 3 does not exist"),
        ({"REFERENCE": r, "IGNORE_VALUES": "1,2,3,4,5,6"}, "nothing to evaluate"),
        ({"REFERENCE": r, "IGNORE_VALUES": "water"}, "IGNORE_VALUES"),
    ]
    for extra, message in cases:
        params = {"PREDICTION": p, "OUTPUT_TABLE": str(table), **extra}
        with pytest.raises(QgsProcessingException, match=message):
            run_alg(ALG, params)
        assert not table.exists(), extra


def test_cancel_leaves_no_table(provider, tmp_path):
    from qgis.core import QgsProcessingException

    rng = np.random.default_rng(1)
    big = rng.integers(0, 3, (600, 700)).astype(np.uint8)
    p = write_raster(tmp_path / "pred.tif", big)
    r = write_raster(tmp_path / "ref.tif", big[::-1].copy())
    table = tmp_path / "scores.gpkg"
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_alg(
            ALG,
            {"PREDICTION": p, "REFERENCE": r, "OUTPUT_TABLE": str(table)},
            feedback=CancelAfter(0.0),
        )
    assert not table.exists()
    assert gdal.Open(p).ReadAsArray().sum() == big.sum()


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot(f"mapseg:{ALG}", qgis_iface)
    assert path.exists() and path.stat().st_size > 10_000

"""core.evaluate without QGIS: scores equal scikit-learn's, object F1 on constructed objects."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_raster
from osgeo import gdal, ogr, osr
from scenes import GT
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from mapseg.core.errors import CanceledError, MapSegError
from mapseg.core.evaluate.evaluation import evaluate_segmentation, parse_ignore
from mapseg.core.io.raster import set_category_names
from mapseg.core.progress import Reporter


def random_maps(shape=(37, 53), seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(1, 6, shape).astype(np.int16)
    pred = np.where(rng.random(shape) < 0.7, ref, rng.integers(1, 7, shape)).astype(np.int16)
    return pred, ref


def assert_like_sklearn(result, y_true, y_pred):
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    s = result.scores
    assert result.values == labels
    assert s["pixels"] == y_true.size
    assert s["confusion"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert s["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert s["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred, labels=labels), 1e-12)
    kw = {"labels": labels, "zero_division": 0}
    assert s["miou"] == pytest.approx(jaccard_score(y_true, y_pred, average="macro", **kw))
    assert s["mean_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", **kw))
    per = s["per_class"]
    np.testing.assert_allclose(
        [c["iou"] for c in per], jaccard_score(y_true, y_pred, average=None, **kw)
    )
    np.testing.assert_allclose([c["f1"] for c in per], f1_score(y_true, y_pred, average=None, **kw))
    np.testing.assert_allclose(
        [c["precision"] for c in per], precision_score(y_true, y_pred, average=None, **kw)
    )
    np.testing.assert_allclose(
        [c["recall"] for c in per], recall_score(y_true, y_pred, average=None, **kw)
    )


def test_scores_equal_sklearn_over_many_blocks_with_nodata_and_ignore(tmp_path):
    pred, ref = random_maps()
    pred[0:3, :] = -1  # prediction nodata
    ref[:, 50:] = 99  # reference nodata
    ref[10, :] = 5  # and a class to ignore in a stripe
    p = write_raster(tmp_path / "p.tif", pred, nodata=-1)
    r = write_raster(tmp_path / "r.tif", ref, nodata=99)
    progress = []
    result = evaluate_segmentation(
        p, r, ignore=parse_ignore("5, 0"), reporter=Reporter(progress.append), block=(7, 5)
    )
    keep = (pred != -1) & (ref != 99) & (pred != 5) & (ref != 5) & (pred != 0) & (ref != 0)
    assert_like_sklearn(result, ref[keep], pred[keep])
    assert 6 in result.values and 5 not in result.values  # predicted-only class 6 counts
    assert len(progress) >= 64 and progress == sorted(progress) and progress[-1] == 100.0
    assert result.objects is None  # six classes: no object scores
    # Block size never changes a number.
    whole = evaluate_segmentation(p, r, ignore=[0, 5], block=(53, 37))
    assert whole.scores == result.scores


def test_category_names_and_float_class_rasters(tmp_path):
    pred, ref = random_maps(seed=3)
    names = ["", "water", "forest", "field", "town", "bare", "cloud"]
    p = write_raster(tmp_path / "p.tif", pred.astype(np.float32), category_names=names)
    r = write_raster(tmp_path / "r.tif", ref.astype(np.uint8))
    result = evaluate_segmentation(p, r, block=(16, 16))
    assert [c["name"] for c in result.scores["per_class"]] == names[1:]
    assert_like_sklearn(result, ref.ravel(), pred.ravel())


OBJECTS_REF = [  # (row0, row1, col0, col1) inclusive
    (2, 7, 2, 7),  # A: predicted exactly -> TP
    (2, 7, 12, 21),  # B: split into B1 (IoU 0.6, TP) and B2 (FP)
    (12, 17, 2, 7),  # C1 \ merged into one predicted C (IoU 0.46 with each): FP + 2 FN
    (12, 17, 9, 14),  # C2 /
    (25, 28, 25, 28),  # D: missed -> FN
    (22, 27, 2, 7),  # F: shifted by one row, IoU 30/42 -> TP
]
OBJECTS_PRED = [
    (2, 7, 2, 7),
    (2, 7, 12, 17),  # B1
    (2, 7, 19, 21),  # B2
    (12, 17, 2, 14),  # C (merge)
    (30, 33, 2, 5),  # E: false alarm -> FP
    (23, 28, 2, 7),
]


def draw(boxes, value=1, shape=(40, 40)):
    arr = np.zeros(shape, dtype=np.uint8)
    for r0, r1, c0, c1 in boxes:
        arr[r0 : r1 + 1, c0 : c1 + 1] = value
    # G: a U-shaped object in both, joined only along its bottom rows (spans several windows).
    arr[30:38, 20:23] = value
    arr[30:38, 30:33] = value
    arr[36:38, 20:33] = value
    return arr


@pytest.mark.parametrize("block", [(40, 40), (7, 5), (3, 4)])
def test_object_f1_split_merge_missed_and_false_alarm(tmp_path, block):
    p = write_raster(tmp_path / "p.tif", draw(OBJECTS_PRED))
    r = write_raster(tmp_path / "r.tif", draw(OBJECTS_REF))
    result = evaluate_segmentation(p, r, block=block)
    obj = result.objects
    # Pred: A, B1, B2, C, E, F, G = 7; ref: A, B, C1, C2, D, F, G = 7; TP = A, B, F, G.
    assert (obj["predicted_objects"], obj["reference_objects"]) == (7, 7)
    assert (obj["tp"], obj["fp"], obj["fn"]) == (4, 3, 3)
    assert obj["f1"] == pytest.approx(8 / 14)
    assert obj["class"] == 1 and "Two classes [0, 1]" in result.notes[0]
    # A lower threshold lets the merged object match one of its two references.
    low = evaluate_segmentation(p, r, block=block, object_iou=0.45).objects
    assert (low["tp"], low["fp"], low["fn"]) == (5, 2, 2)
    assert low["f1"] == pytest.approx(10 / 14)


def test_object_class_chosen_for_a_multiclass_map(tmp_path):
    pred = draw(OBJECTS_PRED, value=3)
    ref = draw(OBJECTS_REF, value=3)
    pred[0, :] = 7  # a third class elsewhere
    ref[0, :] = 7
    p = write_raster(tmp_path / "p.tif", pred)
    r = write_raster(tmp_path / "r.tif", ref)
    assert evaluate_segmentation(p, r).objects is None
    obj = evaluate_segmentation(p, r, object_class=3, block=(9, 9)).objects
    assert (obj["tp"], obj["fp"], obj["fn"], obj["class"]) == (4, 3, 3, 3)


def test_diagonal_neighbours_are_separate_objects(tmp_path):
    arr = np.zeros((6, 6), dtype=np.uint8)
    arr[1, 1] = arr[2, 2] = 1  # touch at a corner only: two 4-connected objects
    p = write_raster(tmp_path / "p.tif", arr)
    r = write_raster(tmp_path / "r.tif", arr)
    obj = evaluate_segmentation(p, r).objects
    assert (obj["tp"], obj["predicted_objects"], obj["f1"]) == (2, 2, 1.0)


def square_polygons(path, epsg, squares):
    """A GeoPackage of (x0, y0, x1, y1, value) squares given in EPSG:32633, stored in ``epsg``."""
    utm, dst = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(32633)
    dst.ImportFromEPSG(epsg)
    for s in (utm, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("ref", dst, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn("label", ogr.OFTString))
    ct = osr.CoordinateTransformation(utm, dst)
    for x0, y0, x1, y1, value in squares:
        geom = ogr.CreateGeometryFromWkt(
            f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"
        )
        geom.Segmentize(5.0)
        geom.Transform(ct)
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetField("cls", value)
        feat.SetField("label", f"name{value}")
        feat.SetGeometry(geom)
        layer.CreateFeature(feat)
    ds = None
    return str(path)


def named_raster(path, classes: np.ndarray, names: dict) -> str:
    """A class raster whose band carries category ``names`` (as Segment Raster writes them)."""
    out = write_raster(path, classes)
    ds = gdal.Open(out, gdal.GA_Update)
    set_category_names(ds.GetRasterBand(1), names)
    ds = None
    return out


def test_reference_polygons_in_another_crs(tmp_path):
    pred, _ = random_maps((20, 20), seed=5)
    pred = (pred % 2 + 1).astype(np.uint8)  # classes 1, 2
    p = write_raster(tmp_path / "p.tif", pred)
    x0, y0 = GT[0], GT[3]
    # Left half class 1, top-right quarter class 2; bottom-right quarter has no reference.
    poly = square_polygons(
        tmp_path / "ref.gpkg",
        4326,
        [(x0, y0 - 200, x0 + 100, y0, 1), (x0 + 100, y0 - 100, x0 + 200, y0, 2)],
    )
    ref = np.zeros((20, 20), dtype=np.int64)
    ref[:, :10] = 1
    ref[:10, 10:] = 2
    keep = ref > 0
    result = evaluate_segmentation(p, polygons=poly, class_field="cls", block=(6, 6))
    assert_like_sklearn(result, ref[keep], pred[keep])
    assert result.scores["pixels"] == 300
    # A text field ("name1", "name2") is matched on the prediction's class names.
    named = named_raster(tmp_path / "named.tif", pred, {1: "Name1 ", 2: "NAME2"})
    result = evaluate_segmentation(named, polygons=poly, class_field="label", block=(6, 6))
    assert_like_sklearn(result, ref[keep], pred[keep])
    assert result.scores["pixels"] == 300
    # "name2" names no class of this prediction: scored as a class it never predicts (3, above
    # its values), with a warning; "name1" still matches class 1.
    other = named_raster(tmp_path / "other.tif", pred, {1: "name1", 2: "forest"})
    warnings = []
    result = evaluate_segmentation(
        other, polygons=poly, class_field="label", reporter=Reporter(warn=warnings.append)
    )
    assert_like_sklearn(result, np.where(ref == 2, 3, ref)[keep], pred[keep])
    assert [c["name"] for c in result.scores["per_class"]] == ["name1", "forest", "name2"]
    assert any("name2 are none of the prediction's class names" in w for w in warnings)
    # No text matching any class name: refused (a numeric field, or the classes' names, needed)
    unnamed = write_raster(tmp_path / "unnamed.tif", pred)
    with pytest.raises(MapSegError, match=r"holds text \(name1, name2\) that matches none"):
        evaluate_segmentation(unnamed, polygons=poly, class_field="label")


def test_differing_grids_are_aligned(tmp_path):
    pred, ref = random_maps((30, 40), seed=7)
    p = write_raster(tmp_path / "p.tif", pred)
    # Reference at 5 m: each prediction pixel centre falls in a 2x2 group of equal values.
    fine = np.repeat(np.repeat(ref, 2, axis=0), 2, axis=1)
    r = write_raster(tmp_path / "r.tif", fine, geotransform=(GT[0], 5.0, 0, GT[3], 0, -5.0))
    log = []
    result = evaluate_segmentation(p, r, reporter=Reporter(log=log.append), block=(8, 8))
    assert_like_sklearn(result, ref.ravel(), pred.ravel())
    assert any("nearest neighbour" in m for m in log)
    # A reference covering only the left half: the rest is not evaluated.
    half = write_raster(tmp_path / "h.tif", ref[:, :20].copy())
    result = evaluate_segmentation(p, half, block=(8, 8))
    assert_like_sklearn(result, ref[:, :20].ravel(), pred[:, :20].ravel())


def test_bad_inputs_say_what_to_do(tmp_path):
    pred, ref = random_maps((10, 10))
    p = write_raster(tmp_path / "p.tif", pred)
    r = write_raster(tmp_path / "r.tif", ref)
    far = write_raster(tmp_path / "far.tif", ref, geotransform=(0.0, 10.0, 0, 0.0, 0, -10.0))
    poly = square_polygons(
        tmp_path / "ref.gpkg", 3857, [(GT[0], GT[3] - 100, GT[0] + 100, GT[3], 1)]
    )
    cases = [
        (dict(reference=r, polygons=poly, class_field="cls"), "exactly one reference"),
        (dict(), "exactly one reference"),
        (dict(reference=far), "does not overlap"),
        (dict(polygons=poly), "need CLASS_FIELD"),
        (dict(polygons=poly, class_field="nope"), "no field 'nope'"),
        (dict(polygons=poly, class_field="label"), "holds text (name1)"),
        (dict(reference=r, prediction_band=2), "Band 2 does not exist"),
        (dict(reference=r, ignore=list(range(0, 7))), "nothing to evaluate"),
        (dict(reference=r, object_iou=0.0), "OBJECT_IOU_THRESHOLD"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MapSegError, match=message.replace("(", r"\(").replace(")", r"\)")):
            evaluate_segmentation(p, **kwargs)
    probs = write_raster(tmp_path / "probs.tif", np.full((10, 10), 0.25, dtype=np.float32))
    with pytest.raises(MapSegError, match="not whole class values"):
        evaluate_segmentation(probs, r)
    with pytest.raises(MapSegError, match="IGNORE_VALUES"):
        parse_ignore("0, x")
    assert parse_ignore(" 0;255 3 ") == [0, 3, 255]


def test_cancel_stops_between_blocks(tmp_path):
    pred, ref = random_maps()
    p = write_raster(tmp_path / "p.tif", pred)
    r = write_raster(tmp_path / "r.tif", ref)
    calls = []
    reporter = Reporter(calls.append, is_canceled=lambda: len(calls) >= 3)
    with pytest.raises(CanceledError):
        evaluate_segmentation(p, r, reporter=reporter, block=(5, 5))
    assert len(calls) == 3
    assert gdal.Open(p) is not None  # inputs untouched

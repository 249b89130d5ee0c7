"""Train Model through QGIS: processing.run, qgis_process, the dialog, polygons, bad inputs."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import (
    CancelAfter,
    qgis_process_json,
    run_alg,
    save_dialog_screenshot,
    write_raster,
)
from osgeo import ogr, osr
from trainscene import scene_files

from mapseg.core.model.modelfile import load_model
from mapseg.core.train.report import report_html

FAST = {
    "ARCHITECTURE": "unet",
    "ARCH_OPTIONS": "base_width=4",
    "TILE_SIZE": 32,
    "BATCH_SIZE": 2,
    "LEARNING_RATE": 0.02,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return scene_files(tmp_path_factory.mktemp("trainmodel"))


@pytest.fixture(scope="module")
def trained(provider, data):
    out = data["dir"] / "model.pt"
    report = data["dir"] / "report.html"
    res = run_alg(
        "trainmodel",
        {
            **FAST,
            "INPUT": [data["img_path"]],
            "LABELS": [data["lab_path"]],
            "CLASSES": "1:water:#1f78b4, 2:forest:#33a02c, 3:urban",
            "EPOCHS": 10,
            "OUTPUT_MODEL": str(out),
            "OUTPUT_REPORT": str(report),
        },
    )
    return res, out, report


def test_trains_through_processing(trained):
    res, out, report = trained
    assert res["OUTPUT_MODEL"] == str(out) and res["OUTPUT_REPORT"] == str(report)
    meta, _ = load_model(str(out))
    assert res["VAL_MIOU"] == pytest.approx(meta["metrics"]["miou"])
    assert res["VAL_ACCURACY"] == pytest.approx(meta["metrics"]["accuracy"])
    assert res["VAL_MIOU"] > 0.85
    assert [(c["value"], c["name"]) for c in meta["classes"]] == [
        (1, "water"),
        (2, "forest"),
        (3, "urban"),
    ]
    assert meta["classes"][0]["color"] == [31, 120, 180]
    assert meta["classes"][2]["color"] not in ([31, 120, 180], [51, 160, 44])
    assert meta["training"]["device"] == "cpu" and len(meta["history"]) == 10


def test_report_holds_curves_and_tables(trained):
    res, out, report = trained
    text = report.read_text()
    # Issue 11: loss, mIoU and per-class IoU curves (a collapse to one class is visible).
    assert len(re.findall(r"<img alt='[^']+' src='data:image/png;base64,", text)) == 3
    assert "per-class IoU curve" in text and "random windows" in text
    assert "Per-class scores" in text and "Confusion matrix" in text
    meta, _ = load_model(str(out))
    kept = min(meta["history"], key=lambda h: (h["val_loss"], -h["val_miou"]))["epoch"]
    assert meta["training"]["kept_epoch"] == kept
    assert f"<td>Epoch kept</td><td>{kept} (lowest validation loss)</td>" in text
    # A file from before the rule does not say which epoch it kept: no claim is made.
    del meta["training"]["kept_epoch"]
    assert "<td>Epoch kept</td><td>-</td>" in report_html(meta)
    for c, p in zip(meta["classes"], meta["metrics"]["per_class"]):
        assert c["name"] in text and f"{p['iou']:.4f}" in text
    row = meta["metrics"]["confusion"][0]
    assert "".join(f"<td>{v}</td>" for v in row) in text
    assert "cpu" in text and "Training time" in text


def test_fine_tune_keeps_classes_and_normalisation(provider, trained, data, tmp_path):
    _, base, _ = trained
    out = tmp_path / "tuned.pt"
    res = run_alg(
        "trainmodel",
        {
            **FAST,
            "ARCHITECTURE": "deeplabv3",  # ignored: the model's architecture is kept
            "INPUT": [data["img_path"]],
            "LABELS": [data["lab_path"]],
            "INIT_MODEL": str(base),
            "LEARNING_RATE": 0.001,  # fine-tuning: a gentle learning rate
            "EPOCHS": 1,
            "OUTPUT_MODEL": str(out),
        },
    )
    m0, _ = load_model(str(base))
    m1, _ = load_model(res["OUTPUT_MODEL"])
    assert m1["architecture"] == "unet" and m1["classes"] == m0["classes"]
    assert m1["band_stats"] == m0["band_stats"]
    assert m1["training"]["init_model"] == "model.pt"
    assert res["VAL_MIOU"] > 0.8  # starts from a trained model: good after one epoch


def _buildings(tmp_path, epsg_vector=4326, text=True):
    """Bright squares (buildings) on a dark background, and their polygons in ``epsg_vector``."""
    rng = np.random.default_rng(1)
    mask = np.zeros((128, 128), bool)
    squares = [(8, 10), (60, 20), (30, 80), (90, 96), (100, 40)]
    for r, c in squares:
        mask[r : r + 20, c : c + 20] = True
    img = np.where(mask, 200, 60)[None] + rng.normal(0, 12, (2, 128, 128))
    img_path = write_raster(tmp_path / "bld.tif", img.astype(np.float32))
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromEPSG(32633)
    dst.ImportFromEPSG(epsg_vector)
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(src, dst)
    path = str(tmp_path / "bld.gpkg")
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = vds.CreateLayer("buildings", dst, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString if text else ogr.OFTInteger))
    for r, c in squares:
        x0, y0 = 500000 + 10 * c, 4000000 - 10 * r
        ring = [(x0, y0), (x0 + 200, y0), (x0 + 200, y0 - 200), (x0, y0 - 200), (x0, y0)]
        wkt = ", ".join("{:.10f} {:.10f}".format(*ct.TransformPoint(x, y)[:2]) for x, y in ring)
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetField("kind", "Building" if text else 1)
        feat.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({wkt}))"))
        layer.CreateFeature(feat)
    vds = None
    return img_path, path, mask


def polygon_params(img_path, poly, out, **extra) -> dict:
    """Train Model on ``_buildings``' raster and polygons: class field "kind", background 0."""
    return {
        **FAST,
        "INPUT": [img_path],
        "LABEL_POLYGONS": poly,
        "CLASS_FIELD": "kind",
        "BACKGROUND_VALUE": 0,
        "EPOCHS": 2,
        "OUTPUT_MODEL": str(out),
        **extra,
    }


def test_label_polygons_in_another_crs(provider, tmp_path):
    img_path, poly, mask = _buildings(tmp_path)
    res = run_alg(
        "trainmodel",
        polygon_params(img_path, poly, tmp_path / "bld.pt", EPOCHS=6,
                       CLASSES="0:background:#000000, 1:building:#ff0000"),
    )  # fmt: skip
    meta, _ = load_model(res["OUTPUT_MODEL"])
    assert [c["name"] for c in meta["classes"]] == ["background", "building"]
    labelled = meta["training"]["labelled_pixels"]
    assert sum(labelled) == 128 * 128  # BACKGROUND_VALUE labels every pixel
    assert labelled[1] == pytest.approx(mask.sum(), rel=0.03)  # reprojected 4326 -> UTM
    assert res["VAL_MIOU"] > 0.8


def test_text_classes_are_numbered_in_sorted_order_without_classes(provider, tmp_path):
    from qgis.core import QgsProcessingFeedback

    img_path, poly, _ = _buildings(tmp_path)
    vds = ogr.Open(poly, 1)
    layer = vds.GetLayer(0)
    for fid, kind in ((4, " shed "), (5, "  ")):  # spaces ignored; a blank text is no class
        feat = layer.GetFeature(fid)
        feat.SetField("kind", kind)
        layer.SetFeature(feat)
    pond = ogr.Feature(layer.GetLayerDefn())  # far off the raster: no pixel, said in the log
    pond.SetField("kind", "pond")
    pond.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((1 1,1.01 1,1.01 1.01,1 1.01,1 1))"))
    layer.CreateFeature(pond)
    vds = layer = None
    feedback = QgsProcessingFeedback()
    res = run_alg("trainmodel", polygon_params(img_path, poly, tmp_path / "text.pt"), feedback)
    meta, _ = load_model(res["OUTPUT_MODEL"])
    assert [(c["value"], c["name"]) for c in meta["classes"]] == [
        (0, "background"),  # BACKGROUND_VALUE's class
        (1, "Building"),
        (3, "shed"),
    ]
    log = feedback.textLog()
    assert "numbered in sorted order: 1 Building, 2 pond, 3 shed" in log
    assert "No labelled pixel of class(es) pond (2) falls where the input rasters hold data" in log
    labelled = meta["training"]["labelled_pixels"]
    assert sum(labelled) == 128 * 128
    # 20 x 20 px squares: three buildings, one shed; the blank one is background
    assert labelled[1] == pytest.approx(3 * 400, rel=0.05)
    assert labelled[2] == pytest.approx(400, rel=0.05)
    # fine-tuning matches the texts on the model's class names: every square now "SHED", which
    # a new numbering would make class 1 (building), stays the model's class 3
    vds = ogr.Open(poly, 1)
    layer = vds.GetLayer(0)
    for feat in layer:
        feat.SetField("kind", "SHED")
        layer.SetFeature(feat)
    vds = layer = None
    tune = polygon_params(
        img_path, poly, tmp_path / "tuned.pt", INIT_MODEL=str(tmp_path / "text.pt")
    )
    res = run_alg("trainmodel", tune)
    tuned, _ = load_model(res["OUTPUT_MODEL"])
    assert tuned["classes"] == meta["classes"]
    tuned_counts = tuned["training"]["labelled_pixels"]
    assert tuned_counts[1] == 0 and tuned_counts[2] == pytest.approx(5 * 400, rel=0.05)


def test_qgis_process(data, tmp_path):
    out = tmp_path / "cli.pt"
    res = qgis_process_json(
        "trainmodel",
        {
            **FAST,
            "INPUT": data["img_path"],
            "LABELS": data["lab_path"],
            "EPOCHS": 2,
            "OUTPUT_MODEL": str(out),
            "OUTPUT_REPORT": str(tmp_path / "cli.html"),
        },
    )
    results = res["results"]
    meta, _ = load_model(str(out))
    assert results["VAL_MIOU"] == pytest.approx(meta["metrics"]["miou"])
    assert [c["name"] for c in meta["classes"]] == ["class 1", "class 2", "class 3"]
    assert (tmp_path / "cli.html").stat().st_size > 10000


def test_cancel_writes_the_best_model_so_far(provider, data, tmp_path):
    feedback = CancelAfter(50)
    logs = []
    feedback.pushInfo = lambda msg: logs.append(msg)  # keep the log for the assertion
    res = run_alg(
        "trainmodel",
        {
            **FAST,
            "INPUT": [data["img_path"]],
            "LABELS": [data["lab_path"]],
            "EPOCHS": 8,
            "OUTPUT_MODEL": str(tmp_path / "c.pt"),
        },
        feedback=feedback,
    )
    meta, _ = load_model(res["OUTPUT_MODEL"])
    tr = meta["training"]
    assert tr["stopped_early"] and tr["stop_reason"] == "canceled"
    assert 1 <= tr["epochs_run"] < 8
    assert res["VAL_MIOU"] == pytest.approx(meta["metrics"]["miou"])
    assert any("stopped early" in m for m in logs)


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot("mapseg:trainmodel", qgis_iface)
    assert path.exists() and path.stat().st_size > 5000


def _bad(tmp_path, data, extra):
    return {
        **FAST,
        "INPUT": [data["img_path"]],
        "EPOCHS": 1,
        "OUTPUT_MODEL": str(tmp_path / "bad.pt"),
        **extra,
    }


@pytest.mark.parametrize(
    "case, message",
    [
        ("bands", "different band counts"),
        ("count", "give one label raster per input"),
        ("unlabelled", "No labelled pixel"),
        ("text_field", "matches no class name"),
        ("init_bands", "reads 2 band"),
        ("one_class", "at least two classes"),
        ("labelfree_init", "label-free training"),  # no labels: label-free, never fine-tuned
    ],
)
def test_bad_inputs_fail_clearly(provider, data, tmp_path, case, message):
    from qgis.core import QgsProcessingException

    extra = {"LABELS": [data["lab_path"]]}
    if case == "bands":
        two = write_raster(tmp_path / "two.tif", data["img"][:2])
        extra.update(INPUT=[data["img_path"], two], LABELS=[data["lab_path"]] * 2)
    elif case == "count":
        extra.update(LABELS=[data["lab_path"], data["lab_path"]])
    elif case == "unlabelled":
        empty = write_raster(tmp_path / "e.tif", np.zeros((128, 128), np.uint8), nodata=0)
        extra.update(LABELS=[empty])
    elif case == "text_field":
        img_path, poly, _ = _buildings(tmp_path)  # "Building" is none of the CLASSES
        extra = {"INPUT": [img_path], "LABEL_POLYGONS": poly, "CLASS_FIELD": "kind",
                 "CLASSES": "0:background, 1:house", "BACKGROUND_VALUE": 0}  # fmt: skip
    elif case == "init_bands":
        img_path, poly, _ = _buildings(tmp_path, text=False)
        run_alg(
            "trainmodel",
            _bad(tmp_path, data, {"INPUT": [img_path], "LABEL_POLYGONS": poly,
                                  "CLASS_FIELD": "kind", "BACKGROUND_VALUE": 0,
                                  "OUTPUT_MODEL": str(tmp_path / "two.pt")}),
        )  # fmt: skip
        extra["INIT_MODEL"] = str(tmp_path / "two.pt")
    elif case == "one_class":
        img_path, poly, _ = _buildings(tmp_path, text=False)
        extra = {"INPUT": [img_path], "LABEL_POLYGONS": poly, "CLASS_FIELD": "kind"}
    elif case == "labelfree_init":
        init = tmp_path / "init.pt"
        init.write_bytes(b"not read: refused before loading")
        extra = {"INIT_MODEL": str(init)}
    with pytest.raises(QgsProcessingException, match=message):
        run_alg("trainmodel", _bad(tmp_path, data, extra))
    assert not (tmp_path / "bad.pt").exists()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_encoder_weights_from_a_local_torchvision_file(provider, data, tmp_path):
    import torch
    import torchvision
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    torch.manual_seed(3)
    weights = tmp_path / "resnet18-test.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    logs = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = lambda msg: logs.append(msg)
    params = {
        **FAST,
        "ARCHITECTURE": "fcn",
        "ARCH_OPTIONS": "",
        "INPUT": [data["img_path"]],
        "LABELS": [data["lab_path"]],
        "EPOCHS": 1,
        "ENCODER_WEIGHTS": str(weights),
        "OUTPUT_MODEL": str(tmp_path / "fcn.pt"),
    }
    res = run_alg("trainmodel", params, feedback=feedback)
    meta, _ = load_model(res["OUTPUT_MODEL"])
    assert meta["architecture"] == "fcn" and meta["arch_kwargs"] == {"backbone": "resnet18"}
    assert meta["training"]["encoder_weights"] == "resnet18-test.pth"
    assert any("pretrained backbone tensors from resnet18-test.pth" in m for m in logs)
    # A file for another backbone: a clear error, and no model file.
    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    bad = {**params, "ENCODER_WEIGHTS": str(wrong), "OUTPUT_MODEL": str(tmp_path / "bad.pt")}
    with pytest.raises(QgsProcessingException, match="does not fit the fcn backbone resnet18"):
        run_alg("trainmodel", bad)
    assert not (tmp_path / "bad.pt").exists()

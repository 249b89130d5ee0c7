"""Segment Raster through QGIS: processing.run, qgis_process, the dialog, styled output."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import (
    CancelAfter,
    qgis_process,
    qgis_process_json,
    read_raster,
    run_alg,
    save_dialog_screenshot,
    write_raster,
)
from osgeo import gdal
from scenes import GT
from segment_models import CLASSES, blobs, random_model, trained_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "trained": trained_model(folder / "bright_dark.pt", steps=60),
        "random": random_model(folder / "random.pt", tile=64),
    }


def scene(path, rows, cols, seed, **kwargs):
    img, truth = blobs(rows, cols, seed=seed)
    return write_raster(path, img, **kwargs), truth


def test_trained_model_recovers_classes_and_output_is_styled(tmp_path, provider, models):
    from qgis.core import QgsPalettedRasterRenderer, QgsRasterLayer

    # a scene of another size and layout than the training image
    src, truth = scene(tmp_path / "scene.tif", 190, 270, seed=11, geotransform=GT)
    dest = str(tmp_path / "classes.tif")
    result = run_alg("segmentraster", {"INPUT": src, "MODEL": models["trained"], "OUTPUT": dest})
    assert result["OUTPUT"] == dest and result["OUTPUT_PROBABILITY"] is None
    out = read_raster(dest)
    expect = np.where(truth == 1, 7, 3)
    accuracy = (out == expect).mean()
    assert accuracy > 0.95, accuracy
    assert 0.05 < (out == 7).mean() < 0.6  # both classes present, as in the truth
    layer = QgsRasterLayer(dest, "classes")
    assert layer.isValid()
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    colors = {c.value: c.color.getRgb()[:3] for c in renderer.classes()}
    assert colors[3] == tuple(CLASSES[0]["color"]) and colors[7] == tuple(CLASSES[1]["color"])
    labels = {c.value: c.label for c in renderer.classes()}
    assert labels[3] == "dark" and labels[7] == "bright"  # the model's class names
    ds = gdal.Open(dest)
    assert ds.GetGeoTransform() == pytest.approx(GT)


def test_qgis_process_with_extent_and_probability(tmp_path, provider, models):
    src, _ = scene(tmp_path / "scene.tif", 120, 160, seed=12, geotransform=GT)
    full = str(tmp_path / "full.tif")
    run_alg("segmentraster", {"INPUT": src, "MODEL": models["random"], "OUTPUT": full})
    # QGIS extent strings are xmin,xmax,ymin,ymax
    extent = f"{GT[0] + 305},{GT[0] + 1098},{GT[3] - 897},{GT[3] - 198} [EPSG:32633]"
    part, prob = str(tmp_path / "part.tif"), str(tmp_path / "prob.tif")
    result = qgis_process_json(
        "segmentraster",
        {
            "INPUT": src,
            "MODEL": models["random"],
            "EXTENT": extent,
            "TILE_SIZE": 0,
            "BATCH_SIZE": 3,
            "DEVICE": "cpu",
            "OUTPUT": part,
            "OUTPUT_PROBABILITY": prob,
        },
    )
    assert result["results"]["OUTPUT"] == part and result["results"]["OUTPUT_PROBABILITY"] == prob
    got, ref = read_raster(part), read_raster(full)
    assert got.shape == (71, 80)  # rows 19..90, columns 30..110
    assert np.array_equal(got, ref[19:90, 30:110])
    assert set(np.unique(got)) == {3, 7}
    p = read_raster(prob)
    assert p.dtype == np.float32 and p.shape == got.shape and 0.5 <= p.min() <= p.max() <= 1.0


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot("mapseg:segmentraster", qgis_iface)
    assert path.exists() and path.stat().st_size > 5000


def test_pixel_size_warning_and_resample(tmp_path, provider, models):
    from qgis.core import QgsProcessingFeedback

    class Feedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.warnings = []

        def pushWarning(self, text):
            self.warnings.append(text)

    # the scene at 20 m; the model was trained on 10 m pixels
    src, truth = scene(
        tmp_path / "coarse.tif", 90, 110, seed=13, geotransform=(0, 20, 0, 0, 0, -20)
    )
    dest = str(tmp_path / "out.tif")
    feedback = Feedback()
    params = {"INPUT": src, "MODEL": models["trained"], "RESAMPLE_TO_MODEL": True, "OUTPUT": dest}
    run_alg("segmentraster", params, feedback=feedback)
    assert any("is 2 times the model's training pixel size" in w for w in feedback.warnings)
    out = read_raster(dest)
    assert out.shape == (90, 110)
    assert (out == np.where(truth == 1, 7, 3)).mean() > 0.95


@pytest.mark.parametrize(
    "case,message",
    [
        ("bands", "has 2 bands but the model"),
        ("missing", "does not exist"),
        ("not_mapseg", "not a MapSeg model"),
        ("outside", "does not overlap the raster"),
        ("overlap", "at least twice the overlap"),
    ],
)
def test_bad_inputs_are_clear_errors_and_leave_no_file(tmp_path, provider, models, case, message):
    from qgis.core import QgsProcessingException

    bands = 2 if case == "bands" else 3
    src = write_raster(tmp_path / "in.tif", blobs(50, 60, seed=1)[0][:bands], geotransform=GT)
    model = models["random"]
    if case == "missing":
        model = str(tmp_path / "nowhere.pt")
    elif case == "not_mapseg":
        model = str(tmp_path / "fake.pt")
        with open(model, "wb") as fh:
            fh.write(b"PK\x03\x04 not really a zip")
    dest = str(tmp_path / "out.tif")
    params = {"INPUT": src, "MODEL": model, "OUTPUT": dest}
    if case == "outside":
        params["EXTENT"] = "0,100,0,100 [EPSG:32633]"
    if case == "overlap":
        params.update(TILE_SIZE=32, OVERLAP=17)
    with pytest.raises(QgsProcessingException, match=message):
        run_alg("segmentraster", params)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(("out", ".out"))]


def test_cancel_leaves_no_file(tmp_path, provider, models):
    from qgis.core import QgsProcessingException

    src = write_raster(tmp_path / "in.tif", blobs(200, 220, seed=2)[0], geotransform=GT)
    dest = str(tmp_path / "out.tif")
    params = {"INPUT": src, "MODEL": models["random"], "BATCH_SIZE": 2, "OUTPUT": dest}
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_alg("segmentraster", params, feedback=CancelAfter(30))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(("out", ".out"))]


def test_qgis_process_reports_band_mismatch(tmp_path, models):
    src = write_raster(tmp_path / "one.tif", blobs(40, 40, seed=3)[0][:1], geotransform=GT)
    proc = qgis_process(
        "segmentraster",
        {"INPUT": src, "MODEL": models["random"], "OUTPUT": str(tmp_path / "out.tif")},
    )
    assert proc.returncode != 0
    assert "has 1 band but the model" in proc.stdout + proc.stderr
    assert not (tmp_path / "out.tif").exists()

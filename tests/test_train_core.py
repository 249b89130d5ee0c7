"""Train Model's engine without QGIS: the loop, its stops and limits, metrics, the model file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_raster
from osgeo import gdal
from trainscene import fast_fit, job, predict, scene_files

from mapseg.core.errors import CanceledError, MapSegError
from mapseg.core.evaluate.metrics import ConfusionMatrix
from mapseg.core.labels import classes as lab
from mapseg.core.model.modelfile import build_model, load_model
from mapseg.core.progress import Reporter
from mapseg.core.train.dataset import TileReader, TileSet, scan_tiles
from mapseg.core.train.job import train_model
from mapseg.core.train.loop import BestModel, FitConfig, fit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return scene_files(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def trained(data):
    log = []
    meta = train_model(
        job(data["dir"], data["img_path"], data["lab_path"], fit=fast_fit(epochs=10)),
        Reporter(log=log.append),
    )
    return meta, str(data["dir"] / "model.pt"), log


def test_learns_a_separable_task(trained, data):
    meta, path, log = trained
    assert meta["metrics"]["miou"] > 0.85, meta["history"]
    assert meta["metrics"]["evaluated_on"] == "validation tiles"
    assert [c["value"] for c in meta["classes"]] == [1, 2, 3]
    assert meta["architecture"] == "unet" and meta["arch_kwargs"]["base_width"] == 4
    assert meta["in_bands"] == 3 and meta["tile_size"] == 32
    assert meta["pixel_size"] == [10.0, 10.0] and "UTM zone 33N" in meta["crs_wkt"]
    assert len(meta["history"]) == 10 and not meta["training"]["stopped_early"]
    assert sum(1 for m in log if m.startswith("Epoch ")) == 10
    # Generated palette: three distinct colours.
    assert len({tuple(c["color"]) for c in meta["classes"]}) == 3
    # The saved file (normalisation included) predicts the whole scene well.
    m2, state = load_model(path)
    pred = predict(m2, state, data["img"])
    assert (pred == data["cls"]).mean() > 0.9


def test_modelfile_roundtrip_and_model_info(trained):
    meta, path, _ = trained
    m2, state = load_model(path)
    assert m2["classes"] == meta["classes"] and m2["band_stats"] == meta["band_stats"]
    assert m2["metrics"]["miou"] == pytest.approx(meta["metrics"]["miou"])
    net = build_model(m2, state)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    out = subprocess.run(
        [sys.executable, "-m", "mapseg.core.model.info", path],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),  # this mapseg
    ).stdout
    assert "unet" in out and "class 1" in out and "class 3" in out and "epochs       : 10" in out


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "mapseg-model", "version": 1, "meta": _Evil(marker)}, path)
    with pytest.raises(MapSegError, match="Refusing to load"):
        load_model(str(path))
    assert not marker.exists()


def test_metrics_equal_scikit_learn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, 5000)
    pred = np.where(rng.random(5000) < 0.7, ref, rng.integers(0, 4, 5000))
    pred[pred == 3] = 2  # class 3 is never predicted
    cm = ConfusionMatrix(4)
    for i in range(0, 5000, 777):  # streamed in uneven blocks
        cm.update(ref[i : i + 777], pred[i : i + 777])
    s = cm.scores()
    assert s["pixels"] == 5000
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(ref, pred))
    assert s["kappa"] == pytest.approx(skm.cohen_kappa_score(ref, pred))
    assert s["miou"] == pytest.approx(skm.jaccard_score(ref, pred, average="macro"))
    ious = skm.jaccard_score(ref, pred, average=None)
    prec = skm.precision_score(ref, pred, average=None, zero_division=0)
    rec = skm.recall_score(ref, pred, average=None)
    f1 = skm.f1_score(ref, pred, average=None)
    for i, c in enumerate(s["per_class"]):
        assert c["iou"] == pytest.approx(ious[i])
        assert c["precision"] == pytest.approx(prec[i])
        assert c["recall"] == pytest.approx(rec[i])
        assert c["f1"] == pytest.approx(f1[i])
    assert np.array_equal(np.array(s["confusion"]), skm.confusion_matrix(ref, pred))
    # A validity mask drops pixels exactly as subsetting does.
    cm2 = ConfusionMatrix(4)
    cm2.update(ref, pred, valid=ref != 0)
    assert cm2.total == int((ref != 0).sum())


def test_partial_labels_train_only_on_labelled_pixels(tmp_path, data):
    sparse = np.full_like(data["cls"], 255)
    sparse[:40, :40] = data["cls"][:40, :40]  # labels only in the top-left corner
    lab_path = write_raster(tmp_path / "sparse.tif", sparse)  # no nodata: 255 = ignore value
    layers = [lab.label_raster(lab_path, gdal.Open(data["img_path"]), 255, Reporter())]
    tiles = scan_tiles([gdal.Open(data["img_path"])], layers, 32, Reporter())
    assert sorted((t.x, t.y) for t in tiles) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert sum(sum(t.values.values()) for t in tiles) == 1600
    meta = train_model(
        job(tmp_path, data["img_path"], lab_path, val_fraction=0.0, fit=fast_fit(epochs=10)),
        Reporter(),
    )
    assert sum(meta["training"]["train_pixels"]) == 1600
    assert meta["metrics"]["evaluated_on"] == "training tiles"
    pred = predict(*load_model(str(tmp_path / "model.pt")), data["img"])
    assert (pred == data["cls"]).mean() > 0.8  # generalises beyond the labelled corner


def test_same_seed_same_model_and_lazy_equals_preloaded(tmp_path, data):
    def run(name, seed, budget):
        train_model(
            job(tmp_path, data["img_path"], data["lab_path"], name=name,
                memory_budget_mb=budget, fit=fast_fit(epochs=2, seed=seed)),
            Reporter(),
        )  # fmt: skip
        return load_model(str(tmp_path / name))

    (m1, s1), (m2, s2) = run("a.pt", 7, 1024), run("b.pt", 7, 0)
    assert m1["training"]["tiles_in_memory"] and not m2["training"]["tiles_in_memory"]
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert m1["history"][-1]["train_loss"] == m2["history"][-1]["train_loss"]
    _, s3 = run("c.pt", 8, 1024)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1 if s1[k].is_floating_point())


def test_time_limit_stops_and_keeps_a_model(tmp_path, data):
    log = []
    meta = train_model(
        job(
            tmp_path, data["img_path"], data["lab_path"], fit=fast_fit(epochs=500, max_minutes=0.02)
        ),
        Reporter(log=log.append),
    )
    tr = meta["training"]
    assert tr["stopped_early"] and tr["stop_reason"] == "time"
    assert 1 <= tr["epochs_run"] < 500 and tr["seconds"] < 30
    assert meta["history"][-1]["complete"] is False
    assert any("stopped early" in m for m in log)
    assert load_model(str(tmp_path / "model.pt"))[0]["training"]["stopped_early"]


def test_best_model_is_the_lowest_validation_loss():
    """A higher mIoU at a higher loss does not replace the kept weights; a NaN loss never wins;
    at an equal loss the higher mIoU does."""
    net = torch.nn.Linear(2, 2)
    best, cm = BestModel(), ConfusionMatrix(2)

    def offer(value: float, loss: float, miou: float) -> None:
        with torch.no_grad():
            net.weight.fill_(value)
        best.offer(net, loss, cm, {"miou": miou})

    offer(1.0, 0.50, 0.40)
    offer(2.0, 0.70, 0.90)  # luckier mIoU, worse loss: not kept
    offer(3.0, float("nan"), 0.99)
    assert float(best.state["weight"][0, 0]) == 1.0
    offer(4.0, 0.50, 0.45)  # same loss, higher mIoU: kept
    assert float(best.state["weight"][0, 0]) == 4.0
    offer(5.0, 0.30, 0.10)  # lower loss: kept
    assert float(best.state["weight"][0, 0]) == 5.0
    assert best.key == (-0.30, 0.10)


def test_cancel_during_training_keeps_the_best_model(tmp_path, data):
    calls = {"n": 0, "epochs": 0}
    log = []

    def on_log(msg):
        log.append(msg)
        calls["epochs"] += msg.startswith("Epoch ")

    # Cancel once two epochs are done: the next batch's progress report stops training.
    rep = Reporter(progress=lambda p: None, is_canceled=lambda: calls["epochs"] >= 2, log=on_log)
    meta = train_model(
        job(tmp_path, data["img_path"], data["lab_path"], fit=fast_fit(epochs=50)), rep
    )
    tr = meta["training"]
    assert tr["stopped_early"] and tr["stop_reason"] == "canceled"
    assert tr["epochs_run"] == 2 and len(meta["history"]) == 2
    # The kept epoch is the one with the lowest validation loss (ties: the higher mIoU).
    kept = min(meta["history"], key=lambda h: (h["val_loss"], -h["val_miou"]))
    assert meta["metrics"]["miou"] == pytest.approx(kept["val_miou"])
    assert meta["training"]["kept_epoch"] == kept["epoch"]
    assert any("canceled by the user" in m for m in log)
    assert os.path.exists(tmp_path / "model.pt")


def test_cancel_before_training_writes_nothing(tmp_path, data):
    rep = Reporter(progress=lambda p: None, is_canceled=lambda: True)
    with pytest.raises(CanceledError):
        train_model(job(tmp_path, data["img_path"], data["lab_path"]), rep)
    assert not os.listdir(tmp_path)


def test_model_info_of_missing_file_fails_cleanly(tmp_path, capsys):
    from mapseg.core.model.info import main

    assert main([str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_labels_on_image_nodata_train_to_finite_weights(tmp_path, data):
    # Three quarters of the image is nodata (0) while labels cover everything: tiles whose
    # labels all lie on nodata hold no usable pixel and must never make a batch (a NaN loss).
    img = data["img"].copy()
    img[:, :, :96] = 0
    img_path = write_raster(tmp_path / "holes.tif", img, nodata=0)
    ds = gdal.Open(img_path)
    layers = [lab.label_raster(data["lab_path"], ds, 255, Reporter())]
    tiles = scan_tiles([ds], layers, 32, Reporter())
    assert sorted({t.x for t in tiles}) == [96]  # only the column of tiles with image data
    usable = int((img != 0).all(axis=0).sum())  # a few noisy pixels clip to 0 too
    assert usable > 4000 and sum(sum(t.values.values()) for t in tiles) == usable
    log = []
    meta = train_model(
        job(tmp_path, img_path, data["lab_path"], val_fraction=0.0, fit=fast_fit(epochs=3)),
        Reporter(log=log.append),
    )
    assert sum(meta["training"]["train_pixels"]) == usable
    assert meta["training"]["skipped_steps"] == 0
    _, state = load_model(str(tmp_path / "model.pt"))
    for k, v in state.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
    assert all(np.isfinite(h["train_loss"]) for h in meta["history"])


def preloaded_tiles(data):
    """The 16 grid tiles (32 px) of the scene, in memory."""
    from mapseg.core.io.normalize import band_stats

    images = [gdal.Open(data["img_path"])]
    layers = [lab.label_raster(data["lab_path"], images[0], 255, Reporter())]
    tiles = scan_tiles(images, layers, 32, Reporter())
    reader = TileReader(images, layers, [1, 2, 3], band_stats(images), 32)
    return TileSet(reader, tiles, preload=True)


def test_a_batch_with_a_non_finite_loss_is_skipped_and_logged(data):
    from mapseg.nets import build_network

    train = preloaded_tiles(data)
    train.x[5] = np.inf  # a crafted tile: every batch holding it has a non-finite loss
    torch.manual_seed(0)
    net = build_network("unet", 3, 3, base_width=4)
    log = []
    cfg = FitConfig(epochs=2, batch_size=1, learning_rate=0.01, augment=False, seed=0)
    result = fit(net, train, train, 3, None, cfg, Reporter(log=log.append))
    # Batch size 1: the crafted tile is one batch per epoch, skipped each time.
    assert result.extra["skipped_steps"] == 2
    assert [h["skipped"] for h in result.history] == [1, 1]
    assert [h["steps"] for h in result.history] == [15, 15]  # the finite batches that stepped
    assert sum("were skipped" in m and "not finite" in m for m in log) == 2
    for k, v in result.state_dict.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
    for k, v in net.state_dict().items():  # the trained network itself, not only the copy
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k


class MemoryLimited(torch.nn.Module):
    """A real network that raises CUDA's out-of-memory error on batches above ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.sizes = limit, []
        self.body = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        self.sizes.append(x.shape[0])
        return self.body(x)


def test_out_of_memory_halves_the_batch_or_stops_clearly(data):
    train = preloaded_tiles(data)
    cfg = FitConfig(epochs=1, batch_size=8, augment=False, seed=0)
    net = MemoryLimited(2)
    result = fit(net, train, train, 3, None, cfg, Reporter())
    # 16 tiles in 2 batches of 8, each run as 4 micro-batches of 2 (gradients accumulated).
    assert result.extra["micro_batch"] == 2 and result.history[0]["steps"] == 2
    assert net.sizes[:4] == [2, 2, 2, 2] and not result.stopped_early
    with pytest.raises(MapSegError, match="ran out of memory even with one tile"):
        fit(MemoryLimited(0), train, train, 3, None, cfg, Reporter())

"""Train Model's engine without QGIS: labels, tiles, split, loop, metrics, model file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_raster
from osgeo import gdal, ogr, osr

from mapseg.core.errors import CanceledError, MapSegError
from mapseg.core.evaluate.metrics import ConfusionMatrix
from mapseg.core.io.normalize import normalise
from mapseg.core.io.windows import BandWindows
from mapseg.core.labels import classes as lab
from mapseg.core.model.modelfile import build_model, load_model
from mapseg.core.progress import Reporter
from mapseg.core.train.dataset import Tile, TileReader, TileSet, scan_tiles, spatial_split
from mapseg.core.train.job import TrainJob, train_model
from mapseg.core.train.loop import BestModel, FitConfig, fit
from mapseg.core.train.losses import class_weights

LEVELS = np.array([300, 1500, 2700])  # band-1 value of classes 1, 2, 3 (uint16 imagery)


def scene(h: int = 128, w: int = 128, seed: int = 0):
    """(image (3, h, w) uint16, labels (h, w) uint8 in 1..3): per-pixel separable classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cls = 1 + (np.sin(xx / 6.0) + np.cos(yy / 5.0) > 0).astype(np.uint8)
    cls[(xx + 2 * yy) % 37 < 6] = 3
    b1 = LEVELS[cls - 1] + rng.normal(0, 150, cls.shape)
    b2 = 4000 - LEVELS[cls - 1] + rng.normal(0, 150, cls.shape)
    b3 = rng.normal(2000, 300, cls.shape)  # pure noise band
    img = np.clip(np.stack([b1, b2, b3]), 0, 65535).astype(np.uint16)
    return img, cls


def fast_fit(**kw) -> FitConfig:
    base = dict(epochs=6, batch_size=2, learning_rate=0.02, seed=0)
    base.update(kw)
    return FitConfig(**base)


def job(tmp_path, img_path, lab_path, name="model.pt", **kw) -> TrainJob:
    base = dict(
        images=[str(img_path)],
        label_rasters=[str(lab_path)],
        output=str(tmp_path / name),
        tile_size=32,
        arch_kwargs={"base_width": 4},
        fit=fast_fit(),
    )
    base.update(kw)
    return TrainJob(**base)


def predict(meta: dict, state: dict, img: np.ndarray) -> np.ndarray:
    """Class values predicted by a saved model on a whole (small) image."""
    net = build_model(meta, state).eval()
    x = normalise(img.astype(np.float32), meta["band_stats"])
    with torch.no_grad():
        idx = net(torch.from_numpy(x)[None]).argmax(1)[0].numpy()
    return np.array([c["value"] for c in meta["classes"]])[idx]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    img, cls = scene()
    return {
        "dir": d,
        "img": img,
        "cls": cls,
        "img_path": write_raster(d / "img.tif", img),
        "lab_path": write_raster(d / "lab.tif", cls, nodata=0),
    }


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


def test_spatial_split_keeps_validation_apart():
    tiles = [
        Tile(r, min(x, w - 32), min(y, h - 32), 32, 32, x // 32, y // 32, {1: 10 + x % 7})
        for r, (w, h) in enumerate([(300, 200), (130, 250)])
        for y in range(0, h, 32)
        for x in range(0, w, 32)
    ]
    train, val = spatial_split(tiles, 0.25, seed=1)
    assert train and val and not set(train) & set(val)
    for i in train:
        for j in val:
            assert not tiles[i].overlaps(tiles[j]), (tiles[i], tiles[j])
    weight = np.array([sum(t.values.values()) for t in tiles], float)
    share = weight[val].sum() / weight.sum()
    assert 0.2 <= share <= 0.5
    # Validation tiles come as spatial blocks: every one has a validation neighbour.
    for j in val:
        t = tiles[j]
        assert any(
            tiles[k].raster == t.raster
            and abs(tiles[k].col - t.col) + abs(tiles[k].row - t.row) == 1
            for k in val
        )
    assert spatial_split(tiles, 0.25, seed=1) == (train, val)
    assert spatial_split(tiles, 0.0, seed=1) == (list(range(len(tiles))), [])


def test_spatial_split_keeps_most_of_a_rare_class_for_training():
    """Sparse labels: a rare class in 4 of 400 tiles. Whatever the seed, validation takes at
    most 30 % of its pixels (so never 2 of its 4 tiles) and still about 20 % of all pixels."""
    rare = {(3, 4), (10, 15), (16, 2), (18, 18)}
    tiles = [
        Tile(0, 32 * c, 32 * r, 32, 32, c, r, {1: 100, 2: 50} if (r, c) in rare else {1: 100})
        for r in range(20)
        for c in range(20)
    ]
    for seed in range(20):
        train, val = spatial_split(tiles, 0.2, seed=seed)
        rare_val = sum(tiles[i].values.get(2, 0) for i in val)
        assert rare_val <= 0.3 * 200, (seed, rare_val)
        assert sum(tiles[i].values.get(2, 0) for i in train) >= 0.7 * 200 - 50, seed
        share = sum(sum(tiles[i].values.values()) for i in val) / (100 * 400 + 200)
        assert 0.15 <= share <= 0.35, (seed, share)


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


def test_class_weights_favour_rare_classes():
    w = class_weights(np.array([9000, 1000, 0]))
    assert w[1] / w[0] == pytest.approx(3.0)  # inverse square-root frequency
    assert (w[:2] * [9000, 1000]).sum() / 10000 == pytest.approx(1.0)
    assert w[2] == 1.0
    assert np.all(class_weights(np.array([10**8, 1])) <= 10.0)


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


def test_label_raster_on_another_grid_is_resampled(tmp_path, data):
    # Labels at 20 m covering a larger extent, shifted by one 20 m cell to the north-west.
    coarse = np.zeros((66, 66), np.uint8)
    coarse[1:65, 1:65] = data["cls"][::2, ::2]
    gt = (500000.0 - 20, 20.0, 0.0, 4000000.0 + 20, 0.0, -20.0)
    lab_path = write_raster(tmp_path / "coarse.tif", coarse, geotransform=gt, nodata=0)
    log = []
    layer = lab.label_raster(lab_path, gdal.Open(data["img_path"]), 255, Reporter(log=log.append))
    arr = layer.dataset.ReadAsArray()
    assert arr.shape == (128, 128)
    assert np.array_equal(arr, np.repeat(np.repeat(data["cls"][::2, ::2], 2, 0), 2, 1))
    assert any("nearest neighbour" in m for m in log)


def test_text_class_field_needs_classes(tmp_path, data):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    path = str(tmp_path / "poly.gpkg")
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = vds.CreateLayer("poly", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    feat = ogr.Feature(layer.GetLayerDefn())
    feat.SetField("kind", "Water")
    feat.SetGeometry(ogr.CreateGeometryFromWkt(
        "POLYGON((12.0 36.1,12.1 36.1,12.1 36.2,12.0 36.2,12.0 36.1))"))  # fmt: skip
    layer.CreateFeature(feat)
    vds = None
    with pytest.raises(MapSegError, match="holds text"):
        lab.polygon_classes(path, "kind", [])
    plan = lab.polygon_classes(path, "kind", lab.parse_classes("4:water:#0000ff"))
    assert plan["burn"] and plan["burn"][0][1] == 4


def test_parse_classes():
    table = lab.parse_classes("1:water:#1f78b4, 2:forest; 5")
    assert table == [
        {"value": 1, "name": "water", "color": [31, 120, 180]},
        {"value": 2, "name": "forest"},
        {"value": 5, "name": ""},
    ]
    built = lab.build_classes([1, 2, 5], table, names={5: "urban"})
    assert [c["name"] for c in built] == ["water", "forest", "urban"]
    assert built[0]["color"] == [31, 120, 180] and len({tuple(c["color"]) for c in built}) == 3
    for bad in ("x:water", "1:a:#12", "1:a, 1:b"):
        with pytest.raises(MapSegError):
            lab.parse_classes(bad)


def test_class_names_and_colours_come_from_the_label_raster(tmp_path, data):
    lab_path = write_raster(
        tmp_path / "named.tif",
        data["cls"],
        nodata=0,
        color_table={1: (0, 0, 255), 2: (0, 128, 0), 3: (200, 0, 0)},
        category_names=["", "water", "forest", "urban"],
    )
    layer = lab.label_raster(lab_path, gdal.Open(data["img_path"]), 255, Reporter())
    assert layer.unlabelled == [0.0, 255.0]
    table = lab.build_classes([1, 2, 3], [], layer.names, layer.colors)
    assert [(c["value"], c["name"], c["color"]) for c in table] == [
        (1, "water", [0, 0, 255]),
        (2, "forest", [0, 128, 0]),
        (3, "urban", [200, 0, 0]),
    ]


def test_tile_reader_pads_small_rasters(tmp_path):
    img = np.arange(2 * 20 * 24, dtype=np.float32).reshape(2, 20, 24)
    cls = np.ones((20, 24), np.uint8)
    cls[:, :12] = 2
    ip = write_raster(tmp_path / "i.tif", img)
    lp = write_raster(tmp_path / "l.tif", cls)
    ds = gdal.Open(ip)
    layers = [lab.label_raster(lp, ds, 255, Reporter())]
    tiles = scan_tiles([ds], layers, 32, Reporter())
    assert len(tiles) == 1 and (tiles[0].w, tiles[0].h) == (24, 20)
    stats = [{"offset": 0.0, "scale": 1000.0, "low": 0.0, "high": 1000.0}] * 2
    x, y = np.empty((2, 32, 32), np.float32), np.empty((32, 32), np.int64)
    TileReader([ds], layers, [1, 2], stats, 32).read(tiles[0], x, y)
    assert np.allclose(x[:, :20, :24], np.clip(img, 0, 1000) / 1000.0)
    assert (x[:, 20:, :] == 0).all() and (y[20:, :] == -1).all() and (y[:, 24:] == -1).all()
    assert (y[:20, :12] == 1).all() and (y[:20, 12:24] == 0).all()


def test_a_band_missing_in_a_strip_is_zeroed_alone_in_training_and_inference(tmp_path):
    """Nodata in one band zeroes that band only (the others stay context, as for a Landsat
    thermal band covering less ground), its labels are ignored, and Train Model's tiles are
    exactly Segment Raster's. A high nodata value (255) must not read as the band's maximum."""
    rng = np.random.default_rng(0)
    img = rng.integers(10, 200, size=(3, 24, 30)).astype(np.uint8)
    img[2, :, 18:] = 255  # band 3 has no data on the right
    img[:, 20:, :4] = 255  # no band has data in the bottom-left corner
    cls = np.ones((24, 30), np.uint8)
    ip = write_raster(tmp_path / "i.tif", img, nodata=255)
    lp = write_raster(tmp_path / "l.tif", cls)
    ds = gdal.Open(ip)
    layers = [lab.label_raster(lp, ds, 0, Reporter())]
    stats = [{"offset": 10.0, "scale": 190.0, "low": 10.0, "high": 200.0}] * 3
    x, y = np.empty((3, 32, 32), np.float32), np.empty((32, 32), np.int64)
    tile = scan_tiles([ds], layers, 32, Reporter())[0]
    TileReader([ds], layers, [1], stats, 32).read(tile, x, y)
    inferred, ok = BandWindows(ds, stats).read((0, 0, 30, 24))
    assert np.array_equal(x[:, :24, :30], inferred)
    expected = (np.clip(img.astype(np.float32), 10, 200) - 10) / 190
    expected[img == 255] = 0.0
    assert np.allclose(inferred, expected, atol=1e-6)
    assert (inferred[:2, :20, 18:] > 0).any()  # bands 1-2 kept where band 3 is missing
    assert not ok[:, 18:].any() and not ok[20:, :4].any() and ok[:20, :18].all()
    assert (y[:24, :30][~ok] == -1).all() and (y[:24, :30][ok] == 0).all()


def test_labels_outside_an_explicit_mask_count_nowhere(tmp_path):
    """A GDAL mask band (no nodata value): labels it hides are neither counted nor read, and a
    tile whose labels all lie outside it is no tile (it would make a batch with no label)."""
    img = np.random.default_rng(1).integers(10, 200, size=(2, 40, 64)).astype(np.uint8)
    ip = write_raster(tmp_path / "i.tif", img)
    ds = gdal.Open(ip, gdal.GA_Update)
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    mask = np.full((40, 64), 255, np.uint8)
    mask[:, 32:] = 0  # the right-hand tiles hold no data
    mask[:10, :8] = 0  # and a corner of the left-hand one
    ds.GetRasterBand(1).GetMaskBand().WriteArray(mask)
    ds = None
    cls = np.ones((40, 64), np.uint8)
    cls[:, 16:] = 2
    lp = write_raster(tmp_path / "l.tif", cls)
    ds = gdal.Open(ip)
    layers = [lab.label_raster(lp, ds, 0, Reporter())]
    tiles = scan_tiles([ds], layers, 32, Reporter())
    assert sorted((t.x, t.y) for t in tiles) == [(0, 0), (0, 8)]  # no tile at x = 32
    top = next(t for t in tiles if t.y == 0)
    assert top.values == {1: 16 * 32 - 10 * 8, 2: 16 * 32}
    stats = [{"offset": 0.0, "scale": 255.0, "low": 0.0, "high": 255.0}] * 2
    x, y = np.empty((2, 32, 32), np.float32), np.empty((32, 32), np.int64)
    TileReader([ds], layers, [1, 2], stats, 32).read(top, x, y)
    assert int((y == 0).sum()) == top.values[1] and int((y == 1).sum()) == top.values[2]
    assert (y[:10, :8] == -1).all() and (x[:, :10, :8] == 0).all()


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

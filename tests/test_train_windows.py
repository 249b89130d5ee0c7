"""Issue 11's trainer: class-balanced random windows apart from validation, the time-budget
schedule, device defaults, and learning a rare class."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_raster
from osgeo import gdal

from mapseg.core.io.normalize import band_stats
from mapseg.core.labels import classes as lab
from mapseg.core.model.modelfile import load_model
from mapseg.core.progress import Reporter
from mapseg.core.train.dataset import TileReader, scan_tiles, spatial_split
from mapseg.core.train.defaults import device_defaults
from mapseg.core.train.job import TrainJob, train_model
from mapseg.core.train.loop import FitConfig
from mapseg.core.train.schedule import BudgetSchedule
from mapseg.core.train.windows import RandomWindows


def rare_scene(size: int = 192, seed: int = 0):
    """(image (2, size, size) float32, labels uint8): 3 % of the pixels are small bright
    squares (class 2) on a textured background (class 1)."""
    rng = np.random.default_rng(seed)
    cls = np.ones((size, size), np.uint8)
    for r, c in rng.integers(4, size - 10, (16, 2)):
        cls[r : r + 6, c : c + 6] = 2
    img = np.where(cls == 2, 180.0, 90.0)[None] + rng.normal(0, 25, (2, size, size))
    return img.astype(np.float32), cls


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("windows")
    img, cls = rare_scene()
    return {
        "dir": d,
        "cls": cls,
        "img_path": write_raster(d / "img.tif", img),
        "lab_path": write_raster(d / "lab.tif", cls, nodata=0),
    }


def test_windows_are_random_balanced_and_never_touch_validation(scene):
    images = [gdal.Open(scene["img_path"])]
    layers = [lab.label_raster(scene["lab_path"], images[0], 255, Reporter())]
    tiles = scan_tiles(images, layers, 32, Reporter())
    train_idx, val_idx = spatial_split(tiles, 0.25, seed=0)
    train, val = [tiles[i] for i in train_idx], [tiles[i] for i in val_idx]
    reader = TileReader(images, layers, [1, 2], band_stats(images), 32)
    windows = RandomWindows(reader, train, val, preload=True, steps_per_epoch=50)
    rng = np.random.default_rng(0)
    drawn = [windows.draw(rng, 8) for _ in range(50)]
    flat = [w for batch in drawn for w in batch]
    for w in flat:
        assert 0 <= w.x <= 192 - 32 and 0 <= w.y <= 192 - 32
        assert not any(w.overlaps(v) for v in val), (w, "touches a validation tile")
    # Random positions, not the grid: most windows start off the 32-px grid.
    assert np.mean([(w.x % 32, w.y % 32) != (0, 0) for w in flat]) > 0.8
    # The rare class (3 % of the pixels) is in nearly every batch of 8.
    rare = scene["cls"] == 2
    has = [any(rare[w.y : w.y + 32, w.x : w.x + 32].any() for w in batch) for batch in drawn]
    assert np.mean(has) >= 0.9
    # A batch served from memory equals the same windows read from the file.
    x, y = windows._load(drawn[0])
    lazy = RandomWindows(reader, train, val, preload=False, steps_per_epoch=50)
    x2, y2 = lazy._load(drawn[0])
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_time_budget_schedule_ends_low():
    s = BudgetSchedule(total_steps=10_000)
    assert s.factor(0) == pytest.approx(1 / 100)  # warm-up over 100 steps
    assert s.factor(100) == pytest.approx(1.0)
    assert s.factor(10, time_share=0.05) == pytest.approx(1.0, abs=0.01)  # or 5 % of the time
    # Half the time budget used after 300 of 10 000 steps: halfway down the cosine.
    assert s.factor(300, time_share=0.5) == pytest.approx(0.05 + 0.95 * 0.5)
    assert s.factor(400, time_share=1.0) == pytest.approx(0.05)
    assert s.factor(10_000) == pytest.approx(0.05)  # or the steps run out first


def test_device_defaults_are_chosen_and_said():
    cpu = device_defaults("cpu", "unet", 0, 0, {})
    assert (cpu.tile_size, cpu.batch_size, cpu.arch_kwargs) == (128, 8, {"base_width": 16})
    assert "CPU" in cpu.notes[0] and "128 px" in cpu.notes[0] and "override" in cpu.notes[0]
    gpu = device_defaults("cuda:0", "unet", 0, 0, {})
    assert (gpu.tile_size, gpu.batch_size, gpu.arch_kwargs) == (256, 16, {"base_width": 32})
    given = device_defaults("cpu", "unet", 64, 4, {"base_width": 8})
    assert (given.tile_size, given.batch_size, given.arch_kwargs) == (64, 4, {"base_width": 8})
    assert given.notes == []
    assert device_defaults("cpu", "fcn", 0, 0, {}).arch_kwargs == {}


def test_rare_class_is_learned_and_the_time_budget_ends_at_a_low_rate(scene):
    log = []
    job = TrainJob(
        images=[scene["img_path"]],
        label_rasters=[scene["lab_path"]],
        output=str(scene["dir"] / "rare.pt"),
        tile_size=32,
        arch_kwargs={"base_width": 4},
        fit=FitConfig(epochs=1000, batch_size=8, learning_rate=0.01, max_minutes=0.25),
    )
    meta = train_model(job, Reporter(log=log.append))
    tr = meta["training"]
    assert tr["stop_reason"] == "time" and tr["loss"] == "dice_ce"
    assert tr["sampling"] == "random windows, balanced" and tr["steps_per_epoch"] == 20
    # The schedule followed the time budget: the last epoch ran at a low learning rate.
    assert meta["history"][-1]["lr"] < 0.15 * 0.01
    assert any("IoU per class: class 1" in m for m in log)
    assert all(len(h["val_iou"]) == 2 for h in meta["history"])
    # The rare class is found, not swallowed by the majority class.
    rare_iou = meta["metrics"]["per_class"][1]["iou"]
    assert rare_iou > 0.6, meta["metrics"]["per_class"]
    assert load_model(job.output)[0]["training"]["stopped_early"]


def test_too_small_tile_size_is_refused(scene, tmp_path):
    from mapseg.core.errors import MapSegError

    job = TrainJob(
        images=[scene["img_path"]],
        label_rasters=[scene["lab_path"]],
        output=str(tmp_path / "x.pt"),
        tile_size=8,
    )
    with pytest.raises(MapSegError, match="TILE_SIZE 8 is too small"):
        train_model(job, Reporter())
    assert not (tmp_path / "x.pt").exists()


def test_default_tile_shrinks_to_the_labelled_area(scene, tmp_path):
    """A 192-px labelled scene holds 4 tiles of 128 px and 9 of 64: the CPU default (128) is
    halved to 32 px (36 tiles), said in the log and recorded; a given TILE_SIZE is kept."""
    log = []
    job = TrainJob(
        images=[scene["img_path"]],
        label_rasters=[scene["lab_path"]],
        output=str(tmp_path / "auto.pt"),
        arch_kwargs={"base_width": 4},
        fit=FitConfig(epochs=1, batch_size=4, device="cpu"),
    )
    meta = train_model(job, Reporter(log=log.append))
    assert meta["tile_size"] == 32
    assert any(m.startswith("Tile size 32 px: the labelled area") for m in log), log
    assert any("Tile size 32 px" in n for n in meta["training"]["defaults"])
    given = train_model(
        TrainJob(**{**job.__dict__, "tile_size": 64, "output": str(tmp_path / "given.pt")}),
        Reporter(),
    )
    assert given["tile_size"] == 64


def test_default_tile_follows_the_labels_not_the_raster(tmp_path):
    """Labels on a 150-px corner of a 1024-px raster: 32-px windows; the same labels over the
    whole raster (64 tiles of 128 px): the device default is kept."""
    from mapseg.core.train.job import _scan_labels

    img = np.zeros((1, 1024, 1024), np.float32)
    img[0, ::7] = 1.0
    image = gdal.Open(write_raster(tmp_path / "big.tif", img))
    corner = np.zeros((1024, 1024), np.uint8)
    corner[:150, :150] = 1
    corner[:150, :60] = 2
    whole = np.where(np.indices((1024, 1024))[1] % 256 < 128, 1, 2).astype(np.uint8)
    for labels, expected in ((corner, 32), (whole, 128)):
        path = write_raster(tmp_path / f"lab{expected}.tif", labels, nodata=0)
        layers = [lab.label_raster(path, image, 255, Reporter())]
        job = TrainJob(images=[image.GetDescription()], output="x.pt", tile_size=128)
        seen: list = []
        reporter = Reporter(progress=seen.append).sub(0.0, 0.05)
        chosen, tiles = _scan_labels(job, [image], layers, True, reporter)
        assert chosen.tile_size == expected
        # the shrinking probes (128, 64, 32 px) share the scan's 5 % without moving back
        assert seen and seen == sorted(seen) and seen[0] >= 0.0 and seen[-1] <= 5.0
        again = scan_tiles([image], layers, expected, Reporter())
        assert [(t.x, t.y, t.values) for t in tiles] == [(t.x, t.y, t.values) for t in again]


def test_scan_finds_exactly_the_labelled_grid_tiles(tmp_path):
    """Sparse labels (two patches, one on the shifted last column and row) on a 1000 x 700
    raster with a nodata corner: the scan keeps exactly the grid tiles holding a labelled pixel
    on image data, with their counts."""
    from mapseg.core.io.tiling import axis_starts

    img = np.full((1, 700, 1000), 50, np.float32)
    img[0, 600:, 950:] = -1  # nodata under part of the second patch
    labels = np.zeros((700, 1000), np.uint8)
    labels[10:20, 130:140] = 1
    labels[590:700, 900:1000] = 2
    image = gdal.Open(write_raster(tmp_path / "i.tif", img, nodata=-1))
    path = write_raster(tmp_path / "l.tif", labels, nodata=0)
    layers = [lab.label_raster(path, image, 255, Reporter())]
    found = {(t.x, t.y): t.values for t in scan_tiles([image], layers, 64, Reporter())}
    usable = np.where(img[0] == -1, 0, labels)
    expected = {}
    for y in axis_starts(700, 64):
        for x in axis_starts(1000, 64):
            vals, counts = np.unique(usable[y : y + 64, x : x + 64], return_counts=True)
            got = {int(v): int(c) for v, c in zip(vals, counts) if v}
            if got:
                expected[x, y] = got
    assert found == expected
    assert len(found) == 5

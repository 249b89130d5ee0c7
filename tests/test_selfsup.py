"""Label-free Train Model engine (core/train/labelfree.py, core/train/picie.py): recovers
regions, self-labelling, time limit, cancel, file."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_raster

torch = pytest.importorskip("torch")

from mapseg.core.errors import MapSegError  # noqa: E402
from mapseg.core.io.normalize import normalise  # noqa: E402
from mapseg.core.model.clustering import agreement  # noqa: E402
from mapseg.core.model.modelfile import build_model, load_model  # noqa: E402
from mapseg.core.progress import Reporter  # noqa: E402
from mapseg.core.train.job import TrainJob, train_model  # noqa: E402
from mapseg.core.train.labelfree import SelfSupConfig, embed, segment, train_label_free  # noqa: E402
from mapseg.core.train.loop import FitConfig  # noqa: E402

SMALL = {"base_width": 4}


def three_regions(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(3, n, n) uint8 image of 3 regions (a disc, two halves) with their own colour and
    texture (smooth, stripes, speckle), and the (n, n) region map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n]
    region = np.where(xx < n // 2, 0, 1)
    region[(yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 4) ** 2] = 2
    base = np.array([[90, 140, 60], [150, 120, 100], [60, 90, 170]], dtype=np.float64)
    img = base[region].transpose(2, 0, 1)
    img += np.where(region == 1, 25 * np.sin(xx * 1.3), 0)[None]  # stripes
    img += np.where(region == 2, rng.normal(0, 25, (n, n)), 0)[None]  # speckle
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), region


def small_cfg(**kw) -> SelfSupConfig:
    base = dict(steps=60, batch_size=8, tile_size=32, k0=4, max_tiles=32, eval_every=20)
    base["learning_rate"] = 5e-3
    base.update(kw)
    return SelfSupConfig(**base)


def test_label_free_model_recovers_three_regions_and_writes_a_complete_file(tmp_path):
    img, region = three_regions()
    src = write_raster(tmp_path / "img.tif", img)
    out = str(tmp_path / "m.pt")
    meta = train_label_free([src], out, Reporter(), small_cfg(), "unet", SMALL)
    meta2, state = load_model(out)
    assert meta2["mode"] == "unsupervised" and meta2["classes"] == []
    assert meta2["architecture"] == "unet" and meta2["arch_kwargs"]["base_width"] == 4
    assert meta2["embedding_dim"] == 4 and meta2["in_bands"] == 3
    assert meta2["normalization"] == "per-input" and len(meta2["band_stats"]) == 3
    assert meta2["training"]["steps_run"] == 60 and not meta2["training"]["stopped_early"]
    assert meta2["training"]["preview"].startswith("data:image/png;base64,")
    assert [h["step"] for h in meta2["history"]] == [20, 40, 60]
    assert meta2["metrics"]["held_out_loss"] == min(h["held_out_loss"] for h in meta["history"])
    net = build_model(meta2, state)
    x = normalise(img.astype(np.float32), meta2["band_stats"])
    emb = embed(net, x)
    assert emb.shape == (4, 96, 96)
    seg = segment(emb, x, np.ones((96, 96), bool), 3)
    score = agreement(seg, region, np.ones((96, 96), bool))
    assert score["ari"] > ARI_MIN, score


def test_self_labelling_stage_keeps_the_regions_and_records_band_colours(tmp_path):
    """PiCIE-style self-labelling after the distillation: its log and the band meaning are in
    the model file, and the network still recovers the three regions."""
    img, region = three_regions()
    src = write_raster(tmp_path / "img.tif", img)
    out = str(tmp_path / "p.pt")
    cfg = small_cfg(self_label_steps=40)
    train_label_free([src], out, Reporter(), cfg, "unet", SMALL, band_colours=["red", "green"])
    meta, state = load_model(out)
    assert meta["band_colours"] == ["red", "green"]
    assert meta["training"]["method"].endswith("PiCIE-style self-labelling")
    assert meta["training"]["self_label_steps"] == 40 and meta["training"]["steps_run"] == 100
    tail = [h for h in meta["history"] if "self_label_loss" in h]
    assert [h["step"] for h in tail] == [40] and np.isfinite(tail[0]["self_label_loss"])
    x = normalise(img.astype(np.float32), meta["band_stats"])
    seg = segment(embed(build_model(meta, state), x), x, np.ones((96, 96), bool), 3)
    assert agreement(seg, region, np.ones((96, 96), bool))["ari"] > ARI_MIN


def test_tiles_are_shared_between_inputs_as_asked(tmp_path):
    from osgeo import gdal

    from mapseg.core.io.normalize import band_stats
    from mapseg.core.train.labelfree import read_tiles

    img, _ = three_regions(256)
    paths = [write_raster(tmp_path / f"{i}.tif", img) for i in range(2)]
    datasets = [gdal.Open(p) for p in paths]
    stats = [band_stats([ds], [1, 2, 3]) for ds in datasets]
    x, valid = read_tiles(datasets, [1, 2, 3], stats, 32, 40, shares=[3.0, 1.0])
    first = read_tiles(datasets[:1], [1, 2, 3], stats[:1], 32, 30)[0]  # 3/4 of 40
    second = read_tiles(datasets[1:], [1, 2, 3], stats[1:], 32, 10)[0]  # 1/4 of 40
    assert len(x) == len(first) + len(second) == len(valid)
    assert len(first) > 2 * len(second)  # the first input gives three times the tiles
    np.testing.assert_array_equal(x[: len(first)], first)
    equal = read_tiles(datasets, [1, 2, 3], stats, 32, 40)[0]
    assert len(equal) == 2 * len(read_tiles(datasets[:1], [1, 2, 3], stats[:1], 32, 20)[0])


def test_time_limit_and_cancel_keep_a_usable_model(tmp_path):
    img, _ = three_regions(64)
    src = write_raster(tmp_path / "img.tif", img)
    out = str(tmp_path / "t.pt")
    meta = train_label_free([src], out, Reporter(), small_cfg(steps=5000, max_minutes=0.02))
    assert meta["training"]["stop_reason"] == "time"
    assert 0 < meta["training"]["steps_run"] < 5000
    assert load_model(out)[0]["training"]["stopped_early"] is True

    calls = []

    def canceled() -> bool:
        calls.append(1)
        return len(calls) > 12  # a few steps in

    out2 = str(tmp_path / "c.pt")
    meta = train_label_free([src], out2, Reporter(is_canceled=canceled), small_cfg(steps=500))
    assert meta["training"]["stop_reason"] == "canceled"
    assert meta["training"]["steps_run"] < 20
    meta2, state = load_model(out2)
    assert build_model(meta2, state)(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_train_model_without_labels_trains_a_label_free_model(tmp_path):
    img, _ = three_regions(64)
    src = write_raster(tmp_path / "img.tif", img)
    job = TrainJob(
        images=[src],
        output=str(tmp_path / "job.pt"),
        arch_kwargs=SMALL,
        tile_size=32,
        fit=FitConfig(epochs=2, batch_size=4, seed=3),
    )
    meta = train_model(job, Reporter())
    assert meta["mode"] == "unsupervised" and meta["in_bands"] == 3
    # 64x64 with 32 px tiles: 4x4 half-overlapping windows, 16 tiles / batch 4 = 4 steps/epoch
    assert meta["training"]["tiles"] == 16 and meta["training"]["steps"] == 8
    assert meta["training"]["seed"] == 3 and meta["embedding_dim"] == 24
    job.output = str(tmp_path / "ft.pt")
    job.init_model = str(tmp_path / "job.pt")
    with pytest.raises(MapSegError, match="label-free"):
        train_model(job, Reporter())
    assert not (tmp_path / "ft.pt").exists()


# Measured 0.91 with seed 0 (0.91 and 0.84 with seeds 1, 2); raw-colour k-means scores 0.99
# on this easy scene, the filter bank 0.89: the test checks the engine learns the regions.
ARI_MIN = 0.7

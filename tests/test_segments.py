"""Segment Raster's engine for label-free models (NUM_SEGMENTS), SMOOTHING, RESOLUTION, BANDS."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import read_raster, write_raster
from osgeo import gdal
from scenes import GT
from segment_models import random_model, regions, unsupervised_model

from mapseg.core.errors import MapSegError
from mapseg.core.infer import inputs as infer_inputs
from mapseg.core.infer.segment import Options, segment_raster
from mapseg.core.infer.segments import segment_palette
from mapseg.core.io.raster import read_classes
from mapseg.core.model.clustering import agreement
from mapseg.core.progress import Reporter

ROWS, COLS = 96, 144
# Measured with this random tiny net (seed 3) and scene: ARI 0.82 at full resolution, 0.68 at
# medium (more of the smaller grid lies at the border, where an untrained net is erratic); a
# random net is a fixed nonlinear map, so very different colours still fall apart.
MIN_ARI = 0.7
MIN_ARI_MEDIUM = 0.6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return unsupervised_model(tmp_path_factory.mktemp("models") / "free.pt", seed=3)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    img, truth = regions(ROWS, COLS, seed=1)
    path = write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", img, geotransform=GT)
    return path, img, truth


def segment(src, model, dest, **kwargs):
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in Options.__dataclass_fields__}
    opts.setdefault("num_segments", 3)
    return segment_raster(str(src), model, str(dest), options=Options(**opts), **kwargs)


def majority(ids: np.ndarray, truth: np.ndarray) -> list[int]:
    return [int(np.bincount(ids[truth == r]).argmax()) for r in range(3)]


def test_regions_are_recovered_with_stable_brightness_ordered_ids(tmp_path, model, scene):
    src, img, truth = scene
    res = segment(src, model, tmp_path / "a.tif", probability=str(tmp_path / "conf.tif"))
    assert res.segments == 3 and res.bands == [1, 2, 3]
    out = read_raster(res.output)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {1, 2, 3}
    score = agreement(out, truth, np.ones_like(truth, bool))
    assert score["ari"] >= MIN_ARI, score
    # ids by brightness: dark blue (region 0) < green (2) < bright yellow (1)
    assert majority(out, truth) == [1, 3, 2]
    mean_brightness = [img.astype(float).mean(0)[out == i].mean() for i in (1, 2, 3)]
    assert mean_brightness == sorted(mean_brightness)
    # styled: distinct colours, "Segment N" names
    ds = gdal.Open(res.output)
    colors, names = read_classes(ds.GetRasterBand(1))
    ds = None
    assert names == {1: "Segment 1", 2: "Segment 2", 3: "Segment 3"}
    assert len({colors[i] for i in (1, 2, 3)}) == 3
    conf = read_raster(res.probability)
    assert conf.dtype == np.float32 and conf.min() >= 0.5 and conf.max() <= 1.0
    assert conf.mean() > 0.6  # most pixels lie clearly nearer one centre
    # a rerun, and the same extent given explicitly, give identical ids
    again = read_raster(segment(src, model, tmp_path / "b.tif").output)
    assert np.array_equal(out, again)
    full_extent = (GT[0], GT[3] - 10 * ROWS, GT[0] + 10 * COLS, GT[3])
    same = read_raster(segment(src, model, tmp_path / "c.tif", extent=full_extent).output)
    assert np.array_equal(out, same)


def test_label_free_overlap_defaults_to_a_quarter_of_the_tile(tmp_path, model, scene):
    # a classes model's default stays an eighth (test_tiling); OVERLAP still overrides
    src, _, truth = scene
    res = segment(src, model, tmp_path / "a.tif", tile_size=48)
    assert (res.tile_size, res.overlap) == (48, 12)
    assert agreement(read_raster(res.output), truth, truth >= 0)["ari"] >= MIN_ARI
    assert segment(src, model, tmp_path / "b.tif", tile_size=48, overlap=6).overlap == 6


def test_neighbouring_extent_keeps_ids_for_the_same_land_cover(tmp_path, model, scene):
    src, _, truth = scene
    full = read_raster(segment(src, model, tmp_path / "full.tif").output)
    # the bottom half: all three covers, its own k-means fit, ids by brightness again
    extent = (GT[0], GT[3] - 10 * ROWS, GT[0] + 10 * COLS, GT[3] - 10 * (ROWS // 2))
    res = segment(src, model, tmp_path / "half.tif", extent=extent)
    part = read_raster(res.output)
    assert part.shape == (ROWS - ROWS // 2, COLS)
    assert majority(part, truth[ROWS // 2 :]) == majority(full, truth) == [1, 3, 2]
    agree = (part == full[ROWS // 2 :]).mean()  # measured 0.997
    assert agree >= 0.99, agree


def test_smoothing_removes_patches_smaller_than_the_mmu(tmp_path, model, scene):
    from scipy import ndimage

    src, _, _ = scene

    def smallest_patch(arr):
        sizes = []
        for v in np.unique(arr):
            lab, n = ndimage.label(arr == v)  # 4-connected, like the sieve
            sizes += list(np.bincount(lab.ravel())[1:])
        return min(sizes)

    raw = read_raster(segment(src, model, tmp_path / "raw.tif").output)
    assert smallest_patch(raw) < 20  # the raw result has specks to remove
    smooth = read_raster(segment(src, model, tmp_path / "smooth.tif", smoothing=20).output)
    assert smallest_patch(smooth) >= 20
    assert (smooth == raw).mean() > 0.9  # only specks changed
    # supervised models too
    sup = random_model(tmp_path / "sup.pt", tile=64)
    raw = read_raster(segment(src, sup, tmp_path / "sraw.tif").output)
    smooth = read_raster(segment(src, sup, tmp_path / "ssmooth.tif", smoothing=30).output)
    assert smallest_patch(raw) < 30 <= smallest_patch(smooth)
    assert set(np.unique(smooth)) <= {3, 7}


def test_resolution_writes_a_coarser_grid(tmp_path, model, scene):
    src, _, truth = scene
    res = segment(src, model, tmp_path / "medium.tif", resolution="medium")
    ds = gdal.Open(res.output)
    assert (ds.RasterXSize, ds.RasterYSize) == (COLS // 2, ROWS // 2)
    assert ds.GetGeoTransform() == pytest.approx((GT[0], 20.0, 0.0, GT[3], 0.0, -20.0))
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32633"
    out = ds.ReadAsArray()
    coarse_truth = truth[::2, ::2]
    score = agreement(out, coarse_truth, np.ones_like(coarse_truth, bool))
    assert score["ari"] >= MIN_ARI_MEDIUM, score
    sup = random_model(tmp_path / "sup.pt", tile=32)
    low = segment(src, sup, tmp_path / "low.tif", resolution="low", tile_size=32)
    ds = gdal.Open(low.output)
    assert (ds.RasterXSize, ds.RasterYSize) == (COLS // 4, ROWS // 4)
    assert ds.GetGeoTransform() == pytest.approx((GT[0], 40.0, 0.0, GT[3], 0.0, -40.0))
    with pytest.raises(MapSegError, match="cannot be combined"):
        segment(src, sup, tmp_path / "x.tif", resolution="low", resample_to_model=True)


def test_16_bit_input_gives_the_same_segments_as_8_bit(tmp_path, model, scene):
    src, _, _ = scene
    img16, _ = regions(ROWS, COLS, seed=1, dtype=np.uint16, scale=16.0)
    assert img16.max() > 2000
    src16 = write_raster(tmp_path / "scene16.tif", img16, geotransform=GT)
    eight = read_raster(segment(src, model, tmp_path / "8.tif").output)
    sixteen = read_raster(segment(src16, model, tmp_path / "16.tif").output)
    assert (eight == sixteen).mean() >= 0.99


def test_nodata_pixels_are_nodata_and_not_sampled(tmp_path, model):
    img, truth = regions(ROWS, COLS, seed=2)
    img[img == 0] = 1
    img[:, :20, :30] = 0
    src = write_raster(tmp_path / "nd.tif", img, geotransform=GT, nodata=0)
    res = segment(src, model, tmp_path / "nd_out.tif", probability=str(tmp_path / "p.tif"))
    out, conf = read_raster(res.output), read_raster(res.probability)
    hole = (img == 0).any(0)
    assert np.array_equal(out == 255, hole) and np.array_equal(conf == -1.0, hole)
    assert set(np.unique(out[~hole])) == {1, 2, 3}


def test_band_selection(tmp_path, model, scene):
    src, img, _ = scene
    ref = read_raster(segment(src, model, tmp_path / "ref.tif").output)
    noise = np.random.default_rng(5).integers(0, 255, (2, ROWS, COLS), dtype=np.uint8)
    # five bands, the model's three in positions 2, 4, 5
    five = np.stack([noise[0], img[0], noise[1], img[1], img[2]])
    src5 = write_raster(tmp_path / "five.tif", five, geotransform=GT)
    res = segment(src5, model, tmp_path / "sel.tif", bands=[2, 4, 5])
    assert res.bands == [2, 4, 5] and np.array_equal(read_raster(res.output), ref)
    # default on more bands than the model uses: the first three, with a log line
    first = write_raster(tmp_path / "first.tif", np.concatenate([img, noise]), geotransform=GT)
    logs = []
    res = segment(first, model, tmp_path / "def.tif", reporter=Reporter(log=logs.append))
    assert res.bands == [1, 2, 3] and np.array_equal(read_raster(res.output), ref)
    assert any("feeding the label-free model its first 3 (1,2,3)" in m for m in logs)
    with pytest.raises(MapSegError, match="band 9 does not exist; the input raster has 5"):
        segment(src5, model, tmp_path / "bad.tif", bands=[1, 2, 9])
    with pytest.raises(MapSegError, match="selects 2 bands but the model .* expects 3"):
        segment(src5, model, tmp_path / "bad.tif", bands=[1, 2])
    assert not (tmp_path / "bad.tif").exists()


@pytest.mark.parametrize("k", [1, 51])
def test_num_segments_out_of_range(tmp_path, model, scene, k):
    with pytest.raises(MapSegError, match="NUM_SEGMENTS must be between 2 and 50"):
        segment(scene[0], model, tmp_path / "out.tif", num_segments=k)
    assert not os.listdir(tmp_path)


def test_palette_is_distinct_for_fifty_segments():
    colors, names = segment_palette(50)
    assert sorted(colors) == list(range(1, 51)) and len(set(colors.values())) == 50
    assert names[50] == "Segment 50"


def test_default_model_when_model_is_empty(tmp_path, monkeypatch, model, scene):
    monkeypatch.setattr(infer_inputs, "PLUGIN_DIR", str(tmp_path / "plugin"))
    with pytest.raises(MapSegError, match="default model .* is not installed"):
        segment(scene[0], None, tmp_path / "out.tif")
    (tmp_path / "plugin" / "weights").mkdir(parents=True)
    shutil.copy(model, tmp_path / "plugin" / "weights" / "mapseg_default.pt")
    res = segment(scene[0], "", tmp_path / "out.tif")
    ref = read_raster(segment(scene[0], model, tmp_path / "ref.tif").output)
    assert np.array_equal(read_raster(res.output), ref)

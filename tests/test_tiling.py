"""Segment Raster's engine without QGIS: tile grid, blend weights, accumulator, pipeline."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import read_raster, write_raster
from osgeo import gdal
from scenes import GT
from segment_models import random_model

from mapseg.core.errors import MapSegError
from mapseg.core.infer.segment import Options, output_type, segment_raster
from mapseg.core.io.tiling import (
    WEIGHT_FLOOR,
    BlendAccumulator,
    TileGrid,
    blend_ramp,
    blend_window,
    channel_argmax,
    extent_window,
)
from mapseg.core.progress import Reporter


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_model(tmp_path_factory.mktemp("models") / "random.pt", tile=64)


def image(rows, cols, bands=3, seed=1):
    """Smooth, spatially varied uint8 imagery, so a random net's output varies too."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    out = []
    for b in range(bands):
        fx, fy, ph = rng.uniform(0.02, 0.09, 3)
        out.append(127 + 100 * np.sin(fx * xx + ph) * np.cos(fy * yy + b))
    return (np.stack(out) + rng.normal(0, 8, (bands, rows, cols))).clip(0, 255).astype(np.uint8)


def segment(src, model, dest, **kwargs):
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in Options.__dataclass_fields__}
    return segment_raster(str(src), model, str(dest), options=Options(**opts), **kwargs)


# -- blend weights and grid ------------------------------------------------------------------


@pytest.mark.parametrize("tile,overlap", [(64, 8), (64, 32), (48, 5), (32, 0)])
def test_blend_weights_positive_and_a_partition_of_unity(tile, overlap):
    ramp = blend_ramp(tile, overlap)
    assert ramp.min() >= WEIGHT_FLOOR and 0.99 < ramp.max() <= 1.0
    assert np.allclose(ramp, ramp[::-1])
    if overlap:
        assert ramp[0] < 0.05 and np.all(np.diff(ramp[:overlap]) > 0)  # falls to the edge
    # summed over the tiles of a long axis, the weights are 1 wherever two tiles overlap
    grid = TileGrid(1000, 10, tile, overlap)
    total = np.zeros(1000 + tile)
    for j in range(grid.shape[1]):
        total[j * grid.stride : j * grid.stride + tile] += ramp
    assert np.allclose(total[overlap : 1000 - tile], 1.0, atol=2 * WEIGHT_FLOOR)
    window = blend_window(tile, overlap)
    assert window.shape == (tile, tile) and np.allclose(window, np.outer(ramp, ramp))


@pytest.mark.parametrize("size", [1, 15, 64, 65, 120, 121, 257])
@pytest.mark.parametrize("tile,overlap", [(64, 8), (64, 32), (16, 3)])
def test_grid_covers_every_pixel_at_most_twice_per_axis(size, tile, overlap):
    grid = TileGrid(size, size + 3, tile, overlap)
    cover = np.zeros((size + 3, size), int)
    for i, j in grid.tiles((0, 0, size, size + 3)):
        x, y, w, h = grid.tile_window(i, j)
        assert x % grid.stride == 0 and y % grid.stride == 0  # anchored to pixel (0, 0)
        assert x < size and y < size + 3  # never a tile wholly outside
        cover[y : y + h, x : x + w] += 1
    assert cover.min() >= 1 and cover.max() <= 4
    # tile_ranges of a window = exactly the tiles meeting it
    for win in [(0, 0, 1, 1), (size // 2, 1, max(1, size // 3), 2), (size - 1, size + 2, 1, 1)]:
        expect = [
            (i, j)
            for i in range(grid.shape[0])
            for j in range(grid.shape[1])
            if i * grid.stride < win[1] + win[3]
            and i * grid.stride + tile > win[1]
            and j * grid.stride < win[0] + win[2]
            and j * grid.stride + tile > win[0]
        ]
        assert list(grid.tiles(win)) == expect


@pytest.mark.parametrize("channels", [1, 2, 4, 7, 20])
def test_channel_argmax_is_numpy_argmax_ties_and_nan_included(channels):
    rng = np.random.default_rng(channels)
    # quantised scores make ties common: argmax keeps the first of them
    scores = (rng.integers(0, 4, (channels, 33, 47)) / 4).astype(np.float32)
    scores[rng.integers(0, channels), 5, 7:9] = np.nan  # a NaN is the largest, for argmax
    expected = scores.argmax(axis=0)
    assert (scores[:, 5, 7] != scores[:, 5, 7]).any()
    assert np.array_equal(channel_argmax(scores), expected)
    clean = np.nan_to_num(scores)
    assert np.array_equal(channel_argmax(clean), clean.argmax(axis=0))
    view = np.ascontiguousarray(np.pad(clean, ((0, 0), (3, 3), (2, 2))))[:, 3:-3, 2:-2]
    assert np.array_equal(channel_argmax(view), clean.argmax(axis=0))


def test_bad_tiling_is_a_clear_error():
    with pytest.raises(MapSegError, match=r"at least twice the overlap \(40\)"):
        TileGrid(100, 100, 64, 40)
    with pytest.raises(MapSegError, match="at least 16"):
        TileGrid(100, 100, 8, 0)


# -- accumulator -----------------------------------------------------------------------------


def fake_tile(i, j, classes, tile):
    rng = np.random.default_rng(1000 * i + j)
    return rng.random((classes, tile, tile), dtype=np.float32)


def accumulate(grid, window, classes, bad=None):
    """Run the accumulator over ``window`` with deterministic fake tiles; (C+2, h, w) result."""
    x0, y0, w, h = window
    out = np.full((classes + 2, h, w), np.nan, np.float32)
    weights = blend_window(grid.tile, grid.overlap)

    def emit(x, y, block):
        region = out[:, y - y0 : y - y0 + block.shape[1], x - x0 : x - x0 + block.shape[2]]
        assert np.isnan(region).all(), "a pixel was emitted twice"
        region[...] = block

    acc = BlendAccumulator(grid, window, classes, emit)
    for i, j in grid.tiles(window):
        tx, ty = j * grid.stride, i * grid.stride
        invalid = None
        if bad is not None:
            invalid = np.zeros((grid.tile, grid.tile), np.float32)
            part = bad[ty : ty + grid.tile, tx : tx + grid.tile]
            invalid[: part.shape[0], : part.shape[1]] = part
        acc.add(i, j, fake_tile(i, j, classes, grid.tile) * weights, invalid)
    assert acc.done and not np.isnan(out).any(), "a pixel was never emitted"
    return out


def test_accumulator_matches_a_naive_full_raster_sum():
    grid, classes = TileGrid(150, 110, 48, 12), 3
    bad = np.zeros((110, 150), bool)
    bad[40:45, 70:100] = True
    got = accumulate(grid, (0, 0, 150, 110), classes, bad)
    rows, cols = grid.shape
    full = np.zeros((classes + 2, rows * grid.stride + 48, cols * grid.stride + 48))
    weights = blend_window(48, 12)
    for i in range(rows):
        for j in range(cols):
            y, x = i * grid.stride, j * grid.stride
            full[:classes, y : y + 48, x : x + 48] += fake_tile(i, j, classes, 48) * weights
            full[classes, y : y + 48, x : x + 48] += weights
    full[classes + 1, :110, :150] = bad * 4.0  # not checked by value, only > 0
    assert np.allclose(got[: classes + 1], full[: classes + 1, :110, :150], rtol=1e-5)
    assert np.array_equal(got[classes + 1] > 0, bad)


@pytest.mark.parametrize(
    "window", [(37, 29, 60, 50), (0, 0, 1, 1), (149, 109, 1, 1), (36, 0, 1, 110), (0, 36, 150, 2)]
)
def test_accumulator_sub_window_is_bit_for_bit_the_full_result(window):
    grid = TileGrid(150, 110, 48, 12)
    full = accumulate(grid, (0, 0, 150, 110), 2)
    sub = accumulate(grid, window, 2)
    x, y, w, h = window
    assert np.array_equal(sub, full[:, y : y + h, x : x + w])


# -- pipeline --------------------------------------------------------------------------------


def test_sub_extent_and_batch_size_give_the_full_run_result(tmp_path, model):
    src = write_raster(tmp_path / "in.tif", image(170, 230), geotransform=GT)
    full = segment(src, model, tmp_path / "full.tif", probability=str(tmp_path / "p.tif"))
    classes, prob = read_raster(full.output), read_raster(full.probability)
    values, counts = np.unique(classes, return_counts=True)
    assert set(values) == {3, 7} and counts.min() > 500  # the random net's output does vary
    assert prob.min() >= 0.5 and prob.max() <= 1.0  # winner of two classes
    # other batch sizes group different tiles: same classes, same probabilities
    for batch in (1, 7):
        other = segment(
            src,
            model,
            tmp_path / f"b{batch}.tif",
            batch_size=batch,
            probability=str(tmp_path / f"bp{batch}.tif"),
        )
        assert other.batch_size == batch and other.overlap == full.overlap == 8
        assert np.array_equal(read_raster(other.output), classes)
        assert np.allclose(read_raster(other.probability), prob, atol=1e-6)
    # a sub-extent (not aligned to tiles, in map units) computes the very same tiles
    extent = (GT[0] + 613, GT[3] - 1277, GT[0] + 1799, GT[3] - 351)
    sub = segment(
        src, model, tmp_path / "sub.tif", extent=extent, probability=str(tmp_path / "sp.tif")
    )
    x, y, w, h = sub.window
    assert (x, y, w, h) == (61, 35, 119, 93)
    assert np.array_equal(read_raster(sub.output), classes[y : y + h, x : x + w])
    assert np.allclose(read_raster(sub.probability), prob[y : y + h, x : x + w], atol=1e-6)
    ds = gdal.Open(sub.output)
    gt = ds.GetGeoTransform()
    assert gt == pytest.approx((GT[0] + 610, 10, 0, GT[3] - 350, 0, -10))


def test_tile_larger_than_raster_is_reflect_padded_and_cropped(tmp_path, model):
    import torch

    from mapseg.core.model.modelfile import build_model, load_model

    img = image(23, 41)
    src = write_raster(tmp_path / "small.tif", img)
    res = segment(src, model, tmp_path / "out.tif", probability=str(tmp_path / "p.tif"))
    assert res.tiles == 1
    meta, state = load_model(model)
    net = build_model(meta, state).eval()
    padded = np.pad(img.astype(np.float32) / 255.0, ((0, 0), (0, 64 - 23), (0, 64 - 41)), "reflect")
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(padded)[None]), 1)[0, :, :23, :41].numpy()
    expect = np.array([3, 7])[probs.argmax(0)]
    assert np.array_equal(read_raster(res.output), expect)
    assert np.allclose(read_raster(res.probability), probs.max(0), atol=1e-5)


def test_nodata_in_any_band_is_nodata_in_the_output(tmp_path, model):
    img = image(90, 120, seed=4)
    img[img == 0] = 1
    img[1, 10:20, 30:60] = 0  # one band only
    img[:, 70:, 100:] = 0
    src = write_raster(tmp_path / "nd.tif", img, nodata=0)
    res = segment(src, model, tmp_path / "out.tif", probability=str(tmp_path / "p.tif"))
    out, prob = read_raster(res.output), read_raster(res.probability)
    bad = (img == 0).any(axis=0)
    ds = gdal.Open(res.output)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert ds.GetRasterBand(1).GetNoDataValue() == 255
    assert np.array_equal(out == 255, bad)
    assert set(np.unique(out[~bad])) <= {3, 7}
    assert np.array_equal(prob == -1, bad) and prob[~bad].min() >= 0.5


def test_rotated_geotransform_and_crs_are_copied(tmp_path, model):
    rotated = (300000.0, 8.0, 2.5, 5000000.0, 1.5, -8.0)
    src = write_raster(tmp_path / "rot.tif", image(50, 70), geotransform=rotated, epsg=32631)
    res = segment(src, model, tmp_path / "out.tif")
    out, inp = gdal.Open(res.output), gdal.Open(src)
    assert out.GetGeoTransform() == pytest.approx(rotated)
    assert out.GetSpatialRef().IsSame(inp.GetSpatialRef())
    assert (out.RasterXSize, out.RasterYSize) == (70, 50)
    # an extent around one pixel's centre of a rotated grid is that pixel's window
    cx = rotated[0] + 20.5 * rotated[1] + 10.5 * rotated[2]
    cy = rotated[3] + 20.5 * rotated[4] + 10.5 * rotated[5]
    assert extent_window(rotated, 70, 50, (cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1)) == (
        20,
        10,
        1,
        1,
    )
    # a sub-extent of a rotated raster: same classes, origin at the window's first pixel
    corner = (
        rotated[0] + 30 * rotated[1] + 5 * rotated[2],
        rotated[3] + 30 * rotated[4] + 5 * rotated[5],
    )
    sub = segment(
        src,
        model,
        tmp_path / "sub.tif",
        extent=(corner[0] + 1, corner[1] - 60, corner[0] + 90, corner[1] - 1),
    )
    x, y, w, h = sub.window
    got = gdal.Open(sub.output)
    assert got.GetGeoTransform() == pytest.approx(
        (
            rotated[0] + x * rotated[1] + y * rotated[2],
            8.0,
            2.5,
            rotated[3] + x * rotated[4] + y * rotated[5],
            1.5,
            -8.0,
        )
    )
    assert np.array_equal(got.ReadAsArray(), out.ReadAsArray()[y : y + h, x : x + w])
    assert w * h > 50


def test_ungeoreferenced_raster_is_warned_and_written_in_pixels(tmp_path, model):
    src = write_raster(tmp_path / "plain.tif", image(40, 50), geotransform=None, epsg=None)
    logs = []
    res = segment(src, model, tmp_path / "out.tif", reporter=Reporter(warn=logs.append))
    assert any("no georeferencing" in m for m in logs) and res.warnings == logs
    assert set(np.unique(read_raster(res.output))) <= {3, 7}
    with pytest.raises(MapSegError, match="EXTENT needs a georeferenced input"):
        segment(src, model, tmp_path / "o2.tif", extent=(0, 0, 10, 10))


def test_class_output_type_and_nodata():
    assert output_type([0, 1, 2]) == (gdal.GDT_Byte, 255)
    assert output_type([1, 255]) == (gdal.GDT_UInt16, 256)
    assert output_type([0, 300]) == (gdal.GDT_UInt16, 65535)
    assert output_type([-5, 4]) == (gdal.GDT_Int16, 32767)


def test_class_values_colours_and_names_are_embedded(tmp_path):
    classes = [
        {"value": 0, "name": "water", "color": [0, 0, 255]},
        {"value": 300, "name": "urban", "color": [200, 0, 0]},
        {"value": 12, "name": "forest", "color": [0, 120, 0]},
    ]
    model = random_model(tmp_path / "m.pt", classes=classes, tile=32)
    src = write_raster(tmp_path / "in.tif", image(60, 60, seed=7))
    res = segment(src, model, tmp_path / "out.tif")
    ds = gdal.Open(res.output)
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_UInt16 and band.GetNoDataValue() == 65535
    assert set(np.unique(band.ReadAsArray())) <= {0, 12, 300}
    table = band.GetRasterColorTable()
    assert table.GetColorEntry(300)[:3] == (200, 0, 0) and table.GetColorEntry(12)[:3] == (
        0,
        120,
        0,
    )
    names = band.GetCategoryNames()
    assert names[0] == "water" and names[12] == "forest" and names[300] == "urban"


# -- bad inputs ------------------------------------------------------------------------------


def assert_no_output(folder):
    assert not [p for p in os.listdir(folder) if p.startswith("out") or ".partial" in p]


def test_band_count_mismatch_names_both(tmp_path, model):
    src = write_raster(tmp_path / "two.tif", image(40, 40, bands=2))
    with pytest.raises(MapSegError, match=r"has 2 bands but the model .* expects 3"):
        segment(src, model, tmp_path / "out.tif")
    assert_no_output(tmp_path)


def test_bad_model_files_are_refused(tmp_path):
    import torch

    src = write_raster(tmp_path / "in.tif", image(40, 40))
    with pytest.raises(MapSegError, match="does not exist"):
        segment(src, str(tmp_path / "missing.pt"), tmp_path / "out.tif")
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(MapSegError, match="not a MapSeg model file"):
        segment(src, str(tmp_path / "text.pt"), tmp_path / "out.tif")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(MapSegError, match="not a MapSeg model"):
        segment(src, str(tmp_path / "plain.pt"), tmp_path / "out.tif")
    assert_no_output(tmp_path)


def test_extent_outside_and_bad_tiling_leave_no_file(tmp_path, model):
    src = write_raster(tmp_path / "in.tif", image(40, 40), geotransform=GT)
    with pytest.raises(MapSegError, match="does not overlap the raster"):
        segment(src, model, tmp_path / "out.tif", extent=(0, 0, 100, 100))
    with pytest.raises(MapSegError, match="at least twice the overlap"):
        segment(src, model, tmp_path / "out.tif", tile_size=32, overlap=20)
    with pytest.raises(MapSegError, match="same file as the input"):
        segment(src, model, src)
    assert_no_output(tmp_path)


def test_cancel_leaves_no_file(tmp_path, model):
    from mapseg.core.errors import CanceledError

    src = write_raster(tmp_path / "in.tif", image(200, 200))
    seen = []
    reporter = Reporter(progress=seen.append, is_canceled=lambda: bool(seen) and seen[-1] > 20)
    with pytest.raises(CanceledError):
        segment(src, model, tmp_path / "out.tif", batch_size=2, reporter=reporter)
    assert 20 < seen[-1] < 100
    assert_no_output(tmp_path)


# -- pixel size ------------------------------------------------------------------------------


def test_pixel_size_far_from_the_model_warns_and_resamples(tmp_path):
    model = random_model(tmp_path / "m.pt", pixel_size=10.0, tile=32)
    img = image(60, 80, seed=3)
    img[img == 0] = 1
    img[:, :7, :9] = 0
    coarse = (500000.0, 30.0, 0.0, 4000000.0, 0.0, -30.0)
    src = write_raster(tmp_path / "in.tif", img, geotransform=coarse, nodata=0)
    logs = []
    plain = segment(src, model, tmp_path / "plain.tif", reporter=Reporter(warn=logs.append))
    assert len(logs) == 1 and "is 3 times the model's training pixel size (10 m)" in logs[0]
    res = segment(src, model, tmp_path / "res.tif", resample_to_model=True)
    ds = gdal.Open(res.output)
    assert (ds.RasterXSize, ds.RasterYSize) == (80, 60)
    assert ds.GetGeoTransform() == pytest.approx(coarse)
    assert plain.tiles == TileGrid(80, 60, 32, 4).count((0, 0, 80, 60)) == 6
    assert res.tiles == TileGrid(240, 180, 32, 4).count((0, 0, 240, 180)) == 63  # at 10 m
    out = ds.ReadAsArray()
    assert np.array_equal(out == 255, (img == 0).any(0))
    assert set(np.unique(out[out != 255])) <= {3, 7}
    assert ds.GetRasterBand(1).GetRasterColorTable().GetColorEntry(7)[:3] == (250, 200, 30)
    # degrees vs metres cannot be compared: no warning
    logs.clear()
    geo = write_raster(
        tmp_path / "geo.tif", img, geotransform=(10, 0.001, 0, 50, 0, -0.001), epsg=4326
    )
    segment(geo, model, tmp_path / "geo_out.tif", reporter=Reporter(warn=logs.append))
    assert logs == []


def test_resampling_to_a_coarser_model_covers_the_last_columns_and_rows(tmp_path):
    """104 px of 1 m under a 10 m model: GDAL's rounded 10 x 10 grid stopped at 100 m and left
    the last 4 columns and rows nodata; the grid now covers the raster (11 x 11 pixels)."""
    model = random_model(tmp_path / "m.pt", pixel_size=10.0, tile=32)
    fine = (500000.0, 1.0, 0.0, 4000000.0, 0.0, -1.0)
    src = write_raster(tmp_path / "in.tif", image(104, 104, seed=4), geotransform=fine)
    res = segment(src, model, tmp_path / "res.tif", resample_to_model=True)
    out = gdal.Open(res.output).ReadAsArray()
    assert out.shape == (104, 104)
    assert not (out == 255).any(), np.argwhere(out == 255)[:3]
    assert set(np.unique(out)) <= {3, 7}
    # every 10 x 10 block holds one class: nearest neighbour from the 10 m result
    blocks = [out[r : r + 10, c : c + 10] for r in range(0, 100, 10) for c in range(0, 100, 10)]
    assert all(len(np.unique(b)) == 1 for b in blocks)

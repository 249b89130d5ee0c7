"""SAM engine: checkpoint detection, prompt windows, image preparation, prompt masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_sam, write_raster
from osgeo import ogr
from scenes import GT

from mapseg.core.errors import MapSegError
from mapseg.core.progress import Reporter
from mapseg.core.sam.checkpoint import config_from_state_dict, load_sam, read_checkpoint
from mapseg.core.sam.image import ImageSource, make_grid, mask_to_geometry
from mapseg.core.sam.prompts import Prompt, plan_windows, prompt_extent, segment_with_prompts


def to_map(col: float, row: float):
    return GT[0] + col * GT[1], GT[3] + row * GT[5]


# -- checkpoints ---------------------------------------------------------------------------


def test_tiny_checkpoint_loads_with_its_architecture_and_weights(tiny_sam_checkpoint):
    sam, config = load_sam(str(tiny_sam_checkpoint))
    assert config["variant"] == "custom"
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (32, 2, 2)
    assert config["global_attn_indexes"] == [1] and config["window_size"] == 4
    assert (config["img_size"], config["patch_size"], config["decoder_dim"]) == (256, 16, 32)
    assert (config["decoder_depth"], config["decoder_mlp_dim"]) == (2, 64)
    assert config["num_multimask_outputs"] == 3 and config["iou_head_hidden_dim"] == 32
    reference = build_tiny_sam()
    saved = torch.load(tiny_sam_checkpoint, weights_only=True)
    for key, value in sam.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # Same weights and same structure: the same embedding for the same image.
    image = torch.rand(1, 3, 256, 256) * 255
    with torch.no_grad():
        expected = reference.image_encoder(reference.preprocess(image))
        got = sam.image_encoder(sam.preprocess(image))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("name", "embed", "depth", "heads", "globals_"),
    [
        ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
        ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
        ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
    ],
)
def test_official_architectures_are_recognised_from_their_shapes(
    name, embed, depth, heads, globals_
):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # shapes only: no memory, no weights
        state = sam_model_registry[name]().state_dict()
    config = config_from_state_dict(state)
    assert config["variant"] == name
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (embed, depth, heads)
    assert config["global_attn_indexes"] == globals_ and config["window_size"] == 14
    assert (config["img_size"], config["out_chans"], config["decoder_heads"]) == (1024, 256, 8)
    assert (config["decoder_mlp_dim"], config["mask_in_chans"]) == (2048, 16)


class Payload:
    pass


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "does not exist"),
        (lambda p: p.write_text("not weights"), "not a PyTorch checkpoint"),
        (lambda p: torch.save({"a": torch.zeros(3)}, p), "not a Segment Anything checkpoint"),
        (lambda p: torch.save([torch.zeros(2)], p), "does not hold a Segment Anything"),
        (lambda p: torch.save(Payload(), p), "pickled Python objects"),
        (
            lambda p: torch.save({"format": "mapseg-model", "state_dict": {}}, p),
            "MapSeg model file, not a Segment Anything",
        ),
    ],
)
def test_bad_checkpoints_give_clear_errors(tmp_path, make, message):
    path = tmp_path / "bad.pth"
    if make is not None:
        make(path)
    with pytest.raises(MapSegError, match=message) as info:
        read_checkpoint(str(path))
    assert "sam_vit_b_01ec64.pth" in str(info.value)  # says where to get a real one


# -- windows for prompts ----------------------------------------------------------------------


def test_plan_windows_shares_close_prompts_and_separates_far_ones():
    extents = [(100, 100, 100, 100), (130, 120, 130, 120), (900, 700, 900, 700)]
    windows = plan_windows(extents, 1000, 800, 256)
    assert [w.prompts for w in windows] == [[0, 1], [2]]
    assert windows[0].rect == (0, 0, 256, 256)  # centred on the prompts, clamped at the corner
    assert windows[1].rect == (1000 - 256, 800 - 256, 256, 256)
    for w in windows:
        assert w.factor == 1.0 and w.out_size == (256, 256)
        for i in w.prompts:
            assert w.holds(extents[i])


def test_plan_windows_reads_a_big_box_coarser_and_small_rasters_whole():
    (big,) = plan_windows([(100, 100, 700, 400)], 1000, 800, 256)
    x, y, w, h = big.rect
    assert w == h and w >= 600 + 2 * 32 and big.holds((100, 100, 700, 400))
    assert big.factor == pytest.approx(w / 256) and big.out_size == (256, 256)
    (small,) = plan_windows([(10, 10, 20, 20), (50, 5, 50, 5)], 60, 40, 256)
    assert small.rect == (0, 0, 60, 40) and small.prompts == [0, 1]


def test_prompt_extent_drops_outside_points_and_clips_boxes(tmp_path):
    from mapseg.core.io.raster import open_raster

    path = write_raster(tmp_path / "r.tif", np.zeros((3, 50, 80), np.uint8))
    grid = make_grid(open_raster(path))
    p = Prompt(1, [to_map(10.5, 20.5), to_map(-5, 3)], [1, 0])
    local, ext, note = prompt_extent(p, grid)
    assert local.points == [pytest.approx((10.5, 20.5))] and local.labels == [1]
    assert ext == pytest.approx((10.5, 20.5, 10.5, 20.5)) and "1 of its points" in note
    box = Prompt(2, box=(*to_map(70, 45), *to_map(95, 30)))  # xmin, ymin, xmax, ymax
    local, ext, _ = prompt_extent(box, grid)
    assert local.box == pytest.approx((70, 30, 80, 45))
    gone, ext, note = prompt_extent(Prompt(3, [to_map(200, 10)], [1]), grid)
    assert gone is None and "outside the raster" in note


# -- image preparation ----------------------------------------------------------------------


def test_16bit_bands_are_stretched_by_percentiles_without_nodata(tmp_path):
    from mapseg.core.io.raster import open_raster

    rng = np.random.default_rng(0)
    data = rng.integers(1000, 3000, (4, 60, 70)).astype(np.uint16)
    data[:, :10, :10] = 0  # nodata corner: must not stretch the histogram nor show
    data[2, 30, 30] = 3000
    path = write_raster(tmp_path / "u16.tif", data, nodata=0)
    ds = open_raster(path)
    source = ImageSource(ds, [3, 2, 1], make_grid(ds))
    img, valid = source.read((0, 0, 70, 60))
    assert img.shape == (60, 70, 3) and img.dtype == np.uint8
    assert (img[:10, :10] == 0).all()
    assert not valid[:10, :10].any() and valid.sum() == 60 * 70 - 100
    lows = [s["low"] for s in source.stats]
    assert min(lows) > 1000  # nodata excluded from the percentiles
    assert img[30, 30, 0] == 255  # band 3 first
    valid = img[10:, 10:].reshape(-1, 3)
    assert 0.005 < (valid == 255).mean() < 0.05 and 0.005 < (valid == 0).mean() < 0.05


def test_processing_pixel_size_averages_onto_a_coarser_grid(tmp_path):
    from mapseg.core.io.raster import open_raster

    data = np.zeros((3, 40, 60), np.uint8)
    data[:, :, 30:] = 200
    path = write_raster(tmp_path / "b.tif", data)
    ds = open_raster(path)
    grid = make_grid(ds, pixel_size=20.0)
    assert (grid.width, grid.height, grid.scale) == (30, 20, 2.0)
    assert grid.geotransform == (GT[0], 20.0, 0.0, GT[3], 0.0, -20.0)
    img, valid = ImageSource(ds, [1, 2, 3], grid).read((10, 5, 10, 4))
    assert img.shape == (4, 10, 3) and valid.all()
    assert (img[:, :5] == 0).all() and (img[:, 5:] == 200).all()


def rgba_raster(path, data: np.ndarray, alpha: np.ndarray) -> str:
    """An RGBA GeoTIFF as an orthophoto mosaic writes it: alpha 0 where there is no image."""
    from osgeo import gdal

    write_raster(path, np.concatenate([data, alpha[None]]))
    ds = gdal.Open(str(path), gdal.GA_Update)
    ds.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    return str(path)


def test_an_alpha_band_or_an_explicit_mask_is_nodata_for_sam(tmp_path):
    from osgeo import gdal

    from mapseg.core.io.raster import open_raster

    rng = np.random.default_rng(3)
    data = rng.integers(1000, 3000, (3, 40, 60)).astype(np.uint16)
    data[:, :, :20] = 60000  # under the mask: must neither show nor stretch the histogram
    alpha = np.full((40, 60), 255, np.uint16)
    alpha[:, :20] = 0
    ds = open_raster(rgba_raster(tmp_path / "rgba.tif", data, alpha))
    source = ImageSource(ds, [1, 2, 3], make_grid(ds))
    img, valid = source.read((0, 0, 60, 40))
    assert not valid[:, :20].any() and valid[:, 20:].all()
    assert (img[:, :20] == 0).all() and img[:, 20:].mean() > 60
    assert max(st["high"] for st in source.stats) < 3000  # masked pixels left out

    # An averaged, coarser grid keeps the mask: 2 x 2 blocks, columns 0-9 of 30 masked.
    grid = make_grid(ds, pixel_size=20.0)
    img, valid = ImageSource(ds, [1, 2, 3], grid).read((0, 0, 30, 20))
    assert not valid[:, :10].any() and valid[:, 10:].all() and (img[:, :10] == 0).all()

    # An explicit per-dataset mask (an internal GeoTIFF mask) reads the same.
    path = write_raster(tmp_path / "masked.tif", data)
    ds = gdal.Open(path, gdal.GA_Update)
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    ds.GetRasterBand(1).GetMaskBand().WriteArray((alpha > 0).astype(np.uint8) * 255)
    ds = None
    img2, valid2 = ImageSource(open_raster(path), [1, 2, 3], make_grid(open_raster(path))).read(
        (0, 0, 60, 40)
    )
    np.testing.assert_array_equal(valid2, alpha > 0)
    np.testing.assert_array_equal(img2, source.read((0, 0, 60, 40))[0])

    # A 4th band tagged alpha that is not a mask (near-infrared written as RGBA) stays data.
    nir = rng.integers(0, 4000, (40, 60)).astype(np.uint16)
    ds = open_raster(rgba_raster(tmp_path / "nir.tif", data, nir))
    assert ImageSource(ds, [1, 2, 3], make_grid(ds)).read((0, 0, 60, 40))[1].all()


def west_edge(path: str) -> float:
    ds = ogr.Open(path)  # kept open while its features are read
    return min(f.GetGeometryRef().GetEnvelope()[0] for f in ds.GetLayer())


def test_prompt_masks_are_clipped_to_the_data(tmp_path, tiny_sam_checkpoint):
    sam, _ = load_sam(str(tiny_sam_checkpoint))
    data = np.random.default_rng(1).integers(0, 255, (3, 100, 120)).astype(np.uint8)
    alpha = np.full((100, 120), 255, np.uint8)
    alpha[:, :60] = 0
    path = rgba_raster(tmp_path / "r.tif", data, alpha)
    box = Prompt(1, box=(*to_map(10, 90), *to_map(110, 10)))  # over both halves
    out = str(tmp_path / "o.gpkg")
    stats = segment_with_prompts(path, [box], sam, out)
    assert stats["features"] == 1
    assert west_edge(out) >= GT[0] + 600  # nothing west of column 60
    # The same box on the unmasked image reaches west of it: the clip did the work.
    plain = write_raster(tmp_path / "plain.tif", data)
    segment_with_prompts(plain, [box], sam, str(tmp_path / "p.gpkg"))
    assert west_edge(str(tmp_path / "p.gpkg")) < GT[0] + 600


def test_mask_to_geometry_is_georeferenced():
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    geom = mask_to_geometry(mask, (1000.0, 2.0, 0.0, 500.0, 0.0, -2.0))
    assert geom.GetGeometryName() == "MULTIPOLYGON"
    assert geom.GetArea() == pytest.approx(6 * 4.0)
    assert geom.GetEnvelope() == pytest.approx((1004.0, 1010.0, 494.0, 498.0))
    assert mask_to_geometry(np.zeros((3, 3), bool), (0, 1, 0, 0, 0, -1)) is None


# -- one embedding per window ----------------------------------------------------------------


def test_prompts_sharing_a_window_share_one_embedding(tmp_path, tiny_sam_checkpoint):
    sam, _ = load_sam(str(tiny_sam_checkpoint))
    calls = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    data = np.random.default_rng(1).integers(0, 255, (3, 300, 700)).astype(np.uint8)
    path = write_raster(tmp_path / "r.tif", data)
    prompts = [
        Prompt(1, [to_map(100, 100)], [1]),
        Prompt(2, [to_map(140, 130), to_map(120, 110)], [1, 0]),
        Prompt(3, [to_map(600, 250)], [1]),
        Prompt(4, box=(*to_map(90, 150), *to_map(160, 80))),
        Prompt(5, [to_map(900, 100)], [1]),  # outside
    ]
    warnings = []
    stats = segment_with_prompts(
        path, prompts, sam, str(tmp_path / "o.gpkg"), reporter=Reporter(warn=warnings.append)
    )
    hook.remove()
    assert stats["windows"] == 2 and len(calls) == 2  # prompts 1, 2, 4 share the first
    assert stats["prompts"] == 4 and stats["skipped"] == 1
    assert any("Prompt 5 skipped" in w for w in warnings)
    ds = ogr.Open(str(tmp_path / "o.gpkg"))
    layer = ds.GetLayer()
    assert layer.GetFeatureCount() == stats["features"] >= 3
    for feature in layer:
        env = feature.GetGeometryRef().GetEnvelope()
        pid = feature["prompt_id"]
        # Masks stay inside their 256-pixel window (2560 m) around the prompt.
        cx = {1: 100, 2: 130, 3: 600, 4: 125}[pid] * 10 + GT[0]
        assert env[0] >= cx - 2560 and env[1] <= cx + 2560, pid
        assert GT[0] <= env[0] and env[1] <= GT[0] + 7000 and env[2] >= GT[3] - 3000


@pytest.mark.gpu
def test_cuda_gives_the_cpu_masks(tmp_path, tiny_sam_checkpoint):
    data = np.random.default_rng(2).integers(0, 255, (3, 200, 300)).astype(np.uint8)
    path = write_raster(tmp_path / "r.tif", data)
    prompts = [
        Prompt(1, [to_map(60, 50)], [1]),
        Prompt(2, box=(*to_map(150, 180), *to_map(280, 90))),
    ]
    areas = {}
    for device in ("cpu", "cuda"):
        sam, _ = load_sam(str(tiny_sam_checkpoint), device)
        out = tmp_path / f"{device}.gpkg"
        segment_with_prompts(path, prompts, sam, str(out))
        ds = ogr.Open(str(out))
        areas[device] = {f["prompt_id"]: f["area"] for f in ds.GetLayer()}
        ds = None
    assert set(areas["cuda"]) == set(areas["cpu"])
    for pid, area in areas["cpu"].items():
        assert areas["cuda"][pid] == pytest.approx(area, rel=0.05)

"""The shipped default model takes what users have (issue 15 item 4): 1- and 2-band rasters,
RGBA orthophotos (alpha 0 is nodata) and multispectral rasters, through Segment Raster with an
empty MODEL. Each case is compared with the same run on the equivalent 3-band raster: the band
plan must feed the model exactly those bands (so the classes are equal pixel for pixel)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_raster, run_alg, write_raster
from osgeo import gdal
from scenes import Log
from segment_models import regions, utm_wkt

from mapseg.core.model.clustering import agreement

ROWS, COLS, K = 48, 72, 3
NODATA = 255  # Segment Raster's class nodata for up to 255 segments


def segment(tmp_path, name: str, path: str, feedback=None, **params) -> np.ndarray:
    """Segment Raster with the default model (MODEL empty); the class array."""
    dest = str(tmp_path / f"{name}_segments.tif")
    args = {"INPUT": path, "MODEL": "", "NUM_SEGMENTS": K, "OUTPUT": dest}
    run_alg("segmentraster", dict(args, **params), feedback=feedback)
    return read_raster(dest)


def tag(path: str, interps) -> str:
    """Set each band's colour interpretation (GDAL keeps what TIFF cannot hold in .aux.xml)."""
    ds = gdal.Open(path, gdal.GA_Update)
    for i, c in enumerate(interps):
        ds.GetRasterBand(i + 1).SetColorInterpretation(c)
    ds = None
    return path


@pytest.fixture(scope="module")
def scene():
    return regions(ROWS, COLS, seed=4)


def test_one_band_is_repeated_to_three(tmp_path, provider, scene):
    img, truth = scene
    grey = img.mean(axis=0).astype(np.uint8)
    log = Log()
    out = segment(tmp_path, "grey", write_raster(tmp_path / "grey.tif", grey), feedback=log)
    same = segment(tmp_path, "rep", write_raster(tmp_path / "rep.tif", np.stack([grey] * 3)))
    assert np.array_equal(out, same)
    assert set(np.unique(out)) == {1, 2, 3}
    # the default model splits the textured region of this tiny scene (ARI measured 0.49 on
    # grey, 0.50 on the RGB original); equality with the 3-band run above is the real check
    assert agreement(out, truth, np.ones_like(truth, bool))["ari"] >= 0.25
    assert any("feeding it bands 1,1,1" in line for line in log.lines), log.lines


def test_two_bands_are_repeated_in_turn(tmp_path, provider, scene):
    img, _ = scene
    two = img[[0, 2]]
    out = segment(tmp_path, "two", write_raster(tmp_path / "two.tif", two))
    same = segment(tmp_path, "121", write_raster(tmp_path / "121.tif", img[[0, 2, 0]]))
    assert np.array_equal(out, same)
    assert set(np.unique(out)) == {1, 2, 3}


def rgba_file(path, img, alpha) -> str:
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), COLS, ROWS, 4, gdal.GDT_Byte, ["PHOTOMETRIC=RGB", "ALPHA=YES"]
    )
    ds.SetGeoTransform([500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0])
    ds.SetProjection(utm_wkt())
    for i, band in enumerate([*img, alpha]):
        ds.GetRasterBand(i + 1).WriteArray(band)
    ds = None
    return str(path)


def test_rgba_alpha_zero_is_nodata(tmp_path, provider, scene):
    img, truth = scene
    alpha = np.full((ROWS, COLS), 255, np.uint8)
    alpha[:12, :] = 0  # a transparent strip: no imagery there
    alpha[30:40, 50:60] = 0
    clear = alpha == 255
    shown = np.where(clear, img, 0).astype(np.uint8)  # what an orthophoto holds under alpha 0
    log = Log()
    path = rgba_file(tmp_path / "ortho.tif", shown, alpha)
    prob = str(tmp_path / "ortho_conf.tif")
    out = segment(tmp_path, "ortho", path, feedback=log, OUTPUT_PROBABILITY=prob)
    assert (out[~clear] == NODATA).all()
    assert set(np.unique(out[clear])) == {1, 2, 3}
    assert (read_raster(prob)[~clear] == -1).all() and (read_raster(prob)[clear] >= 0.5).all()
    assert any("Band 4 is an alpha band" in line for line in log.lines), log.lines
    # the same pixels as an RGB raster with nodata there give the same segments
    rgb_nd = np.where(clear, np.maximum(img, 1), 0).astype(np.uint8)
    nd_path = write_raster(tmp_path / "rgb_nd.tif", rgb_nd, nodata=0)
    assert np.array_equal(out, segment(tmp_path, "rgb_nd", nd_path))
    assert agreement(out, truth, clear)["ari"] >= 0.25


def test_four_band_byte_raster_tagged_alpha_by_gdal_is_data(tmp_path, provider, scene):
    """GDAL tags a plain 4-band Byte GeoTIFF's 4th band as alpha; a near-infrared band there
    (a range of values) must not blank the image."""
    img, _ = scene
    nir = np.random.default_rng(1).integers(20, 230, (1, ROWS, COLS), dtype=np.uint8)
    path = write_raster(tmp_path / "rgbn.tif", np.concatenate([img, nir]))
    ds = gdal.Open(path)
    assert ds.GetRasterBand(4).GetColorInterpretation() == gdal.GCI_AlphaBand
    ds = None
    out = segment(tmp_path, "rgbn", path)
    assert set(np.unique(out)) == {1, 2, 3}  # no nodata anywhere
    assert np.array_equal(out, segment(tmp_path, "rgb", write_raster(tmp_path / "rgb.tif", img)))


def test_multispectral_red_green_blue_by_colour_interpretation(tmp_path, provider, scene):
    img, _ = scene
    noise = np.random.default_rng(2).integers(0, 4000, (1, ROWS, COLS), dtype=np.uint16)
    nrgb = np.concatenate([noise, img.astype(np.uint16) * 16])  # e.g. coastal, red, green, blue
    path = write_raster(tmp_path / "nrgb.tif", nrgb)
    tag(path, [gdal.GCI_Undefined, gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand])
    log = Log()
    out = segment(tmp_path, "nrgb", path, feedback=log)
    assert np.array_equal(out, segment(tmp_path, "bands234", path, BANDS="2,3,4"))
    assert any("red, green and blue bands (2,3,4" in line for line in log.lines), log.lines
    # the first three bands (noise, red, green) segment otherwise
    assert not np.array_equal(out, segment(tmp_path, "bands123", path, BANDS="1,2,3"))


def test_multispectral_without_colour_interpretation_uses_the_first_three(
    tmp_path, provider, scene
):
    img, _ = scene
    nir = np.random.default_rng(2).integers(0, 4000, (1, ROWS, COLS), dtype=np.uint16)
    path = write_raster(tmp_path / "ms.tif", np.concatenate([img.astype(np.uint16) * 16, nir]))
    ds = gdal.Open(path)
    assert ds.GetRasterBand(1).GetColorInterpretation() == gdal.GCI_GrayIndex
    ds = None
    log = Log()
    out = segment(tmp_path, "ms", path, feedback=log)
    assert np.array_equal(out, segment(tmp_path, "ms123", path, BANDS="1,2,3"))
    assert set(np.unique(out)) == {1, 2, 3}
    assert any("its first 3 (1,2,3)" in line for line in log.lines), log.lines


@pytest.mark.parametrize("params", [{"RESOLUTION": "medium"}, {"RESAMPLE_TO_MODEL": True}])
def test_rgba_mask_survives_coarser_and_resampled_processing(tmp_path, provider, scene, params):
    """The alpha mask is kept through the coarser (RESOLUTION) and the model-resolution
    (RESAMPLE_TO_MODEL) virtual rasters: the transparent strip stays nodata."""
    img, _ = scene
    alpha = np.full((ROWS, COLS), 255, np.uint8)
    alpha[:12, :] = 0
    path = rgba_file(tmp_path / "ortho.tif", np.where(alpha == 255, img, 0), alpha)
    out = segment(tmp_path, "coarse", path, **params)
    f = ROWS // out.shape[0]  # 2 for medium, 1 on the input grid
    assert (out[: 12 // f] == NODATA).all()
    # elsewhere nodata only where the same run on the plain RGB raster has it (the model's
    # 28.5 m grid stops short of the last 10 m column: nodata there with or without alpha)
    ref = segment(tmp_path, "ref", write_raster(tmp_path / "rgb.tif", img), **params)
    assert np.array_equal(out[12 // f :] == NODATA, ref[12 // f :] == NODATA)
    assert set(np.unique(out[12 // f :])) - {NODATA} == {1, 2, 3}

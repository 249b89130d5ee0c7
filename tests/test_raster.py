"""core.raster: windows, safe writing, georeferencing and input checks (no QGIS)."""

import os

import numpy as np
import pytest
from conftest import read_raster, write_raster
from osgeo import gdal

from mapseg.core.errors import MapSegError
from mapseg.core.io import raster


@pytest.mark.parametrize("width,height,bw,bh", [(100, 37, 32, 16), (5, 5, 8, 8), (64, 64, 64, 1)])
def test_windows_cover_every_pixel_once(width, height, bw, bh):
    hits = np.zeros((height, width), dtype=int)
    for x, y, w, h in raster.windows(width, height, bw, bh):
        assert 0 < w <= bw and 0 < h <= bh
        hits[y : y + h, x : x + w] += 1
    assert (hits == 1).all()


def test_block_size_follows_tiles_and_strips(tmp_path):
    arr = np.zeros((600, 700), dtype=np.uint8)
    striped = write_raster(tmp_path / "s.tif", arr)
    ds = gdal.Open(striped)
    strip = ds.GetRasterBand(1).GetBlockSize()[1]
    bw, bh = raster.block_size(ds, max_cells=70_000)
    # whole rows, a whole number of strips, about max_cells cells
    assert bw == 700 and bh % strip == 0 and 100 - strip < bh <= 100
    tiled = tmp_path / "t.tif"
    gdal.Translate(
        str(tiled), ds, creationOptions=["TILED=YES", "BLOCKXSIZE=128", "BLOCKYSIZE=128"]
    )
    bw, bh = raster.block_size(gdal.Open(str(tiled)), max_cells=128 * 128 * 4)
    assert (bw, bh) == (256, 256)


def test_output_raster_commits_atomically_with_georeferencing(tmp_path):
    gt = (1000.0, 2.0, 0.5, 5000.0, 0.25, -2.0)  # rotated
    dest = tmp_path / "out.tif"
    with raster.OutputRaster(
        str(dest),
        300,
        280,
        gdal.GDT_Byte,
        geotransform=gt,
        projection="",
        nodata=255,
        color_table={1: (255, 0, 0), 2: (0, 0, 255)},
        category_names={1: "red", 2: "blue"},
    ) as out:
        out.write(np.full((280, 300), 2, dtype=np.uint8), 0, 0)
        assert not dest.exists(), "the destination must not exist before commit"
        out.commit()
    ds = gdal.Open(str(dest))
    assert ds.GetGeoTransform() == gt
    band = ds.GetRasterBand(1)
    assert band.GetNoDataValue() == 255
    assert band.GetRasterColorTable().GetColorEntry(2)[:3] == (0, 0, 255)
    assert band.GetCategoryNames()[1:3] == ["red", "blue"]
    assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    assert band.GetBlockSize() == [256, 256]
    assert (read_raster(dest) == 2).all()
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_output_raster_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "out.tif"
    with (
        pytest.raises(RuntimeError),
        raster.OutputRaster(str(dest), 10, 10, gdal.GDT_Float32) as out,
    ):
        out.write(np.ones((10, 10), dtype=np.float32), 0, 0)
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_open_raster_errors(tmp_path):
    with pytest.raises(MapSegError, match="cannot open"):
        raster.open_raster(str(tmp_path / "missing.tif"))
    text = tmp_path / "notes.txt"
    text.write_text("not a raster")
    with pytest.raises(MapSegError, match="cannot open"):
        raster.open_raster(str(text))
    ds = raster.open_raster(write_raster(tmp_path / "a.tif", np.zeros((3, 4, 5), np.uint8)))
    with pytest.raises(MapSegError, match="has 3 bands"):
        raster.check_band(ds, 4)


def test_check_destination(tmp_path):
    src = write_raster(tmp_path / "in.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(MapSegError, match="same file as the input"):
        raster.check_destination(src, [src])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(MapSegError, match="not writable"):
            raster.check_destination(str(locked / "o.tif"))
    finally:
        locked.chmod(0o700)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(MapSegError, match="Cannot create the output folder"):
        raster.check_destination(str(a_file / "o.tif"))
    assert raster.check_destination(str(tmp_path / "new" / "o.tif")).endswith("o.tif")


def test_raster_info_and_masks(tmp_path):
    path = write_raster(
        tmp_path / "g.tif",
        np.array([[1, np.nan], [-9, 3]], np.float32),
        nodata=-9,
        epsg=4326,
        geotransform=(10, 0.5, 0, 50, 0, -0.5),
    )
    info = raster.raster_info(raster.open_raster(path))
    assert info.georeferenced and info.is_geographic
    assert info.pixel_area == pytest.approx(0.25)
    block = gdal.Open(path).ReadAsArray()
    assert raster.valid_mask(block, info.nodata[0]).tolist() == [[True, False], [False, True]]
    plain = write_raster(
        tmp_path / "p.tif", np.zeros((2, 2), np.uint8), geotransform=None, epsg=None
    )
    assert not raster.raster_info(raster.open_raster(plain)).georeferenced


def test_smallest_int_type():
    assert raster.smallest_int_type(255) == gdal.GDT_Byte
    assert raster.smallest_int_type(256) == gdal.GDT_UInt16
    assert raster.smallest_int_type(70000) == gdal.GDT_UInt32
    assert raster.smallest_int_type(5, -1) == gdal.GDT_Int16


@pytest.mark.parametrize("on", [(), ("gdal",), ("gdal", "osr"), ("gdal", "ogr", "osr")])
def test_gdal_exceptions_restores_each_module(on):
    """The three modules share one stack of error handlers: any mix that was on before the
    block is exactly what is on after it, and nothing raises on the way out."""
    from osgeo import ogr, osr

    from mapseg.core.io.gdal_errors import gdal_exceptions

    modules = {"gdal": gdal, "ogr": ogr, "osr": osr}
    before = {name: m.GetUseExceptions() for name, m in modules.items()}
    try:
        for name in ("osr", "ogr", "gdal"):
            if before[name]:
                modules[name].DontUseExceptions()
        for name in on:
            modules[name].UseExceptions()
        with gdal_exceptions():
            assert all(m.GetUseExceptions() for m in modules.values())
            with pytest.raises(RuntimeError):
                gdal.Open("/nonexistent/x.tif")
        assert {n: bool(m.GetUseExceptions()) for n, m in modules.items()} == {
            n: n in on for n in modules
        }
    finally:
        for name in ("osr", "ogr", "gdal"):
            if modules[name].GetUseExceptions():
                modules[name].DontUseExceptions()
        for name in ("gdal", "ogr", "osr"):
            if before[name]:
                modules[name].UseExceptions()

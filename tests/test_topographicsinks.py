"""Topographic Sinks through QGIS: processing.run, qgis_process, the dialog, bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CancelAfter, qgis_process_json, read_raster, run_alg, save_dialog_screenshot
from osgeo import gdal, ogr
from test_terrain import NODATA, reference_depth, synthetic_dem

pytest.importorskip("whitebox_workflows")


def test_run_writes_depth_filled_and_sinks(provider, tmp_raster, tmp_path):
    z = synthetic_dem(60, 80, seed=1)
    z[20:23, 30:34] = NODATA
    src = tmp_raster(z, nodata=NODATA)
    params = {
        "INPUT": src,
        "MIN_DEPTH": 0.5,
        "MIN_AREA": 200.0,
        "OUTPUT_DEPTH": str(tmp_path / "depth.tif"),
        "OUTPUT_FILLED": str(tmp_path / "filled.tif"),
        "OUTPUT_SINKS": str(tmp_path / "sinks.gpkg"),
    }
    result = run_alg("topographicsinks", params)
    ref = reference_depth(z)
    valid = ~np.isnan(ref)
    expected = np.where(ref > 0.5, ref, 0.0)
    depth = read_raster(result["OUTPUT_DEPTH"])
    np.testing.assert_allclose(depth[valid], expected[valid], atol=1e-4)
    assert (depth[~valid] == NODATA).all()
    filled = read_raster(result["OUTPUT_FILLED"])
    np.testing.assert_allclose(filled[valid], (z + ref)[valid], atol=1e-3)
    assert result["SINK_CELLS"] == int((ref > 0.5).sum())
    assert result["VOLUME"] == pytest.approx(expected[valid].sum() * 100.0, rel=1e-5)
    vds = ogr.Open(result["OUTPUT_SINKS"])
    layer = vds.GetLayer()
    assert layer.GetFeatureCount() == result["SINK_COUNT"] > 0
    areas = [f["area"] for f in layer]
    assert min(areas) >= 200.0
    assert sum(areas) <= result["SINK_CELLS"] * 100.0


def test_qgis_process_subprocess(provider, tmp_raster, tmp_path):
    z = np.full((12, 12), 10.0, np.float32)
    z[5, 5] = 4.0
    z[0, 3], z[1, 3] = 6.0, 2.0  # beside a low edge cell: fills to 6 only
    src = tmp_raster(z)
    out = str(tmp_path / "cli.tif")
    result = qgis_process_json(
        "topographicsinks", {"INPUT": src, "MAX_DEPTH": 5, "OUTPUT_DEPTH": out}
    )
    assert result["results"]["OUTPUT_DEPTH"] == out
    depth = read_raster(out)
    assert depth[5, 5] == pytest.approx(5.0) and depth[1, 3] == pytest.approx(4.0)
    assert np.count_nonzero(depth) == 2
    assert gdal.Open(out).GetGeoTransform() == gdal.Open(src).GetGeoTransform()


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot("mapseg:topographicsinks", qgis_iface)
    assert path.exists() and path.stat().st_size > 10_000


def _raises(params, match, tmp_path, keep):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=match):
        run_alg("topographicsinks", params)
    left = sorted(p for p in os.listdir(tmp_path) if p not in keep)
    assert left == [], left


def test_bad_inputs(provider, tmp_raster, tmp_path):
    src = tmp_raster(synthetic_dem(20, 20))
    empty = tmp_raster(np.full((6, 6), NODATA, np.float32), name="empty.tif", nodata=NODATA)
    keep = ("input.tif", "input.tif.aux.xml", "empty.tif", "empty.tif.aux.xml", "file")
    out = str(tmp_path / "d.tif")
    _raises({"INPUT": src, "BAND": 2, "OUTPUT_DEPTH": out}, "Band 2 does not exist", tmp_path, keep)
    _raises({"INPUT": empty, "OUTPUT_DEPTH": out}, "only nodata", tmp_path, keep)
    _raises({"INPUT": src, "OUTPUT_DEPTH": src}, "same file as the input", tmp_path, keep)
    (tmp_path / "file").write_text("not a folder")
    bad_dir = str(tmp_path / "file" / "d.tif")
    _raises({"INPUT": src, "OUTPUT_DEPTH": bad_dir}, "output folder", tmp_path, keep)
    sinks = str(tmp_path / "s.gpkg")
    params = {"INPUT": src, "OUTPUT_DEPTH": out, "OUTPUT_SINKS": sinks, "MIN_AREA": -1}
    _raises(params, "MIN_AREA|minimum", tmp_path, keep)
    _raises(
        {"INPUT": str(tmp_path / "nope.tif"), "OUTPUT_DEPTH": out},
        "could not be loaded|cannot open|nope",
        tmp_path,
        keep,
    )


def test_cancel_leaves_no_file(provider, tmp_raster, tmp_path):
    from qgis.core import QgsProcessingException

    src = tmp_raster(synthetic_dem(40, 40))
    params = {
        "INPUT": src,
        "OUTPUT_DEPTH": str(tmp_path / "d.tif"),
        "OUTPUT_SINKS": str(tmp_path / "s.gpkg"),
    }
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_alg("topographicsinks", params, CancelAfter(50))
    assert sorted(os.listdir(tmp_path)) == ["input.tif"]

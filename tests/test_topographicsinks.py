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


@pytest.mark.parametrize("percent", [70, 82, 90])
def test_cancel_between_outputs_keeps_previous_files(provider, tmp_raster, tmp_path, percent):
    """Cancel while the depth (70), the filled DEM (82) or the polygons (90) are written:
    no destination changes, no new file appears."""
    from qgis.core import QgsProcessingException
    from test_outputs import layer_digest, make_gpkg

    src = tmp_raster(synthetic_dem(60, 60, seed=3))
    (tmp_path / "depth.tif").write_bytes(b"yesterday's depth")
    (tmp_path / "filled.tif").write_bytes(b"yesterday's fill")
    make_gpkg(tmp_path / "project.gpkg", {"roads": 50, "sinks": 4})
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    params = {
        "INPUT": src,
        "OUTPUT_DEPTH": str(tmp_path / "depth.tif"),
        "OUTPUT_FILLED": str(tmp_path / "filled.tif"),
        "OUTPUT_SINKS": f"ogr:dbname='{tmp_path / 'project.gpkg'}' table=\"sinks\" (geom)",
    }
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_alg("topographicsinks", params, CancelAfter(percent))
    assert sorted(os.listdir(tmp_path)) == sorted(before)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, name
    # and uncancelled, the same run replaces all three, the other layer kept
    roads = layer_digest(tmp_path / "project.gpkg", "roads")
    result = run_alg("topographicsinks", params)
    assert result["OUTPUT_SINKS"] == f"{tmp_path / 'project.gpkg'}|layername=sinks"
    assert layer_digest(tmp_path / "project.gpkg", "roads") == roads
    vds = ogr.Open(str(tmp_path / "project.gpkg"))
    sinks = vds.GetLayerByName("sinks")
    assert sinks.GetFeatureCount() == result["SINK_COUNT"] > 0
    assert sinks.GetLayerDefn().GetFieldIndex("volume") >= 0
    assert gdal.Open(result["OUTPUT_FILLED"]).RasterXSize == 60


def test_memory_limit_refuses_a_dem_too_large(provider, tmp_raster, tmp_path):
    """A VRT of a small DEM scaled up to 200 000 x 200 000 cells: refused before any work with
    the memory it needs and how to raise the limit; a small limit refuses a small DEM."""
    from qgis.core import QgsProcessingException

    small = tmp_raster(synthetic_dem(50, 50))
    vrt = str(tmp_path / "huge.vrt")
    gdal.Translate(vrt, small, format="VRT", width=200_000, height=200_000)
    out = str(tmp_path / "out" / "depth.tif")
    keep = ("input.tif", "huge.vrt", "out")
    with pytest.raises(QgsProcessingException) as err:
        run_alg("topographicsinks", {"INPUT": vrt, "OUTPUT_DEPTH": out})
    message = str(err.value)
    need = 200_002**2 * 100 / 1024**3
    assert f"needs about {need:.1f} GB" in message
    assert "MEMORY_LIMIT" in message and "MAPSEG_MEMORY_LIMIT_GB" in message
    assert sorted(os.listdir(tmp_path)) == sorted(keep) and os.listdir(tmp_path / "out") == []
    with pytest.raises(QgsProcessingException, match=r"needs about 0\.0 GB.*MEMORY_LIMIT"):
        run_alg("topographicsinks", {"INPUT": small, "OUTPUT_DEPTH": out, "MEMORY_LIMIT": 1e-4})
    result = run_alg("topographicsinks", {"INPUT": small, "OUTPUT_DEPTH": out, "MEMORY_LIMIT": 1})
    assert os.path.exists(result["OUTPUT_DEPTH"])


def test_memory_limit_from_the_environment(provider, tmp_raster, tmp_path):
    from conftest import qgis_process

    src = tmp_raster(synthetic_dem(40, 40))
    out = tmp_path / "d.tif"
    env = {"MAPSEG_MEMORY_LIMIT_GB": "0.00001"}
    proc = qgis_process("topographicsinks", {"INPUT": src, "OUTPUT_DEPTH": str(out)}, env=env)
    assert proc.returncode != 0
    assert "environment variable MAPSEG_MEMORY_LIMIT_GB" in proc.stdout + proc.stderr
    assert not out.exists()


def test_whitebox_files_go_beside_the_destination(tmp_path):
    from test_terrain import write_raster

    from mapseg.core.progress import Reporter
    from mapseg.core.terrain.sinks import topographic_sinks

    src = write_raster(tmp_path / "dem.tif", synthetic_dem(30, 30))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    log = []
    topographic_sinks(src, str(out_dir / "d.tif"), reporter=Reporter(log=log.append))
    folders = [m.split(" in ", 1)[1] for m in log if m.startswith("Temporary files")]
    assert len(folders) == 1
    assert os.path.dirname(folders[0]) == str(out_dir)
    assert not os.path.exists(folders[0])
    assert sorted(os.listdir(out_dir)) == ["d.qml", "d.tif"]  # the depth and its style


def test_outputs_open_styled_in_a_fresh_session(provider, tmp_raster, tmp_path):
    """Each output, opened as a new layer: depth and filled DEM on a colour ramp over their
    real range (depth 0 and nodata transparent), sinks graduated by depth."""
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    z = synthetic_dem(50, 60, seed=2)
    z[10:13, 10:13] = NODATA
    src = tmp_raster(z, nodata=NODATA)
    result = run_alg(
        "topographicsinks",
        {
            "INPUT": src,
            "OUTPUT_DEPTH": str(tmp_path / "depth.tif"),
            "OUTPUT_FILLED": str(tmp_path / "filled.tif"),
            "OUTPUT_SINKS": str(tmp_path / "sinks.shp"),
        },
    )
    depth = QgsRasterLayer(result["OUTPUT_DEPTH"], "depth")
    renderer = depth.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    assert renderer.classificationMin() == 0.0
    result_max = float(read_raster(result["OUTPUT_DEPTH"]).max())
    assert renderer.classificationMax() == pytest.approx(result_max)
    assert result_max > 0
    assert renderer.rasterTransparency().alphaValue(0.0) == 0
    assert depth.dataProvider().sourceNoDataValue(1) == NODATA
    filled_layer = QgsRasterLayer(result["OUTPUT_FILLED"], "filled")
    filled = filled_layer.renderer()
    values = read_raster(result["OUTPUT_FILLED"])
    valid = values != NODATA
    assert filled.type() == "singlebandpseudocolor"
    assert filled.classificationMin() == pytest.approx(values[valid].min(), rel=1e-6)
    assert filled.classificationMax() == pytest.approx(values[valid].max(), rel=1e-6)
    sinks = QgsVectorLayer(result["OUTPUT_SINKS"], "sinks", "ogr")
    graduated = sinks.renderer()
    assert graduated.type() == "graduatedSymbol" and graduated.classAttribute() == "max_depth"
    assert len(graduated.ranges()) == 5
    deepest = max(f["max_depth"] for f in sinks.getFeatures())
    assert graduated.ranges()[-1].upperValue() == pytest.approx(deepest)


def test_dialog_loads_the_outputs_styled(provider, tmp_raster, tmp_path):
    """Processing loads result rasters without their .qml; the post-processor applies it."""
    import processing
    from qgis.core import (
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingOutputLayerDefinition,
        QgsProject,
        QgsRasterLayer,
    )

    src = tmp_raster(synthetic_dem(30, 30, seed=4))
    project = QgsProject()
    context = QgsProcessingContext()
    context.setProject(project)
    out = str(tmp_path / "depth.tif")
    params = {"INPUT": src, "OUTPUT_DEPTH": QgsProcessingOutputLayerDefinition(out, project)}
    feedback = QgsProcessingFeedback()
    processing.run("mapseg:topographicsinks", params, feedback=feedback, context=context)
    post = context.layerToLoadOnCompletionDetails(out).postProcessor()
    assert post is not None
    options = QgsRasterLayer.LayerOptions()
    options.loadDefaultStyle = False
    layer = QgsRasterLayer(out, "depth", "gdal", options)
    assert layer.renderer().type() != "singlebandpseudocolor"
    post.postProcessLayer(layer, context, feedback)
    assert layer.renderer().type() == "singlebandpseudocolor"
    assert layer.renderer().classificationMax() == pytest.approx(float(read_raster(out).max()))

"""mapseg:polygonizeclasses through QGIS: processing.run, qgis_process, styling, dialog."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CancelAfter, qgis_process_json, run_alg, save_dialog_screenshot
from osgeo import ogr
from scenes import blobby_classes

COLORS = {1: (230, 25, 75), 2: (60, 180, 75), 3: (0, 130, 200), 4: (255, 225, 25)}
NAMES = ["", "urban", "forest", "water", "crops"]


def class_array(rows=24, cols=32, seed=7) -> np.ndarray:
    return blobby_classes(rows, cols, 4, 4, 0.05, seed)


def areas_by_class(path):
    ds = ogr.Open(str(path))
    out = {}
    for f in ds.GetLayer(0):
        out[f["class"]] = out.get(f["class"], 0.0) + f["area"]
    return out


def test_run_writes_exact_class_areas(provider, tmp_raster, tmp_path):
    arr = class_array()
    src = tmp_raster(arr, color_table=COLORS, category_names=NAMES)
    out = str(tmp_path / "classes.gpkg")
    result = run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": out})
    assert result["OUTPUT"] == out
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(out, "classes", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32633"
    assert [f.name() for f in layer.fields()][-4:] == ["class", "name", "area", "perimeter"]
    names = {f["class"]: f["name"] for f in layer.getFeatures()}
    assert names == {v: NAMES[v] for v in range(1, 5)}
    areas = areas_by_class(out)
    assert areas == pytest.approx({v: (arr == v).sum() * 100.0 for v in range(1, 5)})


def test_geographic_areas_match_qgis_ellipsoid(provider, tmp_raster, tmp_path):
    from qgis.core import (
        QgsCoordinateTransformContext,
        QgsDistanceArea,
        QgsVectorLayer,
    )

    arr = class_array(20, 30, seed=11)
    src = tmp_raster(arr, geotransform=(-3.0, 0.02, 0.0, 52.0, 0.0, -0.02), epsg=4326)
    out = str(tmp_path / "geo.gpkg")
    run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": out, "DISSOLVE": True})
    layer = QgsVectorLayer(out, "geo", "ogr")
    da = QgsDistanceArea()
    da.setSourceCrs(layer.crs(), QgsCoordinateTransformContext())
    da.setEllipsoid("EPSG:7030")  # WGS 84
    assert da.willUseEllipsoid()
    checked = 0
    for f in layer.getFeatures():
        qgis_area = da.measureArea(f.geometry())
        qgis_perimeter = da.measurePerimeter(f.geometry())
        assert f["area"] > 1e6  # m², not square degrees
        assert f["area"] == pytest.approx(qgis_area, rel=1e-3)
        assert f["perimeter"] == pytest.approx(qgis_perimeter, rel=1e-3)
        checked += 1
    assert checked == 4


def test_post_processor_styles_the_layer(provider, tmp_raster, tmp_path):
    import processing
    from qgis.core import (
        QgsCategorizedSymbolRenderer,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingOutputLayerDefinition,
        QgsProject,
        QgsVectorLayer,
    )

    src = tmp_raster(class_array(), color_table=COLORS, category_names=NAMES)
    out = str(tmp_path / "styled.gpkg")
    project = QgsProject()  # a private project: the algorithm never needs the global one
    context = QgsProcessingContext()
    context.setProject(project)
    params = {"INPUT": src, "OUTPUT": QgsProcessingOutputLayerDefinition(out, project)}
    feedback = QgsProcessingFeedback()
    processing.run("mapseg:polygonizeclasses", params, feedback=feedback, context=context)
    assert context.willLoadLayerOnCompletion(out)
    post = context.layerToLoadOnCompletionDetails(out).postProcessor()
    assert post is not None
    layer = QgsVectorLayer(out, "styled", "ogr")
    post.postProcessLayer(layer, context, feedback)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert renderer.classAttribute() == "class"
    cats = {c.value(): (c.label(), c.symbol().color().getRgb()[:3]) for c in renderer.categories()}
    assert cats == {v: (NAMES[v], COLORS[v]) for v in range(1, 5)}


def test_qgis_process_subprocess(provider, tmp_raster, tmp_path):
    arr = class_array()
    arr[:2] = 0
    src = tmp_raster(arr, category_names=NAMES)
    out = str(tmp_path / "cli.shp")
    params = {"INPUT": src, "IGNORE_VALUES": "0,4", "MIN_AREA": 250, "OUTPUT": out}
    result = qgis_process_json("polygonizeclasses", params)
    assert result["results"]["OUTPUT"] == out
    areas = areas_by_class(out)
    assert set(areas) == {1, 2, 3}
    assert sum(areas.values()) == pytest.approx(np.isin(arr, (1, 2, 3)).sum() * 100.0)


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot("mapseg:polygonizeclasses", qgis_iface)
    assert path.exists() and path.stat().st_size > 10_000


def _raises(params, match, tmp_path, keep=()):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=match):
        run_alg("polygonizeclasses", params)
    left = sorted(p for p in os.listdir(tmp_path) if p not in keep)
    assert left == [], left


def test_bad_inputs(provider, tmp_raster, tmp_path):
    src = tmp_raster(class_array())
    keep = ("input.tif", "locked")
    out = str(tmp_path / "o.gpkg")
    _raises({"INPUT": src, "BAND": 3, "OUTPUT": out}, "Band 3 does not exist", tmp_path, keep)
    _raises({"INPUT": src, "IGNORE_VALUES": "1,a", "OUTPUT": out}, "IGNORE_VALUES", tmp_path, keep)
    _raises({"INPUT": src, "OUTPUT": src}, "same file as the input|not supported", tmp_path, keep)
    frac = tmp_raster(class_array().astype(np.float32) + 0.25, name="frac.tif")
    keep += ("frac.tif",)
    _raises({"INPUT": frac, "OUTPUT": out}, "not whole classes", tmp_path, keep)
    empty = tmp_raster(np.full((8, 8), 5, np.uint8), name="empty.tif", nodata=5)
    keep += ("empty.tif",)
    _raises({"INPUT": empty, "OUTPUT": out}, "no pixels to polygonize", tmp_path, keep)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        params = {"INPUT": src, "OUTPUT": str(locked / "o.gpkg")}
        _raises(params, "not writable", tmp_path, keep)


def test_cancel_leaves_no_file(provider, tmp_raster, tmp_path):
    from qgis.core import QgsProcessingException

    src = tmp_raster(class_array(200, 200))
    out = tmp_path / "c.gpkg"
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": str(out)}, CancelAfter(30))
    assert sorted(os.listdir(tmp_path)) == ["input.tif"]


def test_new_layer_in_a_geopackage_keeps_its_other_layers(provider, tmp_raster, tmp_path):
    """Save to GeoPackage from the dialog: the class layer is added, the two layers already
    there (one of 10 000 features) keep every row; a rerun replaces only that layer."""
    from test_outputs import layer_digest, layer_names, make_gpkg

    src = tmp_raster(class_array(), color_table=COLORS, category_names=NAMES)
    gpkg = tmp_path / "project.gpkg"
    make_gpkg(gpkg, {"roads": 10_000, "wells": 3})
    before = {name: layer_digest(gpkg, name) for name in ("roads", "wells")}
    dest = f"ogr:dbname='{gpkg}' table=\"landcover\" (geom)"
    result = run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": dest})
    assert result["OUTPUT"] == f"{gpkg}|layername=landcover"
    assert layer_names(gpkg) == ["landcover", "layer_styles", "roads", "wells"]
    assert {name: layer_digest(gpkg, name) for name in before} == before
    first = layer_digest(gpkg, "landcover")
    assert first[0] > 4
    run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": result["OUTPUT"], "DISSOLVE": True})
    assert layer_names(gpkg) == ["landcover", "layer_styles", "roads", "wells"]
    assert layer_digest(gpkg, "landcover")[0] == 4  # one multipolygon per class
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(result["OUTPUT"], "landcover", "ogr")
    assert layer.renderer().type() == "categorizedSymbol"  # the default style in the file
    assert len(layer.renderer().categories()) == 4
    assert {name: layer_digest(gpkg, name) for name in before} == before
    assert sorted(os.listdir(tmp_path)) == ["input.tif", "input.tif.aux.xml", "project.gpkg"]


def test_memory_output_is_a_memory_layer(provider, tmp_raster):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    src = tmp_raster(class_array(), color_table=COLORS, category_names=NAMES)
    context = QgsProcessingContext()
    result = processing.run(
        "mapseg:polygonizeclasses",
        {"INPUT": src, "OUTPUT": "memory:", "DISSOLVE": True},
        feedback=QgsProcessingFeedback(),
        context=context,
    )
    layer = result["OUTPUT"]
    if isinstance(layer, str):
        layer = context.getMapLayer(layer)
    assert layer.providerType() == "memory"
    assert sorted(f["class"] for f in layer.getFeatures()) == [1, 2, 3, 4]
    assert sorted(f["name"] for f in layer.getFeatures()) == sorted(NAMES[1:])


def test_cancel_keeps_the_previous_file(provider, tmp_raster, tmp_path):
    from qgis.core import QgsProcessingException

    src = tmp_raster(class_array(200, 200))
    out = tmp_path / "c.gpkg"
    run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": str(out), "DISSOLVE": True})
    data = out.read_bytes()
    for percent in (30, 80, 99):
        with pytest.raises(QgsProcessingException, match="Canceled"):
            run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": str(out)}, CancelAfter(percent))
        assert out.read_bytes() == data
        left = sorted(p for p in os.listdir(tmp_path) if p != "input.tif.aux.xml")
        assert left == ["c.gpkg", "input.tif"]  # QGIS may add the input's statistics


@pytest.mark.parametrize("ext", ["gpkg", "geojson"])
def test_output_opens_categorised_in_a_fresh_session(provider, tmp_raster, tmp_path, ext):
    """Opened as a new layer (browser, qgis_process yesterday), not through the dialog: one
    category per class present, with the raster's names and colours."""
    from qgis.core import QgsVectorLayer

    arr = class_array()
    arr[0, :] = 3  # classes 1-4 present
    src = tmp_raster(arr, color_table=COLORS, category_names=NAMES)
    result = run_alg("polygonizeclasses", {"INPUT": src, "OUTPUT": str(tmp_path / f"c.{ext}")})
    layer = QgsVectorLayer(result["OUTPUT"], "c", "ogr")
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class"
    cats = {
        int(c.value()): (c.label(), c.symbol().color().getRgb()[:3]) for c in renderer.categories()
    }
    assert cats == {v: (NAMES[v], COLORS[v]) for v in range(1, 5)}

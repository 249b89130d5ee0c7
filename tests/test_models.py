"""The shipped Graphical Modeler models run through the real qgis_process."""

import numpy as np
from conftest import QGIS_PROCESS, ROOT, qgis_process_json, write_raster
from osgeo import ogr

MODELS = ROOT / "models"


def test_dem_sinks_to_polygons_model_runs_through_qgis_process(tmp_path):
    # A tilted plane (everything drains off its low edge) with two pits: a 3x3 pit lowered by
    # 2.6 m, which fills to its lowest rim cell (106.3 m) with every cell deeper than 0.5 m,
    # and a one-cell pit 0.05 m deep, which the model's minimum depth of 0.1 m leaves out.
    rows, cols = np.mgrid[0:40, 0:50]
    dem = 100.0 + 0.5 * rows + 0.2 * cols
    dem[10:13, 10:13] -= 2.6
    dem[25, 30] = dem[24, 29] - 0.05
    dem = dem.astype(np.float32)
    dem_path = write_raster(tmp_path / "dem.tif", dem, geotransform=(1000, 5, 0, 9000, 0, -5))
    out = tmp_path / "sinks.gpkg"
    result = qgis_process_json(
        str(MODELS / "dem_sinks_to_polygons.model3"),
        {"dem": dem_path, "min_depth": 0.1, "min_area": 0, "polygons:Sink polygons": out},
    )
    assert result["results"]["polygons:Sink polygons"] == str(out)
    ds = ogr.Open(str(out))
    layer = ds.GetLayer(0)
    areas = sorted(f.GetField("area") for f in layer)
    # The deep pit fills completely: 9 cells of 25 m2 each. Nothing else is deeper than 0.1 m.
    assert areas == [9 * 25.0]
    assert all(f.GetField("class") == 1 for f in layer)
    assert QGIS_PROCESS.exists()


def _nc_scene(tmp_path):
    from conftest import sample_file
    from osgeo import gdal

    bands = [str(sample_file(f"lsat7_2000_{b}.tif")) for b in (10, 20, 30, 40, 50, 70)]
    vrt = str(tmp_path / "nc.vrt")
    gdal.BuildVRT(vrt, bands, separate=True).FlushCache()
    return vrt


def test_points_to_landcover_model_with_reference(tmp_path):
    from conftest import read_raster, sample_file
    from osgeo import gdal

    scene = _nc_scene(tmp_path)
    out = {
        "train:Model": tmp_path / "model.pt",
        "segment:Land-cover map": tmp_path / "map.tif",
        "polygons:Land-cover polygons": tmp_path / "polygons.gpkg",
        "evaluate:Evaluation report": tmp_path / "scores.html",
    }
    result = qgis_process_json(
        str(MODELS / "points_to_landcover.model3"),
        {
            "scene": scene,
            "points": sample_file("landsat96_points.shp"),
            "class_field": "id",
            "training_minutes": 0.25,
            "superpixel_size": 10,
            "tile_size": 64,
            "reference": sample_file("strata.tif"),
            **out,
        },
        timeout=900,
    )
    assert set(result["results"]) == set(out)
    # The map lies on the scene's grid and only holds classes that the points carry (1..7).
    ds = gdal.Open(str(out["segment:Land-cover map"]))
    assert ds.GetGeoTransform() == gdal.Open(scene).GetGeoTransform()
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    values = read_raster(out["segment:Land-cover map"])
    classes = set(values[values != nodata].ravel().tolist())
    assert classes and classes <= set(range(1, 8))
    # Nodata exactly where any band of the scene is nodata (band 7 uses -32768, not -99999).
    scene_ds = gdal.Open(scene)
    nodata_values = [scene_ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(6)]
    pixels = scene_ds.ReadAsArray()
    scene_valid = np.all([pixels[i] != v for i, v in enumerate(nodata_values)], axis=0)
    assert ((values != nodata) == scene_valid).all()
    report = out["evaluate:Evaluation report"].read_text()
    assert "data:image/png;base64" in report and "Mean IoU" in report
    polys = ogr.Open(str(out["polygons:Land-cover polygons"]))  # held while its layer is used
    assert polys.GetLayer(0).GetFeatureCount() > 0


def test_points_to_landcover_model_skips_evaluation_without_reference(tmp_path):
    from conftest import sample_file

    result = qgis_process_json(
        str(MODELS / "points_to_landcover.model3"),
        {
            "scene": _nc_scene(tmp_path),
            "points": sample_file("landsat96_points.shp"),
            "class_field": "id",
            "training_minutes": 0.1,
            "superpixel_size": 10,
            "tile_size": 64,
            "train:Model": tmp_path / "model.pt",
            "segment:Land-cover map": tmp_path / "map.tif",
            "polygons:Land-cover polygons": tmp_path / "polygons.gpkg",
        },
        timeout=900,
    )
    assert "evaluate:Evaluation report" not in result["results"]
    assert (tmp_path / "map.tif").exists() and (tmp_path / "polygons.gpkg").exists()
    assert (tmp_path / "model.pt").exists()

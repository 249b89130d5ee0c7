"""Pseudo-label From Points through QGIS Processing and bin/qgis_process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import qgis_process_json, run_alg, sample_file, save_dialog_screenshot, write_raster
from osgeo import gdal, ogr, osr
from scenes import GT  # EPSG:32633, the conftest default

ALG = "pseudolabelfrompoints"


def scene(tmp_path, n: int = 120) -> str:
    """Four flat quadrants of distinct colours (3 bands, a little noise)."""
    rng = np.random.default_rng(0)
    img = np.zeros((3, n, n), dtype=np.float32)
    h = n // 2
    for (qy, qx), rgb in {(0, 0): (10, 200, 30), (0, 1): (200, 30, 10),
                          (1, 0): (30, 10, 200), (1, 1): (120, 120, 120)}.items():  # fmt: skip
        img[:, qy * h : (qy + 1) * h, qx * h : (qx + 1) * h] = np.array(rgb)[:, None, None]
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    return write_raster(tmp_path / "scene.tif", img, geotransform=GT)


def points_file(path, pts, field_type=ogr.OFTString, epsg: int | None = 4326) -> str:
    """A GeoPackage of points given as (col, row, value) on the scene grid, in ``epsg``."""
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32633)
    utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    srs = None
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        to_dst = osr.CoordinateTransformation(utm, srs)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("points", srs, ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("kind", field_type))
    for col, row, value in pts:
        x, y = GT[0] + (col + 0.5) * GT[1], GT[3] + (row + 0.5) * GT[5]
        if srs is not None:
            x, y, _ = to_dst.TransformPoint(x, y)
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x!r} {y!r})"))
        if value is not None:
            f.SetField("kind", value)
        layer.CreateFeature(f)
    ds = None
    return str(path)


def test_text_classes_from_points_in_another_crs(provider, tmp_path):
    src = scene(tmp_path)
    pts = [(15, 15, "water"), (40, 20, "water"), (90, 30, "forest"), (100, 100, None)]
    pts += [(20, 90, "forest"), (20, 90, "water")]  # a tie: that superpixel stays unlabelled
    pts += [(500, 500, "forest")]  # outside the raster
    gpkg = points_file(tmp_path / "pts.gpkg", pts)  # WGS 84 degrees, raster in UTM 33N
    out, sp = str(tmp_path / "labels.tif"), str(tmp_path / "sp.tif")
    params = {"INPUT": src, "POINTS": gpkg, "CLASS_FIELD": "kind", "METHOD": "slic",
              "SUPERPIXEL_SIZE": 10, "OUTPUT": out, "OUTPUT_SUPERPIXELS": sp}  # fmt: skip
    res = run_alg(ALG, params)
    assert res["OUTPUT"] == out and res["OUTPUT_SUPERPIXELS"] == sp
    assert res["POINTS_USED"] == 5 and res["POINTS_OUTSIDE"] == 1 and res["POINTS_ON_NODATA"] == 0
    assert res["CONFLICTING_SUPERPIXELS"] == 1
    ds = gdal.Open(out)
    assert ds.GetGeoTransform() == GT and "32633" in ds.GetProjection()  # loads the .aux.xml
    band = ds.GetRasterBand(1)
    lab = band.ReadAsArray()
    # text classes sorted and numbered from 1, names embedded, 0 = unlabelled
    assert band.GetNoDataValue() == 0
    assert band.GetCategoryNames()[:3] == ["unlabelled", "forest", "water"]
    assert band.GetRasterColorTable().GetColorEntry(0)[3] == 0  # unlabelled is transparent
    assert lab[15, 15] == lab[20, 40] == 2 and lab[30, 90] == 1
    assert set(np.unique(lab[:60, :60])) == {0, 2} and set(np.unique(lab[:60, 60:])) == {0, 1}
    assert (lab[60:] == 0).all()  # the tie and the class-less point label nothing
    summary = {c["name"]: c for c in json.loads(res["CLASS_SUMMARY"])}
    assert summary["water"]["value"] == 2 and summary["water"]["points"] == 3
    assert summary["water"]["pixels"] == (lab == 2).sum() > 50
    assert res["LABELLED_FRACTION"] == pytest.approx((lab > 0).mean())
    ids = gdal.Open(sp).ReadAsArray()
    assert ids.dtype == np.uint32 and ids[15, 15] > 0
    assert ((lab == 1) == (ids == ids[30, 90])).all()  # one superpixel, one label


def test_nc_landsat_points_agree_with_strata(provider, tmp_path):
    files = [str(sample_file(f"lsat7_2000_{b}.tif")) for b in (10, 20, 30, 40, 50)]
    vrt = str(tmp_path / "nc.vrt")
    gdal.BuildVRT(vrt, files, separate=True).FlushCache()
    out = str(tmp_path / "nc_labels.tif")
    res = run_alg(ALG, {"INPUT": vrt, "POINTS": str(sample_file("landsat96_points.shp")),
                        "CLASS_FIELD": "id", "METHOD": "watershed", "SUPERPIXEL_SIZE": 10,
                        "OUTPUT": out})  # fmt: skip
    lab = gdal.Open(out).ReadAsArray()
    strata = gdal.Open(str(sample_file("strata.tif"))).ReadAsArray()
    m = lab > 0
    # chance agreement 0.35, majority class 0.50; measured 0.71 (watershed, size 10)
    assert (lab[m] == strata[m]).mean() > 0.64
    assert res["POINTS_OUTSIDE"] == 115 and res["POINTS_USED"] + res["POINTS_ON_NODATA"] == 885
    ds = gdal.Open(out)
    ds.GetGeoTransform()  # GDAL 3.6 loads the .aux.xml (category names) only after this
    names = ds.GetRasterBand(1).GetCategoryNames()
    assert names[0] == "unlabelled" and names[5] == "5"


def test_qgis_process_integer_classes(tmp_path):
    src = scene(tmp_path)
    gpkg = points_file(tmp_path / "p.gpkg", [(15, 15, 0), (90, 30, 3), (90, 90, 3)],
                       field_type=ogr.OFTInteger, epsg=32633)  # fmt: skip
    out = str(tmp_path / "labels.tif")
    res = qgis_process_json(ALG, {"INPUT": src, "POINTS": gpkg, "CLASS_FIELD": "kind",
                                  "METHOD": "felzenszwalb", "SUPERPIXEL_SIZE": 10,
                                  "OUTPUT": out})  # fmt: skip
    results = res["results"]
    assert results["POINTS_USED"] == 3 and results["POINTS_OUTSIDE"] == 0
    ds = gdal.Open(out)
    band = ds.GetRasterBand(1)
    lab = band.ReadAsArray()
    # class 0 present: unlabelled is 255
    assert band.GetNoDataValue() == 255
    assert lab[15, 15] == 0 and lab[30, 90] == 3 and lab[90, 90] == 3
    assert set(np.unique(lab[:60, :60])) == {0, 255}


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot(f"mapseg:{ALG}", qgis_iface)
    assert path.exists() and path.stat().st_size > 5000


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_field", "no field 'nope'"),
        ("size_zero", "SUPERPIXEL_SIZE"),
        # QGIS may give a CRS-less layer a default CRS (then reprojection fails) or none
        ("no_crs", "CRS|coordinate reference system"),
        ("all_outside", "falls on the raster"),
        ("no_values", "holds no values"),
    ],
)
def test_bad_inputs_raise_and_leave_no_file(provider, tmp_path, case, match):
    from qgis.core import QgsProcessingException

    src = scene(tmp_path, 60)
    pts = [(10, 10, "a"), (40, 40, "b")]
    params = {"CLASS_FIELD": "kind", "SUPERPIXEL_SIZE": 10}
    if case == "missing_field":
        params["CLASS_FIELD"] = "nope"
    elif case == "size_zero":
        params["SUPERPIXEL_SIZE"] = 0
    elif case == "all_outside":
        pts = [(900, 900, "a")]
    elif case == "no_values":
        pts = [(10, 10, None), (40, 40, None)]
    gpkg = points_file(tmp_path / "p.gpkg", pts, epsg=None if case == "no_crs" else 4326)
    out = tmp_path / "labels.tif"
    params.update(INPUT=src, POINTS=gpkg, OUTPUT=str(out))
    with pytest.raises(QgsProcessingException, match=match):
        run_alg(ALG, params)
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if "labels" in f]  # no partial file either

"""core.polygonize without QGIS: exact areas, connectivity, sieve, dissolve, bad inputs."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from osgeo import ogr
from scenes import blobby_classes
from scipy import ndimage

from mapseg.core.errors import CanceledError, MapSegError
from mapseg.core.progress import Reporter
from mapseg.core.vectorize.polygonize import parse_ignore_values, polygonize_classes

COLORS = {1: (200, 0, 0), 2: (0, 150, 0), 3: (0, 0, 255)}
NAMES = ["", "urban", "forest", "water"]


def classes(rows=30, cols=40, seed=1) -> np.ndarray:
    """Blobby classes 1..3 with some speckle: many patches, holes and diagonal contacts."""
    return blobby_classes(rows, cols, 3, 5, 0.08, seed)


def read(path):
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    rows = []
    for f in layer:
        g = f.GetGeometryRef()
        rows.append(
            {
                "class": f["class"],
                "name": f["name"],
                "area": f["area"],
                "perimeter": f["perimeter"],
                "geom_area": g.GetArea(),
                "valid": g.IsValid(),
                "type": ogr.GT_Flatten(g.GetGeometryType()),
                "points": sum(
                    g.GetGeometryRef(i).GetPointCount() for i in range(g.GetGeometryCount())
                ),
            }
        )
    return rows


def per_class(rows, key="area"):
    out = {}
    for r in rows:
        out[r["class"]] = out.get(r["class"], 0.0) + r[key]
    return out


def n_patches(arr, value, eight=False):
    structure = np.ones((3, 3)) if eight else None
    return ndimage.label(arr == value, structure=structure)[1]


@pytest.mark.parametrize("eight", [False, True])
def test_areas_and_patches_are_exact(tmp_raster, tmp_path, eight):
    arr = classes()
    src = tmp_raster(arr, color_table=COLORS, category_names=NAMES)
    res = polygonize_classes(src, str(tmp_path / "out.gpkg"), eight_connected=eight)
    rows = read(res.path)
    assert all(r["valid"] or eight for r in rows)
    for value in (1, 2, 3):
        got = [r for r in rows if r["class"] == value]
        assert len(got) == n_patches(arr, value, eight)
        assert sum(r["area"] for r in got) == pytest.approx((arr == value).sum() * 100.0)
        assert {r["name"] for r in got} == {NAMES[value]}
    # perimeter of every polygon: pixel edges on its boundary, 10 m each (holes included)
    total_edges = sum(r["perimeter"] for r in rows) / 10.0
    padded = np.pad(arr.astype(int), 1, constant_values=-1)
    edges = (np.diff(padded, axis=0) != 0)[:, 1:-1].sum() + (np.diff(padded, axis=1) != 0)[
        1:-1, :
    ].sum()
    outer = 2 * (arr.shape[0] + arr.shape[1])
    assert total_edges == pytest.approx(2 * edges - outer)  # inner edges belong to two polygons
    assert res.colors == {k: tuple(v) + (255,) for k, v in COLORS.items()}
    assert res.names == {1: "urban", 2: "forest", 3: "water"}
    assert res.features == len(rows)


def test_rotated_geotransform(tmp_raster, tmp_path):
    arr = classes(20, 25, seed=3)
    gt = (1000.0, 8.0, 3.0, 5000.0, 2.0, -9.0)  # rotated and sheared: pixel area 78
    src = tmp_raster(arr, geotransform=gt)
    rows = read(polygonize_classes(src, str(tmp_path / "rot.gpkg")).path)
    areas = per_class(rows)
    for value in (1, 2, 3):
        assert areas[value] == pytest.approx((arr == value).sum() * 78.0)
    assert sum(r["geom_area"] for r in rows) == pytest.approx(arr.size * 78.0)


def _zone(lat1, lat2, dlon, a=6378137.0, inv_f=298.257223563):
    f = 1 / inv_f
    e2 = f * (2 - f)
    e = math.sqrt(e2)

    def g(lat):
        s = math.sin(math.radians(lat))
        return s / (1 - e2 * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    return a * a * (1 - e2) / 2 * abs(g(lat2) - g(lat1)) * math.radians(dlon)


def test_geographic_areas_are_ellipsoidal_square_metres(tmp_raster, tmp_path):
    arr = classes(30, 40, seed=5)
    gt = (10.0, 0.01, 0.0, 60.0, 0.0, -0.01)
    src = tmp_raster(arr, geotransform=gt, epsg=4326)
    res = polygonize_classes(src, str(tmp_path / "geo.gpkg"))
    assert res.area_unit == "m²"
    areas = per_class(read(res.path))
    for value in (1, 2, 3):
        expected = sum(
            (arr[r] == value).sum() * _zone(60 - 0.01 * (r + 1), 60 - 0.01 * r, 0.01)
            for r in range(arr.shape[0])
        )
        assert areas[value] == pytest.approx(expected, rel=1e-9)
        assert areas[value] > 1e5  # square metres, not square degrees


def test_ignore_values_and_nodata(tmp_raster, tmp_path):
    arr = classes()
    arr[:3, :] = 9  # nodata stripe
    src = tmp_raster(arr, nodata=9)
    res = polygonize_classes(src, str(tmp_path / "ign.gpkg"), ignore_values="2")
    areas = per_class(read(res.path))
    assert set(areas) == {1, 3}
    assert areas[1] == pytest.approx((arr == 1).sum() * 100.0)
    assert areas[3] == pytest.approx((arr == 3).sum() * 100.0)
    # nodata alone, no scan: GDAL's own mask band
    areas = per_class(read(polygonize_classes(src, str(tmp_path / "nd.gpkg")).path))
    assert set(areas) == {1, 2, 3} and sum(areas.values()) == pytest.approx((arr != 9).sum() * 100)


def test_min_area_merges_small_patches(tmp_raster, tmp_path):
    arr = np.ones((12, 12), dtype=np.uint8)
    arr[:, 6:] = 2
    arr[2:4, 2] = 3  # 2-pixel patch inside class 1
    arr[8, 9] = 3  # 1-pixel patch inside class 2
    src = tmp_raster(arr)
    kept = read(polygonize_classes(src, str(tmp_path / "k.gpkg"), min_area=200.0).path)
    # 200 m² = 2 pixels: only the 1-pixel patch is smaller
    assert per_class(kept) == pytest.approx({1: 7200 - 200, 2: 7200, 3: 200})
    merged = read(polygonize_classes(src, str(tmp_path / "m.gpkg"), min_area=250.0).path)
    assert per_class(merged) == pytest.approx({1: 7200, 2: 7200})
    assert len(merged) == 2


def test_dissolve_one_multipolygon_per_class(tmp_raster, tmp_path):
    arr = classes()
    src = tmp_raster(arr, category_names=NAMES)
    res = polygonize_classes(src, str(tmp_path / "d.shp"), dissolve=True)
    rows = read(res.path)
    assert sorted(r["class"] for r in rows) == [1, 2, 3]
    for r in rows:
        assert r["type"] in (ogr.wkbMultiPolygon, ogr.wkbPolygon)  # shapefile: polygon
        assert r["area"] == pytest.approx((arr == r["class"]).sum() * 100.0)
        assert r["geom_area"] == pytest.approx(r["area"])
        assert r["name"] == NAMES[r["class"]]
    assert res.classes[1][0] == n_patches(arr, 1)


def test_simplify_reduces_vertices_and_keeps_valid(tmp_path, tmp_raster):
    yy, xx = np.mgrid[:60, :60]
    arr = np.where((xx - 30) ** 2 + (yy - 30) ** 2 < 400, 2, 1).astype(np.uint8)
    src = tmp_raster(arr)
    plain = read(polygonize_classes(src, str(tmp_path / "p.gpkg")).path)
    simple = read(polygonize_classes(src, str(tmp_path / "s.fgb"), simplify=15.0).path)
    disc = [r for r in simple if r["class"] == 2][0]
    assert disc["points"] < [r for r in plain if r["class"] == 2][0]["points"] / 3
    assert all(r["valid"] for r in simple)
    assert disc["area"] == pytest.approx(math.pi * 200**2, rel=0.05)
    assert disc["area"] == pytest.approx(disc["geom_area"])


def test_float_rasters(tmp_raster, tmp_path):
    arr = classes().astype(np.float32)
    good = tmp_raster(arr, name="f.tif")
    assert per_class(read(polygonize_classes(good, str(tmp_path / "f.gpkg")).path))[
        2
    ] == pytest.approx((arr == 2).sum() * 100.0)
    arr[5, 5] = 1.5
    bad = tmp_raster(arr, name="bad.tif")
    with pytest.raises(MapSegError, match="not whole classes"):
        polygonize_classes(bad, str(tmp_path / "bad.gpkg"))
    assert not (tmp_path / "bad.gpkg").exists()


def test_empty_rasters_are_errors(tmp_raster, tmp_path):
    nodata = tmp_raster(np.full((10, 10), 7, np.uint8), name="nd.tif", nodata=7)
    with pytest.raises(MapSegError, match="no pixels to polygonize"):
        polygonize_classes(nodata, str(tmp_path / "a.gpkg"))
    ignored = tmp_raster(np.zeros((10, 10), np.uint8), name="ig.tif")
    with pytest.raises(MapSegError, match="no pixels to polygonize"):
        polygonize_classes(ignored, str(tmp_path / "b.gpkg"), ignore_values="0")
    assert sorted(os.listdir(tmp_path)) == ["ig.tif", "nd.tif"]


def test_bad_inputs_leave_nothing(tmp_raster, tmp_path):
    src = tmp_raster(classes())
    out = str(tmp_path / "o.gpkg")
    with pytest.raises(MapSegError, match="Band 2 does not exist"):
        polygonize_classes(src, out, band=2)
    with pytest.raises(MapSegError, match="IGNORE_VALUES"):
        polygonize_classes(src, out, ignore_values="0, x")
    with pytest.raises(MapSegError, match="same file as the input"):
        polygonize_classes(src, src)
    with pytest.raises(MapSegError, match="not supported"):
        polygonize_classes(src, str(tmp_path / "o.csv"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(MapSegError, match="not writable"):
            polygonize_classes(src, str(locked / "o.gpkg"))
    assert sorted(p for p in os.listdir(tmp_path) if p != "locked") == ["input.tif"]


def test_parse_ignore_values():
    assert parse_ignore_values(" 255, 0;3 0 ") == [0, 3, 255]
    assert parse_ignore_values("") == [] and parse_ignore_values("-1") == [-1]
    with pytest.raises(MapSegError, match="'1.5' is not a whole number"):
        parse_ignore_values("1.5")


@pytest.mark.parametrize("kwargs", [{}, {"min_area": 300.0, "ignore_values": "3"}])
def test_progress_and_cancel(tmp_raster, tmp_path, kwargs):
    src = tmp_raster(classes(200, 200))
    seen = []
    polygonize_classes(
        src, str(tmp_path / "ok.gpkg"), reporter=Reporter(progress=seen.append), **kwargs
    )
    assert seen[-1] == pytest.approx(100.0) and len(set(seen)) > 5
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
    for stop in (5.0, 50.0, 90.0):
        state = {"p": 0.0, "stop": stop}
        rep = Reporter(
            progress=lambda p, s=state: s.update(p=p),
            is_canceled=lambda s=state: s["p"] > s["stop"],
        )
        with pytest.raises(CanceledError):
            polygonize_classes(src, str(tmp_path / "c.gpkg"), reporter=rep, **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["input.tif", "ok.gpkg"]

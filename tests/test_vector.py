"""core.vector: transactional vector files renamed into place, and geodesic measures."""

from __future__ import annotations

import math
import os

import pytest
from osgeo import ogr, osr

from mapseg.core.errors import MapSegError
from mapseg.core.io.vector import VectorWriter, measure, split_destination

FIELDS = [("class", ogr.OFTInteger), ("name", ogr.OFTString), ("area", ogr.OFTReal)]


def srs_of(epsg: int) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def square(x0, y0, size, hole=None):
    wkt = f"({x0} {y0},{x0 + size} {y0},{x0 + size} {y0 + size},{x0} {y0 + size},{x0} {y0})"
    if hole:
        hx, hy, hs = hole
        wkt += f",({hx} {hy},{hx} {hy + hs},{hx + hs} {hy + hs},{hx + hs} {hy},{hx} {hy})"
    return ogr.CreateGeometryFromWkt(f"POLYGON({wkt})")


@pytest.mark.parametrize("ext", ["gpkg", "shp", "geojson", "fgb"])
def test_writer_commits_every_format(tmp_path, ext):
    dest = tmp_path / f"out.{ext}"
    with VectorWriter(str(dest), srs_of(32633).ExportToWkt(), ogr.wkbPolygon, FIELDS) as w:
        w.add(square(0, 0, 10), {"class": 3, "name": "forêt", "area": 100.0})
        w.add(square(20, 0, 5), {"class": 7, "name": None, "area": 25.0})
        assert not dest.exists()  # written beside the destination until commit
        assert w.commit() == str(dest)
    ds = ogr.Open(str(dest))
    layer = ds.GetLayer(0)
    assert layer.GetFeatureCount() == 2
    rows = sorted((f["class"], f["name"], f["area"], f.GetGeometryRef().GetArea()) for f in layer)
    assert rows == [(3, "forêt", 100.0, 100.0), (7, None, 25.0, 25.0)]
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32633"
    if ext == "gpkg":
        assert layer.GetName() == "out"
    leftovers = [p for p in os.listdir(tmp_path) if "partial" in p]
    assert leftovers == []


def test_exception_discards_and_keeps_old_file(tmp_path):
    dest = tmp_path / "keep.shp"
    with VectorWriter(str(dest), None, ogr.wkbPolygon, FIELDS) as w:
        w.add(square(0, 0, 1), {"class": 1})
        w.commit()
    with pytest.raises(ValueError), VectorWriter(str(dest), None, ogr.wkbPolygon, FIELDS) as w:
        w.add(square(0, 0, 2), {"class": 2})
        raise ValueError("boom")
    assert sorted(os.listdir(tmp_path)) == ["keep.cpg", "keep.dbf", "keep.shp", "keep.shx"]
    ds = ogr.Open(str(dest))
    assert [f["class"] for f in ds.GetLayer(0)] == [1]


def test_commit_replaces_and_drops_stale_sidecars(tmp_path):
    dest = tmp_path / "o.shp"
    with VectorWriter(str(dest), srs_of(4326).ExportToWkt(), ogr.wkbPolygon, FIELDS) as w:
        w.commit()
    (tmp_path / "o.qix").write_bytes(b"stale index")
    with VectorWriter(str(dest), None, ogr.wkbPolygon, FIELDS) as w:
        w.add(square(0, 0, 1), {"class": 5})
        w.commit()
    names = sorted(os.listdir(tmp_path))
    assert "o.qix" not in names and "o.prj" not in names  # the new file has no CRS
    ds = ogr.Open(str(dest))
    assert [f["class"] for f in ds.GetLayer(0)] == [5]


def test_bulk_layer_and_bad_extension(tmp_path):
    with pytest.raises(MapSegError, match="extension '.csv' is not supported"):
        VectorWriter(str(tmp_path / "x.csv"), None, ogr.wkbPolygon, FIELDS)
    assert os.listdir(tmp_path) == []
    with VectorWriter(str(tmp_path / "b.gpkg"), None, ogr.wkbPolygon, FIELDS, "named") as w:
        for i in range(50):
            f = ogr.Feature(w.layer.GetLayerDefn())
            f.SetField("class", i)
            w.layer.CreateFeature(f)
        w.commit()
    ds = ogr.Open(str(tmp_path / "b.gpkg"))
    assert ds.GetLayerByName("named").GetFeatureCount() == 50


def test_split_destination():
    assert split_destination("ogr:dbname='/a/b.gpkg' table=\"lyr\" (geom)") == ("/a/b.gpkg", "lyr")
    assert split_destination("/a/b.gpkg") == ("/a/b.gpkg", None)


def test_measure_planar_with_hole():
    area, perimeter = measure(square(0, 0, 10, hole=(2, 2, 3)), srs_of(32633))
    assert area == pytest.approx(100 - 9)
    assert perimeter == pytest.approx(40 + 12)
    multi = ogr.ForceToMultiPolygon(square(0, 0, 10))
    multi.AddGeometry(square(20, 20, 1))
    assert measure(multi, None) == pytest.approx((101.0, 44.0))


def _zone_area(a, inv_f, lat1, lat2, dlon):
    """Closed-form ellipsoidal area of a lat/lon rectangle (degrees), independent of core."""
    f = 1 / inv_f
    e2 = f * (2 - f)
    e = math.sqrt(e2)
    b2 = a * a * (1 - e2)

    def g(lat):
        s = math.sin(math.radians(lat))
        return s / (1 - e2 * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    return b2 / 2 * (g(lat2) - g(lat1)) * math.radians(dlon)


@pytest.mark.parametrize("lat", [0.0, 45.0, -70.0])
def test_measure_geographic_is_ellipsoidal_metres(lat):
    srs = srs_of(4326)
    a, inv_f = srs.GetSemiMajor(), srs.GetInvFlattening()
    cell = square(10.0, lat, 0.5)
    area, perimeter = measure(cell, srs)
    assert area == pytest.approx(_zone_area(a, inv_f, lat, lat + 0.5, 0.5), rel=1e-9)
    # Perimeter: two meridian arcs plus two parallel arcs, from textbook radii.
    e2 = (1 / inv_f) * (2 - 1 / inv_f)

    def parallel(phi):
        p = math.radians(phi)
        return a * math.cos(p) / math.sqrt(1 - e2 * math.sin(p) ** 2) * math.radians(0.5)

    def meridian(phi1, phi2, n=64):  # integral of M(phi) dphi, Simpson's rule
        h = math.radians(phi2 - phi1) / n
        m = [
            a * (1 - e2) / (1 - e2 * math.sin(math.radians(phi1) + i * h) ** 2) ** 1.5
            for i in range(n + 1)
        ]
        return h / 3 * (m[0] + m[-1] + 4 * sum(m[1:-1:2]) + 2 * sum(m[2:-1:2]))

    expected = parallel(lat) + parallel(lat + 0.5) + 2 * meridian(lat, lat + 0.5)
    assert perimeter == pytest.approx(expected, rel=1e-7)
    # with a hole: area subtracts, perimeter adds
    holed = square(10.0, lat, 0.5, hole=(10.1, lat + 0.1, 0.2))
    h_area = _zone_area(a, inv_f, lat + 0.1, lat + 0.3, 0.2)
    assert measure(holed, srs)[0] == pytest.approx(area - h_area, rel=1e-9)
    assert measure(holed, srs)[1] > perimeter * 1.3


def test_measure_uses_the_crs_ellipsoid():
    wgs = measure(square(0, 0, 1), srs_of(4326))
    sphere = osr.SpatialReference()
    sphere.SetGeogCS("sphere", "sphere", "sphere", 6371000.0, 0.0)
    sphere.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    on_sphere = measure(square(0, 0, 1), sphere)
    r = 6371000.0
    assert on_sphere[0] == pytest.approx(r * r * math.radians(1) * math.sin(math.radians(1)))
    assert on_sphere[0] != pytest.approx(wgs[0], rel=1e-3)

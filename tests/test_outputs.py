"""core.io.outputs and core.io.gpkg: GeoPackage layers added or replaced with every other layer
kept, and output sets that land together or not at all (real GDAL/OGR files, no QGIS)."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from mapseg.core.errors import CanceledError, MapSegError
from mapseg.core.io.outputs import OutputSet
from mapseg.core.io.vector import VectorWriter, split_destination
from mapseg.core.progress import Reporter

FIELDS = [("class", ogr.OFTInteger), ("name", ogr.OFTString)]


def utm_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return srs.ExportToWkt()


def make_gpkg(path, layers: dict) -> None:
    """A GeoPackage with ``{name: feature count}`` point layers of numbered rows."""
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    for name, count in layers.items():
        layer = ds.CreateLayer(name, srs, ogr.wkbPoint)
        layer.CreateField(ogr.FieldDefn("v", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("label", ogr.OFTString))
        ds.StartTransaction()
        for i in range(count):
            f = ogr.Feature(layer.GetLayerDefn())
            f.SetField("v", i * 7)
            f.SetField("label", f"{name}-{i}")
            f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT({500000 + i} {4000000 - i})"))
            layer.CreateFeature(f)
        ds.CommitTransaction()
    ds = None


def layer_digest(path, name) -> tuple:
    """(feature count, SHA-256 of every row: fid, attributes and geometry WKB)."""
    ds = ogr.Open(str(path))
    layer = ds.GetLayerByName(name)
    digest = hashlib.sha256()
    count = 0
    for f in layer:
        count += 1
        digest.update(repr((f.GetFID(), f.items())).encode())
        digest.update(bytes(f.GetGeometryRef().ExportToIsoWkb()))
    return count, digest.hexdigest()


def layer_names(path) -> list:
    ds = ogr.Open(str(path))
    return sorted(ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount()))


def square(x0, y0, size):
    ring = f"{x0} {y0},{x0 + size} {y0},{x0 + size} {y0 + size},{x0} {y0 + size},{x0} {y0}"
    return ogr.CreateGeometryFromWkt(f"POLYGON(({ring}))")


def partials(folder) -> list:
    return sorted(p for p in os.listdir(folder) if ".partial" in p or ".backup" in p)


@pytest.fixture
def two_layer_gpkg(tmp_path):
    path = tmp_path / "project.gpkg"
    make_gpkg(path, {"roads": 10_000, "wells": 3})
    before = {name: layer_digest(path, name) for name in ("roads", "wells")}
    assert before["roads"][0] == 10_000
    return path, before


@pytest.mark.parametrize("form", ["ogr", "pipe"])
def test_new_layer_keeps_the_other_layers(two_layer_gpkg, form):
    path, before = two_layer_gpkg
    dest = (
        f"ogr:dbname='{path}' table=\"classes\" (geom)"
        if form == "ogr"
        else f"{path}|layername=classes"
    )
    with OutputSet() as outputs:
        out = outputs.vector(dest, utm_wkt(), ogr.wkbPolygon, FIELDS)
        for i in range(5):
            out.add(square(500000 + 10 * i, 4000000, 5), {"class": i, "name": f"c{i}"})
        uris = outputs.commit()
    assert uris == [f"{path}|layername=classes"]
    assert layer_names(path) == ["classes", "roads", "wells"]
    for name, digest in before.items():
        assert layer_digest(path, name) == digest
    ds = ogr.Open(str(path))
    rows = sorted((f["class"], f["name"]) for f in ds.GetLayerByName("classes"))
    assert rows == [(i, f"c{i}") for i in range(5)]
    assert partials(path.parent) == []


def test_replacing_a_layer_keeps_the_others(two_layer_gpkg):
    path, before = two_layer_gpkg
    with VectorWriter(str(path), utm_wkt(), ogr.wkbPolygon, FIELDS, "wells") as out:
        out.add(square(0, 0, 1), {"class": 9, "name": "new"})
        assert out.into_existing
        out.commit()
    assert layer_names(path) == ["roads", "wells"]
    assert layer_digest(path, "roads") == before["roads"]
    ds = ogr.Open(str(path))
    wells = ds.GetLayerByName("wells")
    assert [(f["class"], f["name"]) for f in wells] == [(9, "new")]
    assert wells.GetGeomType() == ogr.wkbPolygon
    assert partials(path.parent) == []


def test_plain_path_replaces_the_whole_file_as_qgis_does(two_layer_gpkg):
    path, _ = two_layer_gpkg
    with VectorWriter(str(path), None, ogr.wkbPolygon, FIELDS) as out:
        out.add(square(0, 0, 1), {"class": 1})
        out.commit()
    assert layer_names(path) == ["project"]


def test_failed_layer_write_leaves_the_geopackage_as_it_was(two_layer_gpkg):
    path, before = two_layer_gpkg
    raw = path.read_bytes()
    with pytest.raises(CanceledError), OutputSet() as outputs:
        out = outputs.vector(f"{path}|layername=wells", None, ogr.wkbPolygon, FIELDS)
        out.add(square(0, 0, 1), {"class": 1})
        raise CanceledError()
    assert path.read_bytes() == raw
    assert partials(path.parent) == []


def test_output_set_is_all_or_nothing(tmp_path, two_layer_gpkg):
    """An error after two outputs were written, or a failure while moving them into place,
    leaves every destination as it was and no new file."""
    gpkg, before = two_layer_gpkg
    old_tif = tmp_path / "depth.tif"
    old_tif.write_bytes(b"previous depth")
    blocker = tmp_path / "polygons.geojson"
    blocker.mkdir()  # a folder where a file should go: the last move fails
    snapshot = {p: (tmp_path / p).read_bytes() for p in ("depth.tif", "project.gpkg")}

    def write_all(outputs, vector_dest):
        r = outputs.raster(str(old_tif), 4, 3, gdal.GDT_Float32, nodata=-1.0)
        r.write(np.ones((3, 4), np.float32), 0, 0)
        outputs.style(r, "<qgis/>")
        v = outputs.vector(f"{gpkg}|layername=wells", None, ogr.wkbPolygon, FIELDS)
        v.add(square(0, 0, 1), {"class": 2})
        v2 = outputs.vector(vector_dest, None, ogr.wkbPolygon, FIELDS)
        v2.add(square(0, 0, 1), {"class": 3})

    with pytest.raises(RuntimeError, match="boom"), OutputSet() as outputs:
        write_all(outputs, str(tmp_path / "fresh.geojson"))
        raise RuntimeError("boom")
    with pytest.raises(MapSegError, match="no output was changed"), OutputSet() as outputs:
        write_all(outputs, str(blocker))
        outputs.commit()
    lock = sqlite3.connect(str(gpkg), timeout=0)
    lock.execute("BEGIN EXCLUSIVE")  # another program writing: the layer copy fails last
    try:
        with pytest.raises(MapSegError, match="no output was changed"), OutputSet() as outputs:
            write_all(outputs, str(tmp_path / "fresh.geojson"))
            outputs.commit()
    finally:
        lock.rollback()
        lock.close()
    for name, data in snapshot.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert sorted(os.listdir(tmp_path)) == ["depth.tif", "polygons.geojson", "project.gpkg"]
    assert layer_digest(gpkg, "wells") == before["wells"]

    with OutputSet() as outputs:
        write_all(outputs, str(tmp_path / "fresh.geojson"))
        outputs.commit(Reporter())
    assert gdal.Open(str(old_tif)).ReadAsArray().tolist() == [[1.0] * 4] * 3
    assert (tmp_path / "depth.qml").read_text() == "<qgis/>"
    assert layer_digest(gpkg, "roads") == before["roads"]
    assert partials(tmp_path) == []


def test_cancel_before_commit_discards(tmp_path):
    flag = []
    reporter = Reporter(is_canceled=lambda: bool(flag))
    with pytest.raises(CanceledError), OutputSet() as outputs:
        r = outputs.raster(str(tmp_path / "a.tif"), 2, 2, gdal.GDT_Byte)
        r.write(np.zeros((2, 2), np.uint8), 0, 0)
        flag.append(1)
        outputs.commit(reporter)
    assert os.listdir(tmp_path) == []


def test_same_destination_twice_is_refused(tmp_path):
    with OutputSet() as outputs:
        outputs.vector(f"{tmp_path / 'a.gpkg'}|layername=x", None, ogr.wkbPolygon, FIELDS)
        outputs.vector(f"{tmp_path / 'a.gpkg'}|layername=y", None, ogr.wkbPolygon, FIELDS)
        with pytest.raises(MapSegError, match="Two outputs"):
            outputs.vector(f"{tmp_path / 'a.gpkg'}|layername=x", None, ogr.wkbPolygon, FIELDS)
        outputs.commit()
    assert layer_names(tmp_path / "a.gpkg") == ["x", "y"]
    assert partials(tmp_path) == []


def test_split_destination_forms():
    assert split_destination("/a/b.gpkg|layername=lyr") == ("/a/b.gpkg", "lyr")
    assert split_destination("/a/b.gpkg|layername=lyr|geometrytype=Polygon") == (
        "/a/b.gpkg",
        "lyr",
    )


def test_writers_opened_elsewhere_join_a_set(tmp_path):
    from mapseg.core.io.raster import OutputRaster

    first = OutputRaster(str(tmp_path / "a.tif"), 2, 2, gdal.GDT_Byte)
    second = VectorWriter(str(tmp_path / "b.shp"), None, ogr.wkbPolygon, FIELDS)
    with pytest.raises(CanceledError), OutputSet() as outputs:
        assert outputs.add(first) is first and outputs.add(None) is None
        outputs.add(second)
        with pytest.raises(MapSegError, match="Two outputs"):
            outputs.add(first)
        raise CanceledError()
    assert os.listdir(tmp_path) == []

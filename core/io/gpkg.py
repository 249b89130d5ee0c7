"""GeoPackage specifics: replace one layer of an existing file, store a layer's default style.

A GeoPackage is a database that may hold many layers a user cares about. Writing MapSeg's layer
into it never rewrites the file: the layer is copied, inside one SQLite transaction, from a
scratch GeoPackage written beside it, so the other layers keep every row and a failure rolls the
destination back to what it was.

Default styles follow QGIS's GeoPackage styling extension: a row of the ``layer_styles`` table
with ``useAsDefault`` set, which QGIS applies whenever it opens the layer (browser, drag and drop,
``processing.run`` with load on completion).
"""

from __future__ import annotations

from osgeo import ogr

STYLE_TABLE = "layer_styles"
# The columns QGIS 3.22 creates (QgsOgrProviderMetadata::saveStyle), in its order.
_STYLE_FIELDS = (
    ("f_table_catalog", ogr.OFTString, 256),
    ("f_table_schema", ogr.OFTString, 256),
    ("f_table_name", ogr.OFTString, 256),
    ("f_geometry_column", ogr.OFTString, 256),
    ("styleName", ogr.OFTString, 30),
    ("styleQML", ogr.OFTString, 0),
    ("styleSLD", ogr.OFTString, 0),
    ("useAsDefault", ogr.OFTInteger, 0),
    ("description", ogr.OFTString, 0),
    ("owner", ogr.OFTString, 30),
    ("ui", ogr.OFTString, 30),
    ("update_time", ogr.OFTDateTime, 0),
)
STYLE_NAME = "MapSeg"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def layer_index(ds: ogr.DataSource, name: str) -> int:
    """Index of the layer called ``name`` (GeoPackage names compare case-insensitively)."""
    for i in range(ds.GetLayerCount()):
        if ds.GetLayer(i).GetName().lower() == name.lower():
            return i
    return -1


def _style_table(ds: ogr.DataSource) -> ogr.Layer:
    layer = ds.GetLayerByName(STYLE_TABLE)
    if layer is not None:
        return layer
    layer = ds.CreateLayer(STYLE_TABLE, None, ogr.wkbNone)
    for name, kind, width in _STYLE_FIELDS:
        fdef = ogr.FieldDefn(name, kind)
        if kind == ogr.OFTInteger and name == "useAsDefault":
            fdef.SetSubType(ogr.OFSTBoolean)
        if width:
            fdef.SetWidth(width)
        if name == "update_time":
            fdef.SetDefault("CURRENT_TIMESTAMP")
        layer.CreateField(fdef)
    return layer


def set_default_style(ds: ogr.DataSource, layer_name: str, qml: str) -> None:
    """Store ``qml`` as the default QGIS style of ``layer_name`` (replacing MapSeg's earlier
    one; other styles of that layer stay, no longer default)."""
    layer = ds.GetLayerByName(layer_name)
    geom_column = layer.GetGeometryColumn() if layer is not None else ""
    table = _style_table(ds)
    where = f"f_table_name = {_quote(layer_name)}"
    table.SetAttributeFilter(f"{where} AND styleName = {_quote(STYLE_NAME)}")
    stale = [f.GetFID() for f in table]
    for fid in stale:
        table.DeleteFeature(fid)
    table.SetAttributeFilter(f"{where} AND useAsDefault = 1")
    for feature in list(table):
        feature.SetField("useAsDefault", 0)
        table.SetFeature(feature)
    table.SetAttributeFilter(None)
    row = ogr.Feature(table.GetLayerDefn())
    values = {
        "f_table_catalog": "",
        "f_table_schema": "",
        "f_table_name": layer_name,
        "f_geometry_column": geom_column,
        "styleName": STYLE_NAME,
        "styleQML": qml,
        "styleSLD": "",
        "useAsDefault": 1,
        "description": "Written by MapSeg with the data",
        "owner": "",
        "ui": "",
    }
    for key, value in values.items():
        row.SetField(key, value)
    table.CreateFeature(row)


def drop_styles(ds: ogr.DataSource, layer_name: str) -> None:
    """Forget MapSeg's style of a layer that is being replaced."""
    table = ds.GetLayerByName(STYLE_TABLE)
    if table is None:
        return
    table.SetAttributeFilter(
        f"f_table_name = {_quote(layer_name)} AND styleName = {_quote(STYLE_NAME)}"
    )
    for fid in [f.GetFID() for f in table]:
        table.DeleteFeature(fid)
    table.SetAttributeFilter(None)


def replace_layer(ds: ogr.DataSource, source: ogr.Layer, name: str, qml: str | None) -> None:
    """Inside the caller's transaction: drop layer ``name`` if present, create it from
    ``source`` (CRS, geometry type, fields, features with their ids) and set its style."""
    index = layer_index(ds, name)
    if index >= 0:
        ds.DeleteLayer(index)
        drop_styles(ds, name)
    defn = source.GetLayerDefn()
    layer = ds.CreateLayer(name, source.GetSpatialRef(), source.GetGeomType())
    for i in range(defn.GetFieldCount()):
        layer.CreateField(defn.GetFieldDefn(i))
    out_defn = layer.GetLayerDefn()
    for feature in source:
        copy = ogr.Feature(out_defn)
        copy.SetFrom(feature)
        copy.SetFID(feature.GetFID())
        layer.CreateFeature(copy)
    if qml:
        set_default_style(ds, name, qml)

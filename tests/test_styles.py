"""core.io.styles: the QML the engine writes opens in real QGIS with the intended renderer and
legend (fresh QgsRasterLayer / QgsVectorLayer, default style loaded from the files)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_raster
from osgeo import gdal, ogr

from mapseg.core.io import styles
from mapseg.core.io.outputs import OutputSet

CLASSES = [
    {"value": 1, "name": "water", "color": [31, 120, 180]},
    {"value": 2, "name": "forest", "color": "#33a02c"},
    {"value": 5, "name": "bâti & <route>", "color": [227, 26, 28, 255]},
]
FIELDS = [("class", ogr.OFTInteger), ("label", ogr.OFTString), ("max_depth", ogr.OFTReal)]


def class_tif(path) -> str:
    arr = np.array([[1, 2, 5, 255], [5, 2, 1, 255]], np.uint8)
    # a full 256-entry colour table, as GDAL writes for any Byte GeoTIFF
    table = {i: (i, i, i) for i in range(256)}
    return write_raster(path, arr, nodata=255, color_table=table)


def raster_legend(path):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), "r", "gdal")
    assert layer.isValid()
    items = layer.renderer().legendSymbologyItems()
    return layer, [(label, color.getRgb()) for label, color in items]


def test_class_raster_legend_lists_exactly_the_classes(qgis_app, tmp_path):
    tif = class_tif(tmp_path / "classes.tif")
    _, before = raster_legend(tif)
    assert len(before) == 256  # what the issue describes: every colour-table entry
    qml = styles.write_class_raster_style(tif, CLASSES)
    assert qml == str(tmp_path / "classes.qml")
    layer, legend = raster_legend(tif)
    assert layer.renderer().type() == "paletted"
    assert legend == [
        ("water", (31, 120, 180, 255)),
        ("forest", (0x33, 0xA0, 0x2C, 255)),
        ("bâti & <route>", (227, 26, 28, 255)),
    ]
    assert layer.dataProvider().sourceNoDataValue(1) == 255  # nodata stays transparent


def test_ramp_over_the_real_range(qgis_app, tmp_path):
    arr = np.array([[0.0, 0.5, 2.5], [-1.0, 0.0, 1.25]], np.float32)
    tif = write_raster(tmp_path / "depth.tif", arr, nodata=-1.0)
    styles.write_style(tif, styles.ramp_style(0.0, 2.5, "blues", transparent_zero=True))
    layer, legend = raster_legend(tif)
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0.0, 2.5)
    shader = renderer.shader().rasterShaderFunction()
    items = shader.colorRampItemList()
    assert [i.value for i in items] == pytest.approx([0, 0.625, 1.25, 1.875, 2.5])
    assert items[0].color.getRgb()[:3] == (247, 251, 255)
    assert items[-1].color.getRgb()[:3] == (8, 48, 107)
    transparency = renderer.rasterTransparency()
    assert transparency.alphaValue(0.0) == 0 and transparency.alphaValue(1.0) == 255
    assert len(legend) == 5


def write_polygons(outputs, dest, qml):
    out = outputs.vector(dest, None, ogr.wkbPolygon, FIELDS)
    for i, value in enumerate((1, 2, 5, 2)):
        ring = f"{i} 0,{i + 1} 0,{i + 1} 1,{i} 1,{i} 0"
        geom = ogr.CreateGeometryFromWkt(f"POLYGON(({ring}))")
        out.add(geom, {"class": value, "label": f"mask {i}", "max_depth": 0.5 * i})
    outputs.style(out, qml)
    return out


@pytest.mark.parametrize("dest", ["c.gpkg", "c.shp", "c.geojson", "c.fgb", "p.gpkg|layername=c"])
def test_categorized_default_style_in_every_format(qgis_app, tmp_path, dest):
    from qgis.core import QgsVectorLayer

    if "|" in dest:  # a layer added to an existing GeoPackage
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "p.gpkg"))
        ds.CreateLayer("other", None, ogr.wkbPoint)
        ds = None
    with OutputSet() as outputs:
        write_polygons(outputs, str(tmp_path / dest), styles.categorized_style("class", CLASSES))
        (uri,) = outputs.commit()
    layer = QgsVectorLayer(uri, "c", "ogr")
    assert layer.isValid() and layer.featureCount() == 4
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class"
    cats = [(c.value(), c.label(), c.symbol().color().getRgb()) for c in renderer.categories()]
    assert [(int(v), label) for v, label, _ in cats] == [
        (1, "water"),
        (2, "forest"),
        (5, "bâti & <route>"),
    ]
    assert cats[0][2] == (31, 120, 180, 255)
    if dest.endswith(".gpkg"):
        assert not (tmp_path / "c.qml").exists()  # the style lives in the GeoPackage


def test_graduated_and_outline_styles(qgis_app, tmp_path):
    from qgis.core import QgsVectorLayer

    with OutputSet() as outputs:
        write_polygons(
            outputs, str(tmp_path / "g.gpkg"), styles.graduated_style("max_depth", 0, 1.5)
        )
        write_polygons(outputs, str(tmp_path / "o.geojson"), styles.outline_style("label"))
        graduated, outline = outputs.commit()
    layer = QgsVectorLayer(graduated, "g", "ogr")
    renderer = layer.renderer()
    assert renderer.type() == "graduatedSymbol" and renderer.classAttribute() == "max_depth"
    bounds = [b for r in renderer.ranges() for b in (r.lowerValue(), r.upperValue())]
    assert bounds == pytest.approx([b for k in range(5) for b in (0.3 * k, 0.3 * (k + 1))])
    layer = QgsVectorLayer(outline, "o", "ogr")
    assert layer.renderer().type() == "singleSymbol"
    symbol = layer.renderer().symbol()
    assert symbol.symbolLayer(0).brushStyle() == 0  # Qt.NoBrush: outlines only
    assert layer.labelsEnabled()
    assert layer.labeling().settings().fieldName == "label"


def test_styles_are_part_of_the_all_or_nothing_commit(tmp_path):
    with pytest.raises(RuntimeError), OutputSet() as outputs:
        r = outputs.raster(str(tmp_path / "a.tif"), 2, 2, gdal.GDT_Byte)
        outputs.style(r, styles.class_raster_style(CLASSES))
        write_polygons(outputs, str(tmp_path / "b.shp"), styles.categorized_style("class", CLASSES))
        raise RuntimeError("failed before commit")
    assert list(tmp_path.iterdir()) == []


def test_class_list_forms():
    assert styles.normalize_classes([(3, "x", "#010203"), {"value": 1, "name": None}]) == [
        (1, "1", styles._grey(1)),
        (3, "x", (1, 2, 3, 255)),
    ]

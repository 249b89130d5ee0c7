"""Segment With SAM through Processing and qgis_process, with a tiny random SAM checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import qgis_process_json, read_raster, run_alg, save_dialog_screenshot
from osgeo import gdal, ogr, osr
from scenes import GT

WINDOW_M = 256 * 10.0  # the tiny SAM sees 256 pixels; the raster has 10 m pixels


def to_map(col, row):
    return GT[0] + col * GT[1], GT[3] + row * GT[5]


def scene(bands=3, rows=300, cols=500, dtype=np.uint8, scale=1):
    rng = np.random.default_rng(3)
    arr = rng.integers(20, 60, (bands, rows, cols)).astype(dtype) * scale
    arr[:, 50:120, 60:160] = 200 * scale
    arr[:, 180:260, 320:460] = 120 * scale
    return arr


def write_vector(path, geoms, fields=(), epsg=32633, kind=ogr.wkbPoint):
    """``geoms``: list of (wkt, {field: value}); ``fields``: (name, ogr type) pairs."""
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    layer = ds.CreateLayer("prompts", srs, kind)
    for name, kind_ in fields:
        layer.CreateField(ogr.FieldDefn(name, kind_))
    for wkt, values in geoms:
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        for k, v in values.items():
            f.SetField(k, v)
        layer.CreateFeature(f)
    ds = None
    return str(path)


def point(col, row):
    x, y = to_map(col, row)
    return f"POINT ({x} {y})"


def features(path):
    ds = ogr.Open(str(path))
    layer = ds.GetLayer()
    out = [(f.items(), f.GetGeometryRef().Clone()) for f in layer]
    wkt = layer.GetSpatialRef().ExportToWkt() if layer.GetSpatialRef() else ""
    return out, wkt


def utm33():
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return srs


def near(geom, col, row, limit=WINDOW_M):
    """The mask lies inside the SAM window around the prompt at (col, row)."""
    x, y = to_map(col, row)
    xmin, xmax, ymin, ymax = geom.GetEnvelope()
    return xmin >= x - limit and xmax <= x + limit and ymin >= y - limit and ymax <= y + limit


class Log:
    def __new__(cls):
        from qgis.core import QgsProcessingFeedback

        fb = QgsProcessingFeedback()
        fb.lines = []
        fb.pushInfo = fb.lines.append
        fb.pushWarning = fb.lines.append
        return fb


def test_points_groups_labels_classes_and_mask_raster(
    provider, tmp_raster, tmp_path, tiny_sam_checkpoint
):
    src = tmp_raster(scene())
    fields = [("fg", ogr.OFTInteger), ("obj", ogr.OFTString), ("kind", ogr.OFTString)]
    prompts = write_vector(
        tmp_path / "p.gpkg",
        [
            (point(100, 80), {"fg": 1, "obj": "roof", "kind": "building"}),
            (point(120, 90), {"fg": 1, "obj": "roof", "kind": "building"}),
            (point(40, 200), {"fg": 0, "obj": "roof", "kind": "building"}),
            (point(400, 220), {"fg": 1, "kind": "field"}),  # NULL group: its own prompt
            (point(700, 100), {"fg": 1, "kind": "far"}),  # outside the raster
        ],
        fields,
    )
    out, mask = tmp_path / "sam.gpkg", tmp_path / "sam.tif"
    feedback = Log()
    result = run_alg(
        "segmentwithsam",
        {
            "INPUT": src,
            "PROMPTS": prompts,
            "LABEL_FIELD": "fg",
            "GROUP_FIELD": "obj",
            "CLASS_FIELD": "kind",
            "CHECKPOINT": str(tiny_sam_checkpoint),
            "OUTPUT": str(out),
            "OUTPUT_RASTER": str(mask),
        },
        feedback,
    )
    assert result["OUTPUT"] == str(out) and result["OUTPUT_RASTER"] == str(mask)
    log = "\n".join(feedback.lines)
    assert "Prompt 3 skipped" in log and "outside the raster" in log
    assert "3 prompt(s) in 2 window(s)" not in log  # 3 prompts, the far one skipped: 2 left
    assert "2 prompt(s) in 2 window(s)" in log and "2 image embedding(s)" in log
    assert "SAM custom" in log
    feats, wkt = features(out)
    assert osr.SpatialReference(wkt).IsSame(utm33())
    by_id = {items["prompt_id"]: (items, geom) for items, geom in feats}
    assert set(by_id) == {1, 2}
    items, geom = by_id[1]
    assert (items["group"], items["class"]) == ("roof", "building")
    assert near(geom, 110, 85)
    items, geom = by_id[2]
    assert items["group"] is None and items["class"] == "field" and near(geom, 400, 220)
    for items, geom in feats:
        assert -1.0 <= items["pred_iou"] <= 2.0 and 0.0 <= items["stability"] <= 1.0
        assert items["area"] == pytest.approx(geom.GetArea()) and items["area"] > 0
    # The mask raster: the input grid, prompt ids where the polygons are.
    ds = gdal.Open(str(mask))
    assert (ds.RasterXSize, ds.RasterYSize) == (500, 300)
    assert ds.GetGeoTransform() == GT and osr.SpatialReference(ds.GetProjection()).IsSame(utm33())
    assert ds.GetRasterBand(1).GetNoDataValue() == 0
    arr = ds.ReadAsArray()
    ds = None
    assert set(np.unique(arr)) <= {0, 1, 2}
    last = by_id[2][1]  # prompt 2 is burnt last: its pixels all hold 2
    assert (arr == 2).sum() * 100.0 == pytest.approx(last.GetArea(), rel=0.05)


def test_box_prompts_from_polygons_in_another_crs(
    provider, tmp_raster, tmp_path, tiny_sam_checkpoint
):
    src = tmp_raster(scene())
    to_wgs = osr.CoordinateTransformation(utm33(), _wgs84())
    polys = []
    for c0, r0, c1, r1, value in ((60, 50, 160, 120, 7), (320, 180, 460, 260, 9)):
        ring = [to_map(c0, r0), to_map(c1, r0), to_map(c1, r1), to_map(c0, r1), to_map(c0, r0)]
        lonlat = [to_wgs.TransformPoint(x, y)[:2] for x, y in ring]
        wkt = "POLYGON ((" + ", ".join(f"{a} {b}" for a, b in lonlat) + "))"
        polys.append((wkt, {"code": value}))
    prompts = write_vector(
        tmp_path / "boxes.gpkg", polys, [("code", ogr.OFTInteger)], 4326, ogr.wkbPolygon
    )
    out = tmp_path / "boxes_out.gpkg"
    feedback = Log()
    run_alg(
        "segmentwithsam",
        {
            "INPUT": src,
            "PROMPTS": prompts,
            "CLASS_FIELD": "code",
            "CHECKPOINT": str(tiny_sam_checkpoint),
            "OUTPUT": str(out),
        },
        feedback,
    )
    assert any("reprojected from EPSG:4326" in line for line in feedback.lines)
    feats, wkt = features(out)
    assert osr.SpatialReference(wkt).IsSame(utm33())  # the raster's CRS, not the prompts'
    assert sorted(items["class"] for items, _ in feats) == [7, 9]
    for items, geom in feats:
        assert isinstance(items["class"], int)
        col, row = (110, 85) if items["class"] == 7 else (390, 220)
        assert near(geom, col, row)


def _wgs84():
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def test_16bit_four_band_input_with_chosen_bands(
    provider, tmp_raster, tmp_path, tiny_sam_checkpoint
):
    src = tmp_raster(scene(bands=4, dtype=np.uint16, scale=20), nodata=0)
    prompts = write_vector(tmp_path / "p.gpkg", [(point(100, 80), {}), (point(350, 220), {})])
    out = tmp_path / "u16.gpkg"
    run_alg(
        "segmentwithsam",
        {
            "INPUT": src,
            "PROMPTS": prompts,
            "BANDS": [4, 3, 2],
            "CHECKPOINT": str(tiny_sam_checkpoint),
            "PROCESSING_PIXEL_SIZE": 20.0,
            "OUTPUT": str(out),
        },
    )
    feats, _ = features(out)
    assert sorted(items["prompt_id"] for items, _ in feats) == [1, 2]
    for items, geom in feats:
        col, row = (100, 80) if items["prompt_id"] == 1 else (350, 220)
        # At 20 m processing pixels the window spans 256 x 20 m; the raster bounds it anyway.
        assert near(geom, col, row, 2 * WINDOW_M)
        xmin, xmax, ymin, ymax = geom.GetEnvelope()
        assert xmin >= GT[0] and xmax <= GT[0] + 5000 and ymin >= GT[3] - 3000
        # 20 m processing pixels: vertices on a 20 m grid
        assert xmin % 20 == pytest.approx(0) and ymax % 20 == pytest.approx(0)


def test_qgis_process_subprocess(provider, tmp_raster, tmp_path, tiny_sam_checkpoint):
    src = tmp_raster(scene())
    prompts = write_vector(tmp_path / "p.gpkg", [(point(200, 150), {})])
    out = str(tmp_path / "cli.gpkg")
    result = qgis_process_json(
        "segmentwithsam",
        {"INPUT": src, "PROMPTS": prompts, "CHECKPOINT": str(tiny_sam_checkpoint), "OUTPUT": out},
    )
    assert result["results"]["OUTPUT"] == out
    feats, _ = features(out)
    assert len(feats) == 1 and feats[0][0]["prompt_id"] == 1 and near(feats[0][1], 200, 150)


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot("mapseg:segmentwithsam", qgis_iface)
    assert path.exists() and path.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("checkpoint", "match"),
    [
        ("missing.pth", "does not exist"),
        ("random.pth", "not a Segment Anything checkpoint"),
        ("model.pt", "MapSeg model file, not a Segment Anything"),
    ],
)
def test_bad_checkpoint_is_a_clear_error(provider, tmp_raster, tmp_path, checkpoint, match):
    import torch
    from qgis.core import QgsProcessingException

    src = tmp_raster(scene(rows=40, cols=40))
    prompts = write_vector(tmp_path / "p.gpkg", [(point(20, 20), {})])
    if checkpoint == "random.pth":
        torch.save({"weight": torch.randn(4, 4), "bias": torch.randn(4)}, tmp_path / checkpoint)
    if checkpoint == "model.pt":
        torch.save({"format": "mapseg-model", "version": 1, "meta": "{}"}, tmp_path / checkpoint)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(QgsProcessingException, match=match):
        run_alg(
            "segmentwithsam",
            {
                "INPUT": src,
                "PROMPTS": prompts,
                "CHECKPOINT": str(tmp_path / checkpoint),
                "OUTPUT": str(tmp_path / "o.gpkg"),
                "OUTPUT_RASTER": str(tmp_path / "o.tif"),
            },
        )
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_all_prompts_outside_is_a_clear_error(provider, tmp_raster, tmp_path, tiny_sam_checkpoint):
    from qgis.core import QgsProcessingException

    src = tmp_raster(scene(rows=40, cols=40))
    prompts = write_vector(tmp_path / "p.gpkg", [(point(100, 100), {})])
    with pytest.raises(QgsProcessingException, match="No prompt lies inside the raster"):
        run_alg(
            "segmentwithsam",
            {
                "INPUT": src,
                "PROMPTS": prompts,
                "CHECKPOINT": str(tiny_sam_checkpoint),
                "OUTPUT": str(tmp_path / "o.gpkg"),
            },
        )
    assert not (tmp_path / "o.gpkg").exists()
    assert read_raster(src).shape == (3, 40, 40)  # the input is untouched

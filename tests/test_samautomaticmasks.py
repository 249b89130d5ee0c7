"""SAM Automatic Masks through Processing and qgis_process, with a tiny random SAM checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CancelAfter, qgis_process_json, run_alg, save_dialog_screenshot
from osgeo import ogr, osr
from scenes import GT

from mapseg.core.progress import Reporter
from mapseg.core.sam.auto import automatic_masks, clip_to_data
from mapseg.core.sam.checkpoint import load_sam

FIELDS = ["mask_id", "pred_iou", "stability", "area", "windows"]
# Thresholds at 0: a random tiny SAM has no confident masks, and we want some to check.
LOOSE = {"POINTS_PER_SIDE": 4, "PRED_IOU_THRESH": 0.0, "STABILITY_THRESH": 0.0}


def scene(rows=300, cols=400):
    rng = np.random.default_rng(5)
    arr = rng.integers(20, 60, (3, rows, cols)).astype(np.uint8)
    arr[:, 40:140, 50:200] = (200, 180, 60)[0]
    arr[:, 150:280, 180:380] = 140
    return arr


def features(path):
    ds = ogr.Open(str(path))
    layer = ds.GetLayer()
    defn = layer.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    feats = [(f.items(), f.GetGeometryRef().Clone()) for f in layer]
    return names, feats, layer.GetSpatialRef().Clone()


def utm33():
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return srs


def test_masks_over_windows_are_georeferenced_with_scores(
    provider, tmp_raster, tmp_path, tiny_sam_checkpoint
):
    from qgis.core import QgsProcessingFeedback

    src = tmp_raster(scene())
    out = tmp_path / "masks.gpkg"
    feedback = QgsProcessingFeedback()
    progress = []
    feedback.progressChanged.connect(progress.append)
    result = run_alg(
        "samautomaticmasks",
        {"INPUT": src, "CHECKPOINT": str(tiny_sam_checkpoint), "OUTPUT": str(out), **LOOSE},
        feedback,
    )
    assert result["OUTPUT"] == str(out)
    names, feats, srs = features(out)
    assert names == FIELDS and srs.IsSame(utm33())
    assert feats, "the loose thresholds keep some masks"
    assert [items["mask_id"] for items, _ in feats] == list(range(1, len(feats) + 1))
    for items, geom in feats:
        xmin, xmax, ymin, ymax = geom.GetEnvelope()
        assert GT[0] <= xmin < xmax <= GT[0] + 4000 and GT[3] - 3000 <= ymin < ymax <= GT[3]
        assert xmin % 10 == pytest.approx(0) and ymax % 10 == pytest.approx(0)  # pixel edges
        assert items["area"] == pytest.approx(geom.GetArea()) and items["area"] >= 100
        assert 1 <= items["windows"] <= 4
    # 4 windows (2 x 2 of 256 px, overlap 64): progress climbs through each to 100.
    assert progress == sorted(progress) and progress[-1] == pytest.approx(100)
    assert len({int(p // 25) for p in progress}) >= 4

    # MIN_AREA drops the small ones only, after joining.
    areas = sorted(items["area"] for items, _ in feats)
    cut = areas[len(areas) // 2]
    small = tmp_path / "big_only.gpkg"
    params = {"INPUT": src, "CHECKPOINT": str(tiny_sam_checkpoint), "OUTPUT": str(small)}
    run_alg("samautomaticmasks", {**params, **LOOSE, "MIN_AREA": cut})
    _, big, _ = features(small)
    assert sorted(items["area"] for items, _ in big) == pytest.approx(
        [a for a in areas if a >= cut]
    )


def test_one_embedding_per_window_and_parts_joined(tmp_path, tiny_sam_checkpoint):
    from conftest import write_raster

    src = write_raster(tmp_path / "s.tif", scene())
    sam, _ = load_sam(str(tiny_sam_checkpoint))
    calls = []
    sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    log = []
    stats = automatic_masks(
        src,
        sam,
        str(tmp_path / "m.gpkg"),
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_thresh=0.0,
        overlap=64,
        reporter=Reporter(log=log.append),
    )
    assert stats["windows"] == 4 and len(calls) == 4
    # The seeded tiny SAM finds masks crossing window borders; the joins themselves are
    # checked on constructed masks in test_sam_merge.
    assert stats["merged"] >= 1 and stats["masks"] >= 1
    assert (
        stats["masks"] + stats["merged"] + stats["duplicates"] + stats["small"] == (stats["found"])
    )
    assert any("4 window(s)" in line for line in log)


def test_masks_stay_where_the_raster_holds_data(tmp_path, tiny_sam_checkpoint):
    """An RGBA mosaic's transparent part (alpha 0) is nodata: no mask reaches into it, and
    the black hole itself is not a mask. The same image without alpha gets masks there."""
    from conftest import write_raster
    from osgeo import gdal

    data = scene(200, 240)
    alpha = np.full((200, 240), 255, np.uint8)
    alpha[:, :100] = 0
    masked = write_raster(tmp_path / "rgba.tif", np.concatenate([data, alpha[None]]))
    ds = gdal.Open(masked, gdal.GA_Update)
    ds.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    plain = write_raster(tmp_path / "rgb.tif", data)
    sam, _ = load_sam(str(tiny_sam_checkpoint))
    loose = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_thresh": 0.0}
    west = {}
    for name, src in (("masked", masked), ("plain", plain)):
        out = tmp_path / f"{name}.gpkg"
        stats = automatic_masks(src, sam, str(out), **loose)
        _, feats, _ = features(out)
        assert len(feats) == stats["masks"] >= 1
        west[name] = min(geom.GetEnvelope()[0] for _, geom in feats)
        west[name + "_dropped"] = stats["nodata"]
    assert west["masked"] >= GT[0] + 100 * 10  # nothing west of column 100
    assert west["plain"] < GT[0] + 100 * 10 and west["plain_dropped"] == 0


def test_a_mask_mostly_over_nodata_is_the_hole_and_is_dropped():
    valid = np.ones((10, 10), bool)
    valid[:, :6] = False
    hole = np.zeros((10, 10), bool)
    hole[:, :7] = True  # the transparent part's outline, one column over the edge
    assert clip_to_data(hole, valid) is None
    roof = np.zeros((10, 10), bool)
    roof[2:5, 4:9] = True  # 6 of its 15 pixels over nodata: kept, clipped
    clipped = clip_to_data(roof, valid)
    assert clipped.sum() == 9 and not clipped[:, :6].any() and clipped[2:5, 6:9].all()


def test_cancel_within_a_window_leaves_no_file(provider, tmp_raster, tmp_path, tiny_sam_checkpoint):
    from qgis.core import QgsProcessingException

    src = tmp_raster(scene(200, 200))  # one window: the cancel must come from inside it
    out = tmp_path / "c.gpkg"
    params = {"INPUT": src, "CHECKPOINT": str(tiny_sam_checkpoint), "OUTPUT": str(out), **LOOSE}
    params.update(POINTS_PER_SIDE=8, POINTS_PER_BATCH=8)
    feedback = CancelAfter(40)
    progress = []
    feedback.progressChanged.connect(progress.append)
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_alg("samautomaticmasks", params, feedback)
    # 8 batches of 8 points in the only window: stopped between batches, well before its end.
    assert 40 <= progress[-1] < 60
    assert sorted(os.listdir(tmp_path)) == ["input.tif"]


def test_qgis_process_subprocess(provider, tmp_raster, tmp_path, tiny_sam_checkpoint):
    src = tmp_raster(scene(120, 150))
    out = str(tmp_path / "cli.gpkg")
    params = {"INPUT": src, "CHECKPOINT": str(tiny_sam_checkpoint), "OUTPUT": out, **LOOSE}
    result = qgis_process_json("samautomaticmasks", params)
    assert result["results"]["OUTPUT"] == out
    names, feats, srs = features(out)
    assert names == FIELDS and srs.IsSame(utm33())
    assert all(items["windows"] == 1 for items, _ in feats)  # one window covers it all


def test_dialog_screenshot(provider, qgis_iface):
    path = save_dialog_screenshot("mapseg:samautomaticmasks", qgis_iface)
    assert path.exists() and path.stat().st_size > 10_000


def test_bad_checkpoint_and_overlap(provider, tmp_raster, tmp_path, tiny_sam_checkpoint):
    from qgis.core import QgsProcessingException

    src = tmp_raster(scene(50, 50))
    out = str(tmp_path / "o.gpkg")
    with pytest.raises(QgsProcessingException, match="does not exist"):
        run_alg("samautomaticmasks", {"INPUT": src, "CHECKPOINT": "/no/sam.pth", "OUTPUT": out})
    params = {"INPUT": src, "CHECKPOINT": str(tiny_sam_checkpoint), "OUTPUT": out}
    with pytest.raises(QgsProcessingException, match="OVERLAP must be between 0 and 255"):
        run_alg("samautomaticmasks", {**params, "OVERLAP": 300})
    assert sorted(os.listdir(tmp_path)) == ["input.tif"]

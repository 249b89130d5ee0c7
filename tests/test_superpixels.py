"""The pseudo-label engine (core/superpixels.py) on real GDAL files, without QGIS."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import sample_file, write_raster
from osgeo import gdal, ogr
from scenes import GT

from mapseg.core.errors import MapSegError
from mapseg.core.labels import pseudolabel as spx


def xy(col: float, row: float):
    """Map coordinates of a pixel centre on the GT grid."""
    return GT[0] + (col + 0.5) * GT[1], GT[3] + (row + 0.5) * GT[5]


def quadrants(n: int = 120, seed: int = 0) -> np.ndarray:
    """3 bands, four flat quadrants of distinct colours plus a little noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((3, n, n), dtype=np.float32)
    h = n // 2
    colours = {
        (0, 0): (10, 200, 30),
        (0, 1): (200, 30, 10),
        (1, 0): (30, 10, 200),
        (1, 1): (120, 120, 120),
    }
    for (qy, qx), rgb in colours.items():
        for b in range(3):
            img[b, qy * h : (qy + 1) * h, qx * h : (qx + 1) * h] = rgb[b]
    return img + rng.normal(0, 3, img.shape).astype(np.float32)


def test_plan_windows_disjoint_cores_cover_every_reach_box():
    rng = np.random.default_rng(3)
    width, height, size = 1000, 800, 10
    cols, rows = rng.integers(0, width, 60), rng.integers(0, height, 60)
    plans = spx.plan_windows(cols, rows, width, height, size, max_core_cells=200 * 200)
    paint = np.zeros((height, width), dtype=np.int32)
    for core, win in plans:
        paint[core[1] : core[3], core[0] : core[2]] += 1
        assert win[0] <= core[0] and win[1] <= core[1] and win[2] >= core[2] and win[3] >= core[3]
        assert win[0] % size == 0 and win[1] % size == 0  # seeds on the global grid
        assert core[2] - core[0] <= 200 and core[3] - core[1] <= 200
    assert paint.max() == 1  # cores never overlap: every pixel is written once
    reach = spx.REACH * size
    for c, r in zip(cols, rows):
        box = paint[max(r - reach, 0) : r + reach + 1, max(c - reach, 0) : c + reach + 1]
        assert box.min() == 1, "a point's reach is not covered by a core"


def test_isolated_point_gets_one_window_of_seven_superpixels():
    plans = spx.plan_windows(np.array([505]), np.array([503]), 2000, 2000, 10)
    assert plans == [((480, 480, 530, 530), (470, 470, 540, 540))]


def test_vote_majority_ties_and_conflicts():
    sp = np.array([1, 1, 1, 2, 2, 3, 0, 4, 4])
    cls = np.array([5, 5, 6, 7, 8, 9, 5, 2, 2])
    winners, conflicts = spx.vote(sp, cls)
    assert winners == {1: 5, 3: 9, 4: 2}  # 2 is a tie (7 vs 8); 0 (nodata) never votes
    assert conflicts == {1, 2}


def test_label_nodata_value():
    from osgeo import gdal as g

    assert spx.label_nodata([1, 7]) == (0, g.GDT_Byte)
    assert spx.label_nodata([0, 3]) == (255, g.GDT_Byte)
    assert spx.label_nodata([2, 300]) == (0, g.GDT_UInt16)
    assert spx.label_nodata([0, 300]) == (65535, g.GDT_UInt16)
    with pytest.raises(MapSegError, match="0..65534"):
        spx.label_nodata([-1, 2])


@pytest.mark.parametrize("method", spx.METHODS)
def test_quadrants_labels_follow_regions(tmp_path, method):
    img = quadrants()
    img[:, 100, 20] = -1  # a nodata pixel under one point
    src = write_raster(tmp_path / "q.tif", img, geotransform=GT, nodata=-1)
    pts = [
        (15, 15, 1), (40, 20, 1),  # top-left: class 1
        (90, 30, 2),  # top-right: class 2
        (20, 100, 3),  # bottom-left: on nodata, skipped
        (-5, 10, 1), (130, 10, 1),  # outside
    ]  # fmt: skip
    # bottom-right: two points of different classes on the same pixel -> a tie, unlabelled
    pts += [(95, 95, 4), (95, 95, 5)]
    xs, ys = zip(*(xy(c, r) for c, r, _ in pts))
    dest, sp_dest = str(tmp_path / "labels.tif"), str(tmp_path / "sp.tif")
    r = spx.pseudo_label(
        src, xs, ys, [k for *_, k in pts], dest, method=method, size=10,
        class_names={1: "one", 2: "two"}, colors={1: (255, 0, 0), 2: (0, 255, 0)},
        superpixels_dest=sp_dest,
    )  # fmt: skip
    assert r["points_outside"] == 2 and r["points_on_nodata"] == 1 and r["points_used"] == 5
    assert r["conflicting_superpixels"] == 1
    ds = gdal.Open(dest)
    assert ds.GetGeoTransform() == GT  # GDAL 3.6 reads the .aux.xml (categories) after this
    band = ds.GetRasterBand(1)
    lab = band.ReadAsArray()
    assert band.GetNoDataValue() == 0
    assert band.GetCategoryNames()[:3] == ["unlabelled", "one", "two"]
    assert band.GetRasterColorTable().GetColorEntry(1) == (255, 0, 0, 255)
    # each point's own pixel carries its class, spread over a superpixel (>= half of 10 x 10) ...
    assert lab[15, 15] == lab[20, 40] == 1 and lab[30, 90] == 2 and (lab == 2).sum() >= 50
    # ... and labels never leak across the colour edges nor into unclicked regions
    assert set(np.unique(lab[:60, :60])) <= {0, 1} and set(np.unique(lab[:60, 60:])) <= {0, 2}
    assert (lab[60:, :] == 0).all()  # nodata point, tie, nothing else
    assert 0.01 < r["labelled_fraction"] < 0.5
    assert r["pixels_per_class"][1] == (lab == 1).sum() and r["points_per_class"] == {
        1: 2, 2: 1, 3: 0, 4: 1, 5: 1}  # fmt: skip
    sp = gdal.Open(sp_dest).ReadAsArray()
    assert sp.dtype == np.uint32 and sp[15, 15] > 0 and sp[100, 20] == 0  # nodata -> 0
    # the class-1 label is exactly the union of the superpixels under the class-1 points
    assert ((lab == 1) == np.isin(sp, [sp[15, 15], sp[20, 40]])).all()


def test_zero_usable_points_is_an_error_and_leaves_no_file(tmp_path):
    img = quadrants(40)
    img[:, :5, :5] = -1
    src = write_raster(tmp_path / "q.tif", img, geotransform=GT, nodata=-1)
    dest = tmp_path / "labels.tif"
    with pytest.raises(MapSegError, match="falls on the raster"):
        spx.pseudo_label(src, [0.0], [0.0], [1], str(dest))
    x, y = xy(2, 2)
    with pytest.raises(MapSegError, match="1 on nodata"):
        spx.pseudo_label(src, [x], [y], [1], str(dest), superpixels_dest=str(tmp_path / "s.tif"))
    with pytest.raises(MapSegError, match="at least 2 pixels"):
        spx.pseudo_label(src, [x], [y], [1], str(dest), size=0)
    assert sorted(os.listdir(tmp_path)) == ["q.tif"]  # no output, no partial file


def _nc_points():
    ds = ogr.Open(str(sample_file("landsat96_points.shp")))
    layer = ds.GetLayer()
    pts = [(f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY(), f["id"]) for f in layer]
    return np.array(pts)


def _nc_stack(tmp_path, bands=(10, 20, 30, 40, 50)) -> str:
    files = [str(sample_file(f"lsat7_2000_{b}.tif")) for b in bands]
    path = str(tmp_path / "nc.vrt")
    gdal.BuildVRT(path, files, separate=True).FlushCache()
    return path


@pytest.mark.parametrize("method", spx.METHODS)
def test_windowed_run_agrees_with_whole_raster_run(tmp_path, method):
    """Windows vs one whole-raster segmentation on the 489 x 443 NC scene, 20 sparse points.

    Measure: over the pixels within one superpixel size (Chebyshev) of a usable point, the
    fraction whose value (class or unlabelled) is the same in both runs. Those pixels are the
    ones a point's label is meant for; far from points both runs are unlabelled anyway, so
    counting them would only inflate the score. Windows start on the superpixel grid and carry
    a one-superpixel halo, so SLIC/watershed seed identically and only superpixels near window
    edges move (SLIC's k-means iterations propagate edge effects a little; measured 0.98).
    """
    src, size = _nc_stack(tmp_path), 10
    pts = _nc_points()[::50]
    kw = dict(method=method, size=size)
    whole = spx.pseudo_label(src, pts[:, 0], pts[:, 1], pts[:, 2], str(tmp_path / "w.tif"),
                             windowed=False, **kw)  # fmt: skip
    part = spx.pseudo_label(src, pts[:, 0], pts[:, 1], pts[:, 2], str(tmp_path / "p.tif"), **kw)
    assert part["windows"] > 5 and part["pixels_segmented"] < 0.7 * whole["pixels_segmented"]
    assert part["points_used"] == whole["points_used"] > 10
    a, b = (
        gdal.Open(str(tmp_path / "p.tif")).ReadAsArray(),
        gdal.Open(str(tmp_path / "w.tif")).ReadAsArray(),
    )
    gt = gdal.Open(src).GetGeoTransform()
    cols = ((pts[:, 0] - gt[0]) / gt[1]).astype(int)
    rows = ((pts[:, 1] - gt[3]) / gt[5]).astype(int)
    near = np.zeros(a.shape, dtype=bool)
    for c, r in zip(cols, rows):
        if 0 <= c < a.shape[1] and 0 <= r < a.shape[0] and b[r, c] > 0:
            near[max(r - size, 0) : r + size + 1, max(c - size, 0) : c + size + 1] = True
    assert near.sum() > 3000
    assert (a[near] == b[near]).mean() >= 0.95


def test_nc_pseudo_labels_agree_with_strata(tmp_path):
    """All six bands, 1000 points: band 70 has nodata over 38 % of the scene."""
    src = _nc_stack(tmp_path, (10, 20, 30, 40, 50, 70))
    pts = _nc_points()
    r = spx.pseudo_label(src, pts[:, 0], pts[:, 1], pts[:, 2], str(tmp_path / "l.tif"), size=10)
    lab = gdal.Open(str(tmp_path / "l.tif")).ReadAsArray()
    strata = gdal.Open(str(sample_file("strata.tif"))).ReadAsArray()
    m = lab > 0
    # reference: points outside the scene and points on nodata, counted independently
    ds = gdal.Open(src)
    gt = ds.GetGeoTransform()
    cols = np.floor((pts[:, 0] - gt[0]) / gt[1]).astype(int)
    rows = np.floor((pts[:, 1] - gt[3]) / gt[5]).astype(int)
    inside = (cols >= 0) & (cols < ds.RasterXSize) & (rows >= 0) & (rows < ds.RasterYSize)
    stack = ds.ReadAsArray()
    nd = [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(ds.RasterCount)]
    bad = np.any([stack[i] == nd[i] for i in range(len(nd))], axis=0)
    assert r["points_outside"] == (~inside).sum() == 115
    assert r["points_on_nodata"] == bad[rows[inside], cols[inside]].sum() > 100
    assert r["points_used"] == 1000 - 115 - r["points_on_nodata"]
    assert r["conflicting_superpixels"] > 0
    # chance agreement (sum of squared class shares) is 0.35, the majority class 0.50;
    # measured 0.71 with SLIC, size 10, compactness 0.3
    assert (lab[m] == strata[m]).mean() > 0.64
    assert 0.15 < m.mean() < 0.5 and not (lab[bad] > 0).any()


def test_huge_sparse_raster_work_follows_the_points(tmp_path):
    """A 50000 x 50000 VRT (a 500 x 500 texture upsampled on read): 25 isolated points are
    segmented in 25 windows of 7 x 7 superpixels, whatever the raster size."""
    small = quadrants(500, seed=1).astype(np.uint8)
    src_small = write_raster(tmp_path / "t.tif", small, geotransform=(0, 100, 0, 50000, 0, -100))
    big = str(tmp_path / "big.vrt")
    gdal.Translate(big, src_small, format="VRT", width=50000, height=50000)
    cols = rows = np.arange(25) * 1900 + 1000  # a diagonal: isolated, away from the edges
    xs, ys = cols + 0.5, 50000 - rows - 0.5
    classes = np.arange(25) % 3 + 1
    dest = str(tmp_path / "big_labels.tif")
    r = spx.pseudo_label(big, xs, ys, classes, dest, method="watershed", size=10)
    assert r["windows"] == 25 and r["pixels_segmented"] == 25 * 70 * 70  # 2e-5 of the raster
    assert r["points_used"] == 25
    assert os.path.getsize(dest) < 2_000_000  # sparse: untouched blocks are not stored
    ds = gdal.Open(dest)
    assert (ds.RasterXSize, ds.RasterYSize) == (50000, 50000)
    band = ds.GetRasterBand(1)
    for c, r_, k in zip(cols, rows, classes):
        assert band.ReadAsArray(int(c), int(r_), 1, 1)[0, 0] == k
    assert (band.ReadAsArray(30000, 2000, 512, 512) == 0).all()  # far from points: nodata


def test_superpixel_ids_are_unique_and_neighbours_get_different_colours(tmp_path):
    """The ids are scrambled over UInt32 (a bijection, 0 kept for nodata), so the 12-colour
    default style gives adjacent superpixels different colours nearly always."""
    img = np.random.default_rng(3).normal(100, 30, (3, 160, 160)).astype(np.float32)
    src = write_raster(tmp_path / "noise.tif", img, geotransform=GT)
    pts = [(c, r, 1 + (c + r) % 2) for c in range(10, 160, 30) for r in range(10, 160, 30)]
    xs, ys = zip(*(xy(c, r) for c, r, _ in pts))
    sp_dest = str(tmp_path / "sp.tif")
    spx.pseudo_label(src, xs, ys, [k for *_, k in pts], str(tmp_path / "lab.tif"), method="slic",
                     size=8, superpixels_dest=sp_dest)  # fmt: skip
    sp = gdal.Open(sp_dest).ReadAsArray().astype(np.int64)
    ids = np.unique(sp[sp > 0])
    assert ids.size > 30
    # the inverse of the odd multiplier gives back the windows' running numbers (small,
    # distinct: a bijection), from which the scrambled ids were made
    inverse = pow(2654435761, -1, 2**32)
    numbers = np.array([int(i) * inverse % 2**32 for i in ids])
    assert numbers.min() >= 1 and numbers.max() < 20 * ids.size
    assert np.array_equal(spx.scramble_ids(numbers.astype(np.uint32)), ids.astype(np.uint32))
    colour = (sp - 1) * 12 // (2**32 - 1)  # the style's 12 equal ranges over [1, 2^32 - 1]
    pairs = [(sp[:, 1:], sp[:, :-1], colour[:, 1:], colour[:, :-1]),
             (sp[1:], sp[:-1], colour[1:], colour[:-1])]  # fmt: skip
    edges = [(a != b) & (a > 0) & (b > 0) for a, b, _, _ in pairs]
    differ = sum(((ca != cb) & e).sum() for (_, _, ca, cb), e in zip(pairs, edges))
    assert differ / sum(e.sum() for e in edges) > 0.8
    qml = (tmp_path / "sp.qml").read_text()
    assert 'colorRampType="DISCRETE"' in qml and qml.count("<item ") == 12

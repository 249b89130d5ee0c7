"""Topographic sinks engine: depths equal an independent priority-flood fill, outputs are right."""

from __future__ import annotations

import heapq
import os
import stat

import numpy as np
import pytest
from conftest import SHARED_DATA, read_raster, write_raster
from osgeo import gdal, ogr
from scipy import ndimage

from mapseg.core.errors import CanceledError, MapSegError
from mapseg.core.io.raster import open_raster, raster_info
from mapseg.core.progress import Reporter
from mapseg.core.terrain.sinks import pixel_areas, topographic_sinks

pytest.importorskip("whitebox_workflows")

NODATA = -9999.0


def reference_fill(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Priority flood (Barnes et al. 2014) seeded with the grid edge and every cell beside
    nodata: water leaves across the edge and into nodata. Independent of the engine."""
    rows, cols = z.shape
    filled = np.where(valid, z, np.nan).astype(np.float64)
    done = ~valid.copy()
    heap = []
    near_nodata = ndimage.binary_dilation(~valid, structure=np.ones((3, 3), bool))
    seeds = valid.copy()
    seeds[1:-1, 1:-1] &= near_nodata[1:-1, 1:-1]
    for r, c in zip(*np.nonzero(seeds)):
        heapq.heappush(heap, (float(z[r, c]), int(r), int(c)))
        done[r, c] = True
    while heap:
        level, r, c = heapq.heappop(heap)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols and not done[rr, cc]:
                    done[rr, cc] = True
                    filled[rr, cc] = max(float(z[rr, cc]), level)
                    heapq.heappush(heap, (filled[rr, cc], rr, cc))
    return filled


def reference_depth(z, nodata=NODATA):
    valid = (z != nodata) & np.isfinite(z)
    depth = reference_fill(z.astype(np.float64), valid) - z
    return np.where(valid, depth, np.nan)


def synthetic_dem(rows=120, cols=150, seed=0) -> np.ndarray:
    """Smooth rolling terrain on a tilted plane with noise and dug pits: many nested sinks."""
    rng = np.random.default_rng(seed)
    z = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 6) * 300
    z += np.linspace(0, 20, cols)[None, :] + rng.standard_normal((rows, cols)) * 0.3
    for _ in range(15):
        r, c = rng.integers(3, rows - 3), rng.integers(3, cols - 3)
        z[r - 1 : r + 2, c - 1 : c + 2] -= rng.uniform(1, 6)
    return (z + 500).astype(np.float32)


def run(tmp_path, z, nodata=NODATA, **kwargs):
    src = write_raster(tmp_path / "dem.tif", z, nodata=nodata, **kwargs.pop("write", {}))
    result = topographic_sinks(src, str(tmp_path / "depth.tif"), **kwargs)
    return result, read_raster(result.depth_path)


def assert_depth(depth_out, z, nodata=NODATA, min_depth=0.0):
    ref = reference_depth(z, nodata)
    valid = ~np.isnan(ref)
    assert np.array_equal(depth_out == nodata, ~valid)
    expected = np.where(ref > min_depth, ref, 0.0)
    np.testing.assert_allclose(depth_out[valid], expected[valid], atol=1e-4, rtol=0)


def plateau(rows=9, cols=10, value=10.0):
    return np.full((rows, cols), value, dtype=np.float32)


def test_edge_pits_drain_across_the_grid_edge(tmp_path):
    z = plateau()
    z[0, 4] = 5.0  # a low edge cell: water leaves the grid there
    z[1, 4] = 2.0  # beside it: fills to 5, not to 10
    z[5, 0] = 1.0  # an edge cell lower than all: never a sink
    z[8, 9] = 3.0  # a corner
    _, depth = run(tmp_path, z)
    assert depth[1, 4] == pytest.approx(3.0)
    assert depth[0, 4] == 0 and depth[5, 0] == 0 and depth[8, 9] == 0
    assert_depth(depth, z)


def test_pits_beside_nodata_drain_into_it(tmp_path):
    z = plateau(12, 12)
    z[5, 5] = NODATA  # an interior hole
    z[5, 3], z[5, 4] = 2.0, 6.0  # 2 spills over 6 into the hole
    z[9, 9] = 4.0  # a closed pit far from the hole: filled to 10
    z[:, 11] = NODATA  # nodata along an edge
    z[2, 10] = 3.0  # beside it
    result, depth = run(tmp_path, z)
    assert depth[5, 3] == pytest.approx(4.0)
    assert depth[5, 4] == 0 and depth[2, 10] == 0
    assert depth[9, 9] == pytest.approx(6.0)
    assert depth[5, 5] == NODATA and (depth[:, 11] == NODATA).all()
    assert result.sink_cells == 2
    assert_depth(depth, z)


def test_nested_pits_and_flats(tmp_path):
    z = plateau(14, 14, 20.0)
    z[2:12, 2:12] = 12.0  # a flat-bottomed basin (flat at 12) with a rim at 20 ...
    z[0, 7] = 15.0  # ... spilling over a 15 notch on the edge
    z[1, 7] = 15.0
    z[4:7, 4:7] = 9.0  # a nested pit
    z[5, 5] = 7.0  # nested again
    z[9, 9] = 11.0
    result, depth = run(tmp_path, z)
    assert depth[3, 3] == pytest.approx(3.0)  # the flat fills to the notch exactly
    assert depth[5, 5] == pytest.approx(8.0) and depth[4, 4] == pytest.approx(6.0)
    assert depth[0, 0] == 0 and depth[1, 7] == 0
    assert result.max_depth == pytest.approx(8.0)
    assert_depth(depth, z)


def test_synthetic_dem_matches_the_reference_with_rotation_and_holes(tmp_path):
    z = synthetic_dem()
    z[40:44, 60:66] = NODATA  # a hole inside
    z[:10, :6] = NODATA  # a nodata corner
    gt = (300000.0, 4.0, 0.5, 5000000.0, 0.3, -4.0)
    result, depth = run(
        tmp_path, z, write={"geotransform": gt}, filled_dest=str(tmp_path / "f.tif")
    )
    assert result.sink_cells > 100
    assert_depth(depth, z)
    ds = gdal.Open(result.depth_path)
    assert ds.GetGeoTransform() == pytest.approx(gt)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert ds.GetRasterBand(1).GetNoDataValue() == NODATA
    assert "32633" in ds.GetSpatialRef().ExportToWkt().replace('"', "")
    filled = read_raster(result.filled_path)
    ref = reference_depth(z)
    valid = ~np.isnan(ref)
    np.testing.assert_allclose(filled[valid], (z + ref)[valid], atol=1e-3)
    assert (filled[~valid] == NODATA).all()
    area = abs(gt[1] * gt[5] - gt[2] * gt[4])
    assert result.volume == pytest.approx(np.nansum(ref) * area, rel=1e-5)


def test_min_depth_max_depth_and_int16(tmp_path):
    z = (synthetic_dem(seed=3) * 1).astype(np.int16)
    ref = reference_depth(z.astype(np.float64), -32768)
    _, depth = run(tmp_path, z, nodata=-32768, min_depth=1.5, max_depth=4.0)
    expected = np.minimum(ref, 4.0)
    expected = np.where(expected > 1.5, expected, 0.0)
    np.testing.assert_allclose(depth, expected, atol=1e-6)
    assert (ref > 4).any() and depth.max() == pytest.approx(4.0)
    assert ((ref > 0) & (ref <= 1.5)).any()


def test_sink_polygons_statistics(tmp_path):
    z = synthetic_dem(seed=5)
    sinks = str(tmp_path / "sinks.gpkg")
    result, depth = run(tmp_path, z, sinks_dest=sinks, min_area=300.0)
    labels, n = ndimage.label(depth > 0, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:] * 100.0  # 10 m pixels
    expected = sorted(
        (float(depth[labels == i + 1].max()), float(depth[labels == i + 1].sum() * 100), s)
        for i, s in enumerate(sizes)
        if s >= 300.0
    )
    assert 0 < len(expected) < n  # some sinks are dropped by MIN_AREA
    vds = ogr.Open(result.sinks_path)
    layer = vds.GetLayer()
    assert [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(5)] == [
        "sink_id",
        "max_depth",
        "mean_depth",
        "area",
        "volume",
    ]
    got = []
    for feature in layer:
        geom = feature.GetGeometryRef()
        assert geom.GetArea() == pytest.approx(feature["area"])
        assert feature["mean_depth"] == pytest.approx(feature["volume"] / feature["area"])
        got.append((feature["max_depth"], feature["volume"], feature["area"]))
    assert sorted(x["sink_id"] for x in layer) == list(range(1, len(expected) + 1))
    np.testing.assert_allclose(sorted(got), expected, rtol=1e-5)
    assert result.sinks == len(expected)


def test_geographic_areas_are_square_metres(tmp_path):
    pyproj = pytest.importorskip("pyproj")
    z = plateau(6, 6)
    z[2:4, 2:4] = 8.0  # one 2 x 2 sink, 2 deep
    gt = (10.0, 0.01, 0.0, 60.0, 0.0, -0.01)
    sinks = str(tmp_path / "sinks.geojson")
    result, _ = run(tmp_path, z, write={"geotransform": gt, "epsg": 4326}, sinks_dest=sinks)
    geod = pyproj.Geod(ellps="WGS84")
    lon0, lat0 = 10.02, 59.98
    lons = [lon0, lon0 + 0.02, lon0 + 0.02, lon0]
    lats = [lat0, lat0, lat0 - 0.02, lat0 - 0.02]
    expected = abs(geod.polygon_area_perimeter(lons, lats)[0])  # about 2.47 km²
    vds = ogr.Open(result.sinks_path)
    feature = next(iter(vds.GetLayer()))
    assert feature["area"] == pytest.approx(expected, rel=1e-4)
    assert feature["volume"] == pytest.approx(2 * expected, rel=1e-4)
    assert result.area_unit == "m²"
    # per-row areas: rows nearer the pole are smaller
    info = raster_info(open_raster(result.depth_path))
    rows = pixel_areas(info, 0, 6)[:, 0]
    assert (np.diff(rows) > 0).all()  # southward rows grow (northern hemisphere)


@pytest.mark.parametrize(
    "name, unit", [("pysheds_dem.tif", "m²"), ("opengeos_alexandria_dtm.tif", "map units²")]
)
def test_shared_real_dems(tmp_path, name, unit):
    path = SHARED_DATA / "dem" / name
    if not path.exists():
        pytest.skip(f"shared DEM {name} not present")
    ds = gdal.Open(str(path))  # keep the dataset alive while its band is used
    band = ds.GetRasterBand(1)
    z, nodata = band.ReadAsArray().astype(np.float64), band.GetNoDataValue()
    ds = band = None
    result = topographic_sinks(str(path), str(tmp_path / "d.tif"))
    depth = read_raster(result.depth_path)
    assert_depth(depth, z, nodata=nodata)
    assert result.area_unit == unit
    assert result.sink_cells == int((reference_depth(z, nodata) > 0).sum())


def test_no_sinks_gives_an_empty_layer(tmp_path):
    z = np.add.outer(np.arange(8.0), np.arange(9.0)).astype(np.float32)  # a plane: no sink
    result, depth = run(tmp_path, z, sinks_dest=str(tmp_path / "s.gpkg"))
    assert (depth == 0).all() and result.sink_cells == 0 and result.sinks == 0
    vds = ogr.Open(result.sinks_path)
    assert vds.GetLayer().GetFeatureCount() == 0


def test_pixel_space_warns(tmp_path):
    z = plateau(5, 5)
    z[2, 2] = 1.0
    warnings = []
    src = write_raster(tmp_path / "raw.tif", z, geotransform=None, epsg=None)
    result = topographic_sinks(
        src, str(tmp_path / "d.tif"), reporter=Reporter(warn=warnings.append)
    )
    assert warnings and "pixel space" in warnings[0]
    assert read_raster(result.depth_path)[2, 2] == pytest.approx(9.0)
    assert result.volume == pytest.approx(9.0) and result.area_unit == "pixels"


def test_bad_inputs_leave_no_file(tmp_path):
    z = synthetic_dem(20, 20)
    src = write_raster(tmp_path / "dem.tif", z, nodata=NODATA)
    dest = tmp_path / "out" / "d.tif"
    with pytest.raises(MapSegError, match="Band 2 does not exist"):
        topographic_sinks(src, str(dest), band=2)
    empty = write_raster(tmp_path / "empty.tif", np.full((5, 5), NODATA, np.float32), nodata=NODATA)
    with pytest.raises(MapSegError, match="only nodata"):
        topographic_sinks(empty, str(dest))
    with pytest.raises(MapSegError, match="same file as the input"):
        topographic_sinks(src, src)
    with pytest.raises(MapSegError, match="cannot open"):
        topographic_sinks(str(tmp_path / "missing.tif"), str(dest))
    with pytest.raises(MapSegError, match="MAX_DEPTH"):
        topographic_sinks(src, str(dest), max_depth=0.0)
    with pytest.raises(MapSegError, match="same file name"):
        topographic_sinks(src, str(dest), filled_dest=str(dest))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if not os.access(locked, os.W_OK):
            with pytest.raises(MapSegError, match="not writable"):
                topographic_sinks(src, str(locked / "d.tif"))
    finally:
        locked.chmod(stat.S_IRWXU)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MapSegError, match="Cannot create the output folder"):
        topographic_sinks(src, str(blocker / "d.tif"))
    assert not dest.exists() and os.listdir(locked) == []


def test_cancel_leaves_no_file(tmp_path):
    z = synthetic_dem(40, 40)
    src = write_raster(tmp_path / "dem.tif", z, nodata=NODATA)
    seen = []
    reporter = Reporter(progress=seen.append, is_canceled=lambda: bool(seen) and seen[-1] >= 60)
    with pytest.raises(CanceledError):
        topographic_sinks(
            src,
            str(tmp_path / "d.tif"),
            sinks_dest=str(tmp_path / "s.gpkg"),
            reporter=reporter,
        )
    assert sorted(os.listdir(tmp_path)) == ["dem.tif"]
    assert seen[0] <= 10 and max(seen) >= 60

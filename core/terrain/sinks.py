"""Topographic sinks: how deep water stands in each depression of a DEM (filled DEM - DEM).

Whitebox's priority-flood fill (``fill_depressions_wang_and_liu`` with ``fix_flats=False``)
does the heavy lifting. Three facts about whitebox-workflows 2.0 shape the code around it:

- it reads predictor-compressed GeoTIFFs (PREDICTOR=2/3) as garbage, silently, so the DEM is
  always handed over as an uncompressed GeoTIFF written here by GDAL;
- it drains only across the grid edge, never into interior nodata; ``fill_depressions`` (the
  pit-driven tool) does not even drain across the edge unless a lower cell is reachable, and
  is pathologically slow on noisy DEMs, hence the Wang & Liu tool;
- its in-memory numpy bridge is slower than a file round trip.

Hydrology here: water leaves the grid across its edge and into nodata cells. The DEM is padded
by one ring of a value below its minimum and nodata cells get that value too, so nodata touching
the edge drains to the ring. Nodata holes inside the DEM would be filled as pits; cells whose fill
depends on such a hole are recomputed exactly by grayscale reconstruction (scikit-image) with the
holes as outlets. The fill is a whole-raster operation, so the DEM is held in memory (float64).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.geodesy import Ellipsoid
from ..io.raster import (
    OutputRaster,
    RasterInfo,
    block_size,
    check_band,
    check_destination,
    open_raster,
    raster_info,
    valid_mask,
    windows,
)
from ..progress import Reporter

EIGHT = np.ones((3, 3), dtype=bool)  # D8: water moves to diagonal neighbours too
SINK_FIELDS = ("sink_id", "max_depth", "mean_depth", "area", "volume")


@dataclass
class SinkResult:
    depth_path: str
    filled_path: str | None
    sinks_path: str | None
    sink_cells: int
    sinks: int  # polygons written (0 when no polygon output was asked for)
    max_depth: float
    volume: float  # m³ in a geographic CRS, map units³ otherwise
    area_unit: str


# -- pixel areas -------------------------------------------------------------------------------


def pixel_areas(info: RasterInfo, row0: int, nrows: int) -> np.ndarray:
    """Pixel areas of rows ``row0 .. row0+nrows``: shape (nrows, 1), or (nrows, width) when a
    geographic grid is rotated. m² for a geographic CRS (exact on the ellipsoid for north-up
    grids), map units² otherwise."""
    gt = info.geotransform
    srs = info.srs() if info.georeferenced else None
    if srs is None or not srs.IsGeographic():
        return np.full((nrows, 1), info.pixel_area)
    ell = Ellipsoid(srs.GetSemiMajor(), srs.GetInvFlattening())
    a, e = ell.a, ell.e
    to_rad = math.pi / 180.0
    # Angular unit of the geographic CRS (degrees nearly always; grads or radians are legal)
    to_rad = srs.GetAngularUnits() or to_rad
    if gt[2] == 0 and gt[4] == 0:
        edges = np.clip(
            (gt[3] + gt[5] * np.arange(row0, row0 + nrows + 1)) * to_rad,
            -1.5707963267948966,
            1.5707963267948966,
        )
        zone = np.abs(np.diff(ell.sin_authalic(edges)))  # area of a zone is r² Δλ |Δ sin β|
        return (ell.r2_auth * abs(gt[1] * to_rad) * zone)[:, None]
    # Rotated: the area element at each pixel centre times the pixel's angular area.
    rows = np.arange(row0, row0 + nrows)[:, None] + 0.5
    cols = np.arange(info.width)[None, :] + 0.5
    phi = np.clip((gt[3] + cols * gt[4] + rows * gt[5]) * to_rad, -math.pi / 2, math.pi / 2)
    s = np.sin(phi)
    element = a * a * (1 - e * e) * np.cos(phi) / (1 - e * e * s * s) ** 2
    return element * info.pixel_area * to_rad * to_rad


# -- the fill ----------------------------------------------------------------------------------


def whitebox_fill(padded: np.ndarray, workdir: str) -> np.ndarray:
    """Priority-flood fill of ``padded`` by Whitebox; the outlets are the grid edge only."""
    import whitebox_workflows as wbw

    src = os.path.join(workdir, "dem.tif")
    out = os.path.join(workdir, "filled.tif")
    rows, cols = padded.shape
    ds = gdal.GetDriverByName("GTiff").Create(src, cols, rows, 1, gdal.GDT_Float64)
    ds.SetGeoTransform([0.0, 1.0, 0.0, float(rows), 0.0, -1.0])
    band = ds.GetRasterBand(1)
    # Whitebox assumes -9999 when a file declares no nodata: declare one no cell holds.
    band.SetNoDataValue(float(padded[0, 0]) - 1.0)
    band.WriteArray(padded)
    ds = band = None
    wbe = wbw.WbEnvironment()
    wbe.verbose = False
    try:
        dem = wbe.read_raster(src)
        filled = wbe.hydrology.fill_depressions_wang_and_liu(dem=dem, fix_flats=False)
        wbe.write_raster(filled, out, options={"compress": False})
    except Exception as err:  # whitebox raises OSError/RuntimeError/ValueError alike
        raise MapSegError(f"Whitebox could not fill the DEM's depressions: {err}") from None
    ds = gdal.Open(out)
    result = ds.GetRasterBand(1).ReadAsArray().astype(np.float64, copy=False)
    ds = None
    if result.shape != padded.shape:
        raise MapSegError("Whitebox returned a raster of another size; check its installation.")
    return result


def drain_interior_holes(filled: np.ndarray, z: np.ndarray, nodata: np.ndarray) -> int:
    """Make nodata holes inside the DEM outlets: fix in place the cells whose fill they lower.

    ``z`` holds the padded DEM with every nodata cell and the ring at the low outlet value;
    ``filled`` its fill with the grid edge as the only outlet, where holes are pits. A cell whose
    true fill is lower is raised in ``filled`` and joined to a hole through raised cells, so only
    those components are recomputed, by reconstruction by erosion with the holes fixed at their
    low value (exact: the same minimax-path fill with holes as outlets). Returns cells changed.
    """
    from scipy import ndimage

    labels, _ = ndimage.label(nodata, structure=EIGHT)
    outer = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = nodata & ~np.isin(labels, outer)
    if not holes.any():
        return 0
    try:
        from skimage.morphology import reconstruction
    except ImportError:
        raise MapSegError(
            "This DEM has nodata holes inside it; draining water into them needs the Python "
            "package scikit-image. Install it (python3 -m pip install scikit-image)."
        ) from None
    labels, _ = ndimage.label((filled > z) | holes, structure=EIGHT)
    touched = np.isin(labels, np.unique(labels[holes]))
    rows, cols = np.nonzero(touched)
    r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, z.shape[0])
    c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, z.shape[1])
    box = filled[r0:r1, c0:c1]
    # The holes' own fill (their spill level) is dropped: they are outlets, fixed at their value.
    seed = np.where(holes[r0:r1, c0:c1], z[r0:r1, c0:c1], box)
    fixed = reconstruction(seed, z[r0:r1, c0:c1], method="erosion", footprint=EIGHT)
    changed = int(np.count_nonzero(fixed < box))
    filled[r0:r1, c0:c1] = np.minimum(box, fixed)
    return changed


# -- the algorithm -----------------------------------------------------------------------------


def _read_dem(ds, band: gdal.Band, info: RasterInfo, nodata, reporter: Reporter):
    """The DEM padded by one ring, as float64, and its padded nodata mask (ring included)."""
    padded = np.empty((info.height + 2, info.width + 2), dtype=np.float64)
    invalid = np.ones(padded.shape, dtype=bool)
    bw, bh = block_size(ds)
    wins = list(windows(info.width, info.height, bw, bh))
    for i, (x, y, w, h) in enumerate(wins):
        arr = band.ReadAsArray(x, y, w, h)
        padded[y + 1 : y + 1 + h, x + 1 : x + 1 + w] = arr
        invalid[y + 1 : y + 1 + h, x + 1 : x + 1 + w] = ~valid_mask(arr, nodata)
        reporter.fraction((i + 1) / len(wins))
    return padded, invalid


def _output_nodata(nodata, gdal_type: int, invalid_cells: bool) -> float | None:
    if nodata is None:
        return float("nan") if invalid_cells else None
    if gdal_type == gdal.GDT_Float32 and np.isfinite(nodata) and abs(nodata) > 3.4e38:
        return float("nan")  # a float64-only nodata value would not survive Float32
    return float(nodata)


def _write(dest, arr, info: RasterInfo, gdal_type, nodata, reporter: Reporter) -> str:
    with OutputRaster(
        dest,
        info.width,
        info.height,
        gdal_type,
        geotransform=info.geotransform,
        projection=info.projection,
        nodata=nodata,
    ) as out:
        bw, bh = block_size(out.ds)
        wins = list(windows(info.width, info.height, bw, bh))
        for i, (x, y, w, h) in enumerate(wins):
            out.write(arr[y : y + h, x : x + w], x, y)
            reporter.fraction((i + 1) / len(wins))
        return out.commit()


def _sink_polygons(dest, depth, mask, info: RasterInfo, min_area, reporter: Reporter) -> int:
    """One (multi)polygon per 8-connected sink with its depth, area and volume statistics."""
    from scipy import ndimage

    from ..io.vector import VectorWriter, split_destination

    labels, count = ndimage.label(mask, structure=EIGHT)
    reporter.fraction(0.1)
    lab = labels[mask]
    d = depth[mask]
    pa = np.broadcast_to(pixel_areas(info, 0, info.height), mask.shape)[mask]
    area = np.bincount(lab, weights=pa, minlength=count + 1)
    volume = np.bincount(lab, weights=d * pa, minlength=count + 1)
    top = np.zeros(count + 1)
    if count:
        top[:] = ndimage.maximum(d, lab, index=np.arange(count + 1))
    keep = np.flatnonzero(area >= min_area)
    keep = keep[keep > 0]
    new_id = np.zeros(count + 1, dtype=np.int32)  # sink_id: 1..n in raster scan order
    new_id[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    labels = new_id[labels]
    reporter.fraction(0.3)
    # Polygonize 4-connected pieces, then join the pieces of each 8-connected sink.
    mem = gdal.GetDriverByName("MEM").Create("", info.width, info.height, 1, gdal.GDT_Int32)
    mem.SetGeoTransform(list(info.geotransform))
    mem.GetRasterBand(1).WriteArray(labels)
    vmem = ogr.GetDriverByName("Memory").CreateDataSource("pieces")
    layer = vmem.CreateLayer("pieces", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    band = mem.GetRasterBand(1)
    gdal.Polygonize(band, band, layer, 0, [])
    reporter.fraction(0.7)
    parts: dict = {}
    for feature in layer:
        parts.setdefault(feature.GetField(0), []).append(feature.GetGeometryRef().Clone())
    path, layer_name = split_destination(dest)
    fields = [("sink_id", ogr.OFTInteger)] + [(n, ogr.OFTReal) for n in SINK_FIELDS[1:]]
    with VectorWriter(path, info.projection, ogr.wkbMultiPolygon, fields, layer_name) as out:
        for i, old in enumerate(keep):
            reporter.check()
            geom = ogr.Geometry(ogr.wkbMultiPolygon)
            for piece in parts.get(i + 1, ()):
                geom.AddGeometry(piece)
            values = {
                "sink_id": i + 1,
                "max_depth": float(top[old]),
                "mean_depth": float(volume[old] / area[old]) if area[old] > 0 else 0.0,
                "area": float(area[old]),
                "volume": float(volume[old]),
            }
            out.add(geom, values)
        out.commit()
    reporter.fraction(1.0)
    return int(keep.size)


@engine_call
def topographic_sinks(
    src: str,
    depth_dest: str,
    band: int = 1,
    filled_dest: str | None = None,
    sinks_dest: str | None = None,
    max_depth: float | None = None,
    min_depth: float = 0.0,
    min_area: float = 0.0,
    reporter: Reporter | None = None,
) -> SinkResult:
    """Depth of water in each depression of the DEM ``src`` (band ``band``).

    ``depth_dest`` gets filled - DEM (Float32, 0 where the depth is not above ``min_depth``,
    nodata kept), ``filled_dest`` the filled DEM, ``sinks_dest`` polygons of the connected sink
    cells at least ``min_area`` large. ``max_depth`` caps each cell's depth.
    """
    reporter = reporter or Reporter()
    if max_depth is not None and not max_depth > 0:
        raise MapSegError("MAX_DEPTH must be greater than 0 (leave it empty for no cap).")
    if min_depth < 0 or min_area < 0:
        raise MapSegError("MIN_DEPTH and MIN_AREA must be zero or positive.")
    sinks_path = split_sinks_path(sinks_dest)
    dests = [d for d in (depth_dest, filled_dest, sinks_path) if d]
    for dest in dests:
        check_destination(dest, [src])
    if len({os.path.abspath(d) for d in dests}) < len(dests):
        raise MapSegError("Two outputs have the same file name. Give each output its own file.")
    ds = open_raster(src)
    dem_band = check_band(ds, band)
    info = raster_info(ds)
    nodata = info.nodata[band - 1]
    if not info.georeferenced:
        reporter.warn(
            "The DEM has no georeferencing: it is processed in pixel space (areas in pixels)."
        )
    z, invalid = _read_dem(ds, dem_band, info, nodata, reporter.sub(0.0, 0.1))
    ds = None
    valid_inner = ~invalid[1:-1, 1:-1]
    if not valid_inner.any():
        raise MapSegError(f"Band {band} of the DEM holds only nodata. Choose a DEM with data.")
    low = float(z[~invalid].min()) - 1.0
    z[invalid] = low  # the ring and every nodata cell: outlets below all data
    reporter.info(f"Filling the depressions of a {info.width} x {info.height} DEM (Whitebox).")
    workdir = tempfile.mkdtemp(prefix="mapseg-sinks-")
    try:
        filled = whitebox_fill(z, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reporter.fraction(0.6)
    if invalid[1:-1, 1:-1].any():
        changed = drain_interior_holes(filled, z, invalid)
        if changed:
            reporter.info(f"{changed} cells drain into nodata holes inside the DEM.")
    reporter.fraction(0.65)
    dem = z[1:-1, 1:-1]
    depth = filled[1:-1, 1:-1] - dem
    del filled
    if max_depth is not None:
        np.minimum(depth, max_depth, out=depth)
    mask = valid_inner & (depth > min_depth)
    out_nodata = _output_nodata(nodata, gdal.GDT_Float32, not valid_inner.all())
    if out_nodata is not None and out_nodata >= 0:
        reporter.warn(f"The DEM's nodata value {out_nodata:g} is a possible depth: using -9999.")
        out_nodata = -9999.0
    result = np.where(mask, depth, 0.0)
    if out_nodata is not None:
        result[~valid_inner] = out_nodata
    depth_path = _write(
        depth_dest, result, info, gdal.GDT_Float32, out_nodata, reporter.sub(0.65, 0.8)
    )
    filled_path = None
    if filled_dest:
        ftype = gdal.GDT_Float64 if info.dtypes[band - 1] == "Float64" else gdal.GDT_Float32
        fill_nodata = _output_nodata(nodata, ftype, not valid_inner.all())
        surface = dem + depth
        if fill_nodata is not None:
            surface[~valid_inner] = fill_nodata
        filled_path = _write(
            filled_dest, surface, info, ftype, fill_nodata, reporter.sub(0.8, 0.85)
        )
        del surface
    sinks = 0
    if sinks_path:
        sinks = _sink_polygons(sinks_dest, result, mask, info, min_area, reporter.sub(0.85, 1.0))
    pa = pixel_areas(info, 0, info.height)
    geographic = info.georeferenced and info.is_geographic
    return SinkResult(
        depth_path=depth_path,
        filled_path=filled_path,
        sinks_path=os.path.abspath(sinks_path) if sinks_path else None,
        sink_cells=int(mask.sum()),
        sinks=sinks,
        max_depth=float(result[mask].max()) if mask.any() else 0.0,
        volume=float((np.where(mask, result, 0.0) * pa).sum()),
        area_unit="m²" if geographic else ("map units²" if info.georeferenced else "pixels"),
    )


def split_sinks_path(dest: str | None) -> str | None:
    if not dest:
        return None
    from ..io.vector import driver_for, split_destination

    path = split_destination(dest)[0]
    driver_for(path)  # fail early on an extension OGR cannot write
    return path

"""Topographic sinks: how deep water stands in each depression of a DEM (filled DEM - DEM).

Hydrology here: water leaves the grid across its edge and into nodata cells. The DEM is padded
by one ring of a value below its minimum and nodata cells get that value too, so nodata touching
the edge drains to the ring. Nodata holes inside the DEM would be filled as pits; cells whose fill
depends on such a hole are recomputed exactly by grayscale reconstruction (scikit-image) with the
holes as outlets (``fill.py``). The fill is a whole-raster operation, so the DEM is held in
memory (float64).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from osgeo import gdal, ogr

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.geodesy import pixel_areas
from ..io.outputs import OutputSet
from ..io.raster import (
    RasterInfo,
    block_size,
    check_band,
    check_destination,
    open_raster,
    raster_info,
    valid_mask,
    windows,
)
from ..io.styles import graduated_style, ramp_style
from ..progress import Reporter
from .budget import check_budget
from .fill import EIGHT, drain_interior_holes, whitebox_fill

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


# -- the algorithm -----------------------------------------------------------------------------


@dataclass
class Dem:
    """The DEM padded by one ring: ``z`` float64 with the ring and nodata at an outlet value
    below every datum, ``invalid`` true on the ring and on nodata cells."""

    info: RasterInfo
    band: int
    nodata: float | None
    z: np.ndarray
    invalid: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Data cells of the unpadded grid."""
        return ~self.invalid[1:-1, 1:-1]

    @property
    def inner(self) -> np.ndarray:
        """Elevations of the unpadded grid (a view)."""
        return self.z[1:-1, 1:-1]


def _check_request(src, dests, max_depth, min_depth, min_area) -> None:
    """Refuse bad options and destinations before any work."""
    if max_depth is not None and not max_depth > 0:
        raise MapSegError("MAX_DEPTH must be greater than 0 (leave it empty for no cap).")
    if min_depth < 0 or min_area < 0:
        raise MapSegError("MIN_DEPTH and MIN_AREA must be zero or positive.")
    dests = [d for d in dests if d]
    for dest in dests:
        check_destination(dest, [src])
    if len({os.path.abspath(d) for d in dests}) < len(dests):
        raise MapSegError("Two outputs have the same file name. Give each output its own file.")


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


def load_dem(src: str, band: int, budget: Tuple[str, float | None], reporter: Reporter) -> Dem:
    """Read band ``band`` of ``src`` padded, with every outlet set below the lowest datum,
    once ``check_budget`` (``budget``: temporary folder, memory limit in GB) accepts its size."""
    ds = open_raster(src)
    dem_band = check_band(ds, band)
    info = raster_info(ds)
    need = check_budget(info.width, info.height, *budget)
    reporter.info(f"Memory needed for the fill: about {need / 1024**3:.2f} GB.")
    nodata = info.nodata[band - 1]
    if not info.georeferenced:
        reporter.warn(
            "The DEM has no georeferencing: it is processed in pixel space (areas in pixels)."
        )
    z, invalid = _read_dem(ds, dem_band, info, nodata, reporter)
    ds = None
    dem = Dem(info, band, nodata, z, invalid)
    if not dem.valid.any():
        raise MapSegError(f"Band {band} of the DEM holds only nodata. Choose a DEM with data.")
    z[invalid] = float(z[~invalid].min()) - 1.0  # the ring and every nodata cell: outlets
    return dem


def fill_dem(dem: Dem, folder: str, reporter: Reporter) -> np.ndarray:
    """The padded filled surface: Whitebox's fill (its files in a hidden folder inside
    ``folder``), then the interior holes made outlets."""
    info = dem.info
    reporter.info(f"Filling the depressions of a {info.width} x {info.height} DEM (Whitebox).")
    workdir = tempfile.mkdtemp(prefix=".mapseg-sinks-", dir=folder)
    reporter.info(f"Temporary files for Whitebox in {workdir}")
    try:
        filled = whitebox_fill(dem.z, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reporter.fraction(0.9)
    if not dem.valid.all():
        changed = drain_interior_holes(filled, dem.z, dem.invalid)
        if changed:
            reporter.info(f"{changed} cells drain into nodata holes inside the DEM.")
    reporter.fraction(1.0)
    return filled


def sink_depth(dem: Dem, filled: np.ndarray, max_depth, min_depth):
    """(depth of every cell, capped at ``max_depth``; mask of sink cells deeper than
    ``min_depth``)."""
    depth = filled[1:-1, 1:-1] - dem.inner
    if max_depth is not None:
        np.minimum(depth, max_depth, out=depth)
    return depth, dem.valid & (depth > min_depth)


def _output_nodata(nodata, gdal_type: int, invalid_cells: bool) -> float | None:
    if nodata is None:
        return float("nan") if invalid_cells else None
    if gdal_type == gdal.GDT_Float32 and np.isfinite(nodata) and abs(nodata) > 3.4e38:
        return float("nan")  # a float64-only nodata value would not survive Float32
    return float(nodata)


def _write(outputs: OutputSet, dest, arr, info: RasterInfo, gdal_type, nodata, reporter):
    """``arr`` into a new raster of the set, block by block."""
    out = outputs.raster(
        dest,
        info.width,
        info.height,
        gdal_type,
        geotransform=info.geotransform,
        projection=info.projection,
        nodata=nodata,
    )
    bw, bh = block_size(out.ds)
    wins = list(windows(info.width, info.height, bw, bh))
    for i, (x, y, w, h) in enumerate(wins):
        out.write(arr[y : y + h, x : x + w], x, y)
        reporter.fraction((i + 1) / len(wins))
    return out


def depth_raster(dem: Dem, depth, mask, reporter: Reporter) -> Tuple[np.ndarray, float | None]:
    """The depth output: depth on sink cells, 0 elsewhere, the output nodata on nodata."""
    valid = dem.valid
    out_nodata = _output_nodata(dem.nodata, gdal.GDT_Float32, not valid.all())
    if out_nodata is not None and out_nodata >= 0:
        reporter.warn(f"The DEM's nodata value {out_nodata:g} is a possible depth: using -9999.")
        out_nodata = -9999.0
    result = np.where(mask, depth, 0.0)
    if out_nodata is not None:
        result[~valid] = out_nodata
    return result, out_nodata


def _write_filled(outputs: OutputSet, dest, dem: Dem, depth, reporter: Reporter):
    """The filled DEM in the DEM's float precision (Float64 stays Float64)."""
    info, valid = dem.info, dem.valid
    ftype = gdal.GDT_Float64 if info.dtypes[dem.band - 1] == "Float64" else gdal.GDT_Float32
    fill_nodata = _output_nodata(dem.nodata, ftype, not valid.all())
    surface = dem.inner + depth
    lo, hi = float(surface[valid].min()), float(surface[valid].max())
    if fill_nodata is not None:
        surface[~valid] = fill_nodata
    out = _write(outputs, dest, surface, info, ftype, fill_nodata, reporter)
    outputs.style(out, ramp_style(lo, hi, "terrain"))
    return out


def _summary(dem: Dem, result, mask, paths, sinks: int) -> SinkResult:
    info = dem.info
    pa = pixel_areas(info, 0, info.height)
    geographic = info.georeferenced and info.is_geographic
    depth_path, filled_path, sinks_path = paths
    return SinkResult(
        depth_path=depth_path,
        filled_path=filled_path,
        sinks_path=sinks_path,
        sink_cells=int(mask.sum()),
        sinks=sinks,
        max_depth=float(result[mask].max()) if mask.any() else 0.0,
        volume=float((np.where(mask, result, 0.0) * pa).sum()),
        area_unit="m²" if geographic else ("map units²" if info.georeferenced else "pixels"),
    )


def _sink_stats(depth, mask, info: RasterInfo, min_area):
    """Label 8-connected sinks; per kept sink (area >= ``min_area``) its statistics, and the
    label raster renumbered 1..n in raster scan order (0: not a kept sink)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=EIGHT)
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
    new_id = np.zeros(count + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    rows = [
        {
            "sink_id": i + 1,
            "max_depth": float(top[old]),
            "mean_depth": float(volume[old] / area[old]) if area[old] > 0 else 0.0,
            "area": float(area[old]),
            "volume": float(volume[old]),
        }
        for i, old in enumerate(keep)
    ]
    return new_id[labels], rows


def _pieces(labels: np.ndarray, info: RasterInfo) -> dict:
    """Polygons of the 4-connected pieces of each label value: {value: [polygon, ...]}."""
    mem = gdal.GetDriverByName("MEM").Create("", info.width, info.height, 1, gdal.GDT_Int32)
    mem.SetGeoTransform(list(info.geotransform))
    mem.GetRasterBand(1).WriteArray(labels)
    vmem = ogr.GetDriverByName("Memory").CreateDataSource("pieces")
    layer = vmem.CreateLayer("pieces", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    band = mem.GetRasterBand(1)
    gdal.Polygonize(band, band, layer, 0, [])
    parts: dict = {}
    for feature in layer:
        parts.setdefault(feature.GetField(0), []).append(feature.GetGeometryRef().Clone())
    return parts


def _sink_polygons(outputs: OutputSet, dest, depth, mask, info: RasterInfo, min_area, reporter):
    """One (multi)polygon per 8-connected sink with its depth, area and volume statistics."""
    labels, rows = _sink_stats(depth, mask, info, min_area)
    reporter.fraction(0.3)
    # Polygonize 4-connected pieces, then join the pieces of each 8-connected sink.
    parts = _pieces(labels, info)
    reporter.fraction(0.7)
    fields = [("sink_id", ogr.OFTInteger)] + [(n, ogr.OFTReal) for n in SINK_FIELDS[1:]]
    out = outputs.vector(dest, info.projection, ogr.wkbMultiPolygon, fields)
    for row in rows:
        reporter.check()
        geom = ogr.Geometry(ogr.wkbMultiPolygon)
        for piece in parts.get(row["sink_id"], ()):
            geom.AddGeometry(piece)
        out.add(geom, row)
    reporter.fraction(1.0)
    return out, rows


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
    memory_limit_gb: float | None = None,
    reporter: Reporter | None = None,
) -> SinkResult:
    """Depth of water in each depression of the DEM ``src`` (band ``band``).

    ``depth_dest`` gets filled - DEM (Float32, 0 where the depth is not above ``min_depth``,
    nodata kept), ``filled_dest`` the filled DEM, ``sinks_dest`` polygons of the connected sink
    cells at least ``min_area`` large. ``max_depth`` caps each cell's depth. A DEM needing more
    memory than ``memory_limit_gb`` (default: ``budget.memory_limit``) is refused up front. The
    outputs land together or not at all (``OutputSet``).
    """
    reporter = reporter or Reporter()
    sinks_path = split_sinks_path(sinks_dest)
    _check_request(src, (depth_dest, filled_dest, sinks_path), max_depth, min_depth, min_area)
    folder = os.path.dirname(os.path.abspath(depth_dest))
    dem = load_dem(src, band, (folder, memory_limit_gb), reporter.sub(0.0, 0.1))
    filled = fill_dem(dem, folder, reporter.sub(0.1, 0.65))
    depth, mask = sink_depth(dem, filled, max_depth, min_depth)
    del filled
    result, out_nodata = depth_raster(dem, depth, mask, reporter)
    with OutputSet() as outputs:
        written = _write_outputs(
            outputs,
            dem,
            (depth, result, mask, out_nodata),
            reporter,
            min_area,
            (depth_dest, filled_dest, sinks_dest),
        )
        outputs.commit(reporter)
    uris = [out.uri if out is not None else None for out in written[:3]]
    return _summary(dem, result, mask, uris, written[3])


def _write_outputs(outputs: OutputSet, dem: Dem, arrays, reporter: Reporter, min_area, dests):
    """(depth, filled or None, polygons or None, polygon count) written into ``outputs``."""
    depth, result, mask, out_nodata = arrays
    depth_dest, filled_dest, sinks_dest = dests
    info = dem.info
    depth_out = _write(
        outputs, depth_dest, result, info, gdal.GDT_Float32, out_nodata, reporter.sub(0.65, 0.8)
    )
    deepest = float(result[mask].max()) if mask.any() else 0.0
    # Cells outside sinks (depth 0) are transparent: the sinks show over any basemap.
    outputs.style(depth_out, ramp_style(0.0, deepest, "blues", transparent_zero=True))
    filled_out = sinks_out = None
    if filled_dest:
        filled_out = _write_filled(outputs, filled_dest, dem, depth, reporter.sub(0.8, 0.85))
    rows: list = []
    if sinks_dest:
        sinks_out, rows = _sink_polygons(
            outputs, sinks_dest, result, mask, info, min_area, reporter.sub(0.85, 1.0)
        )
        top = max((row["max_depth"] for row in rows), default=deepest)
        outputs.style(sinks_out, graduated_style("max_depth", 0.0, top, "blues"))
    return depth_out, filled_out, sinks_out, len(rows)


def split_sinks_path(dest: str | None) -> str | None:
    if not dest:
        return None
    from ..io.vector import driver_for, split_destination

    path = split_destination(dest)[0]
    driver_for(path)  # fail early on an extension OGR cannot write
    return path

"""Class raster -> polygons with class, name, area and perimeter, streamed through GDAL.

The raster is never loaded whole: ``gdal.SieveFilter`` and ``gdal.Polygonize`` read scanlines,
ignore values and nodata become a mask band (GDAL's own nodata mask, or a temporary Byte mask
written window by window), and polygons go to a temporary FlatGeobuf file that is then read
feature by feature to measure, simplify or dissolve them into the destination (one transaction).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr, osr

from ..errors import CanceledError, MapSegError
from ..io.gdal_errors import engine_call
from ..io.outputs import OutputSet
from ..io.raster import (
    RasterInfo,
    block_size,
    check_band,
    check_destination,
    open_raster,
    raster_info,
    read_classes,
    valid_mask,
    windows,
)
from ..io.styles import categorized_style
from ..io.vector import VectorWriter, measure, split_destination
from ..progress import Reporter

# Types gdal.Polygonize reads exactly (it works on Int32); anything else is scanned first.
EXACT_TYPES = {gdal.GDT_Byte, gdal.GDT_UInt16, gdal.GDT_Int16, gdal.GDT_Int32}
if hasattr(gdal, "GDT_Int8"):
    EXACT_TYPES.add(gdal.GDT_Int8)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FIELDS = [
    ("class", ogr.OFTInteger),
    ("name", ogr.OFTString),
    ("area", ogr.OFTReal),
    ("perimeter", ogr.OFTReal),
]


@dataclass
class PolygonizeResult:
    path: str
    uri: str  # what QGIS opens: the file, or x.gpkg|layername=name
    features: int
    layer_name: str
    classes: Dict[int, Tuple[int, float]] = field(default_factory=dict)  # value -> (n, area)
    colors: Dict[int, tuple] = field(default_factory=dict)
    names: Dict[int, str] = field(default_factory=dict)
    area_unit: str = ""


def parse_ignore_values(text: str | Sequence | None) -> List[int]:
    """``"0, 255"`` -> ``[0, 255]``; commas, semicolons or spaces separate integers."""
    if text is None:
        return []
    items = text if not isinstance(text, str) else [t for t in re.split(r"[,;\s]+", text) if t]
    values = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number != int(number):
            raise MapSegError(
                f"IGNORE_VALUES must be whole class values separated by commas, such as "
                f"'0,255'; '{item}' is not a whole number."
            )
        values.append(int(number))
    return sorted(set(values))


def _gdal_callback(reporter: Reporter):
    def callback(complete, message, data):
        if reporter.canceled():
            return 0  # GDAL stops and raises; we turn that into CanceledError
        reporter.fraction(complete)
        return 1

    return callback


def _run_gdal(reporter: Reporter, what: str, fn, *args, **kwargs):
    try:
        return fn(*args, callback=_gdal_callback(reporter), **kwargs)
    except RuntimeError as err:
        if reporter.canceled():
            raise CanceledError() from None
        raise MapSegError(f"GDAL failed while {what}: {err}") from None


def _temp_raster(path: str, like: gdal.Dataset, gdal_type: int) -> gdal.Dataset:
    ds = gdal.GetDriverByName("GTiff").Create(
        path,
        like.RasterXSize,
        like.RasterYSize,
        1,
        gdal_type,
        options=["TILED=YES", "COMPRESS=ZSTD", "ZSTD_LEVEL=1", "BIGTIFF=IF_SAFER", "SPARSE_OK=NO"],
    )
    gt = like.GetGeoTransform(can_return_null=True)
    if gt:
        ds.SetGeoTransform(gt)
    if like.GetProjection():
        ds.SetProjection(like.GetProjection())
    return ds


def _scan_and_mask(band, nodata, ignore, mask_path, like, reporter) -> Tuple[gdal.Band, int]:
    """One windowed pass: refuse fractional values and write the valid-pixel mask."""
    mask_ds = _temp_raster(mask_path, like, gdal.GDT_Byte)
    mask_band = mask_ds.GetRasterBand(1)
    bw, bh = block_size(like)
    wins = list(windows(like.RasterXSize, like.RasterYSize, bw, bh))
    kept = 0
    for i, (x, y, w, h) in enumerate(wins):
        arr = band.ReadAsArray(x, y, w, h)
        ok = valid_mask(arr, nodata)
        if ignore:
            ok &= ~np.isin(arr, ignore)
        if arr.dtype.kind in "fui" and band.DataType not in EXACT_TYPES:
            vals = arr[ok]
            bad = (vals != np.round(vals)) | (vals < INT32_MIN) | (vals > INT32_MAX)
            if bad.any():
                raise MapSegError(
                    f"The class band holds values that are not whole classes (e.g. "
                    f"{vals[bad][0]!r}). Polygonize Classes needs integer class values, as "
                    "Segment Raster writes; round or reclassify the raster first, or set its "
                    "nodata value."
                )
        kept += int(ok.sum())
        mask_band.WriteArray(ok.astype(np.uint8), x, y)
        reporter.fraction((i + 1) / len(wins))
    mask_band.FlushCache()
    return mask_ds, kept


def pixel_threshold(min_area: float, ds: gdal.Dataset, srs: osr.SpatialReference | None) -> int:
    """MIN_AREA (map units², m² in geographic CRSs) -> SieveFilter's pixel threshold."""
    if min_area <= 0:
        return 0
    info = raster_info(ds)
    if srs is not None and srs.IsGeographic():
        # Pixel area in m² at the raster's centre: pixels shrink towards the poles.
        gt = info.geotransform
        cx, cy = info.width // 2, info.height // 2
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1), (0, 0)):
            px, py = cx + dx, cy + dy
            ring.AddPoint_2D(gt[0] + px * gt[1] + py * gt[2], gt[3] + px * gt[4] + py * gt[5])
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        pixel_area = measure(poly, srs)[0]
    else:
        pixel_area = info.pixel_area
    # A patch of n pixels is merged when n * pixel_area < min_area.
    return max(1, math.ceil(round(min_area / pixel_area, 9)))


@dataclass
class ClassBand:
    """The opened class raster: keep ``ds`` alive as long as ``band`` is used."""

    ds: gdal.Dataset
    band: gdal.Band
    info: RasterInfo
    srs: osr.SpatialReference | None
    nodata: float | None
    colors: dict
    names: dict


def open_class_band(src: str, band: int) -> ClassBand:
    ds = open_raster(src)
    src_band = check_band(ds, band)
    if gdal.DataTypeIsComplex(src_band.DataType):
        raise MapSegError("The class band is complex-valued; choose an integer class raster.")
    info = raster_info(ds)
    colors, names = read_classes(src_band)
    return ClassBand(ds, src_band, info, info.srs(), info.nodata[band - 1], colors, names)


def _progress_spans(reporter: Reporter, scan: bool, sieve: bool) -> Dict[str, Reporter]:
    """Progress weights: the scan and sieve read the raster once each; polygonize builds
    rings; the write measures every polygon."""
    steps = [("scan", 1.0 if scan else 0.0), ("sieve", 2.0 if sieve else 0.0)]
    steps += [("polygonize", 4.0), ("write", 2.0)]
    total, acc, spans = sum(w for _, w in steps), 0.0, {}
    for name, w in steps:
        spans[name] = reporter.sub(acc / total, (acc + w) / total)
        acc += w
    return spans


def _mask_band(classes: ClassBand, ignore, scan: bool, tmp: str, reporter: Reporter):
    """(mask dataset to keep alive or None, mask band or None for all valid)."""
    if scan:
        mask_ds, kept = _scan_and_mask(
            classes.band,
            classes.nodata,
            ignore,
            os.path.join(tmp, "mask.tif"),
            classes.ds,
            reporter,
        )
        if kept == 0:
            raise _empty_error(ignore, classes.nodata)
        return mask_ds, mask_ds.GetRasterBand(1)
    if classes.band.GetMaskFlags() & gdal.GMF_ALL_VALID:
        return None, None
    return None, classes.band.GetMaskBand()  # GDAL's nodata mask, computed block by block


def _sieved(classes: ClassBand, mask, threshold, eight, tmp, reporter):
    """(dataset to keep alive or None, the class band with small patches merged away)."""
    if threshold <= 1:
        return None, classes.band
    sieve_ds = _temp_raster(os.path.join(tmp, "sieved.tif"), classes.ds, gdal.GDT_Int32)
    out = sieve_ds.GetRasterBand(1)
    reporter.info(f"Merging patches smaller than {threshold} pixels into neighbours.")
    _run_gdal(
        reporter,
        "merging small patches",
        gdal.SieveFilter,
        classes.band,
        mask,
        out,
        threshold,
        8 if eight else 4,
    )
    return sieve_ds, out


def _polygonize_to_file(band, mask, srs, eight, path: str, reporter: Reporter) -> int:
    """gdal.Polygonize into a FlatGeobuf file; returns the polygon count."""
    vds = ogr.GetDriverByName("FlatGeobuf").CreateDataSource(path)
    vlayer = vds.CreateLayer("polygons", srs, ogr.wkbPolygon, ["SPATIAL_INDEX=NO"])
    vlayer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
    options = ["8CONNECTED=8"] if eight else []
    _run_gdal(reporter, "polygonizing", gdal.Polygonize, band, mask, vlayer, 0, options)
    count = vlayer.GetFeatureCount()
    vlayer = None
    vds = None  # closing writes the FlatGeobuf header
    return count


def _write_output(outputs: OutputSet, polygons_path, dest, classes: ClassBand, options, reporter):
    """Measure (and simplify or dissolve) the polygons into a writer of ``outputs``; returns
    ({class: (polygons, area)}, the writer)."""
    simplify, dissolve, count = options
    vds = ogr.Open(polygons_path)
    polygons = vds.GetLayer(0)
    geom_type = ogr.wkbMultiPolygon if dissolve else ogr.wkbPolygon
    writer = outputs.vector(dest, classes.info.projection, geom_type, FIELDS)
    write = _write_dissolved if dissolve else _write_polygons
    stats = write(vds, polygons, writer, classes.srs, simplify, classes.names, count, reporter)
    present = [
        {"value": v, "name": classes.names.get(v), "color": classes.colors.get(v)}
        for v in sorted(stats)
    ]
    outputs.style(writer, categorized_style("class", present))
    return stats, writer


@engine_call
def polygonize_classes(
    src: str,
    dest: str,
    band: int = 1,
    ignore_values: Sequence[int] | str = (),
    min_area: float = 0.0,
    eight_connected: bool = False,
    simplify: float = 0.0,
    dissolve: bool = False,
    reporter: Reporter | None = None,
) -> PolygonizeResult:
    """Polygonize a class raster into ``dest`` (.gpkg, .shp, .geojson, .fgb)."""
    reporter = reporter or Reporter()
    ignore = parse_ignore_values(ignore_values)
    if min_area < 0 or simplify < 0:
        raise MapSegError("MIN_AREA and SIMPLIFY must be zero or positive.")
    destination = dest
    dest = check_destination(split_destination(dest)[0], [src])
    classes = open_class_band(src, band)
    threshold = pixel_threshold(min_area, classes.ds, classes.srs)
    scan = bool(ignore) or classes.band.DataType not in EXACT_TYPES
    spans = _progress_spans(reporter, scan, threshold > 1)
    with tempfile.TemporaryDirectory(
        prefix=".mapseg-polygonize-", dir=os.path.dirname(dest)
    ) as tmp:
        mask_ds, mask = _mask_band(classes, ignore, scan, tmp, spans["scan"])
        sieve_ds, class_band = _sieved(
            classes, mask, threshold, eight_connected, tmp, spans["sieve"]
        )
        tmp_vec = os.path.join(tmp, "polygons.fgb")
        count = _polygonize_to_file(
            class_band, mask, classes.srs, eight_connected, tmp_vec, spans["polygonize"]
        )
        del class_band, mask, sieve_ds, mask_ds  # close the scratch rasters before cleanup
        if count == 0:
            raise _empty_error(ignore, classes.nodata)
        with OutputSet() as outputs:
            stats, writer = _write_output(
                outputs, tmp_vec, destination, classes, (simplify, dissolve, count), spans["write"]
            )
            outputs.commit(reporter)
    reporter.fraction(1.0)
    return _result(writer, classes, stats, count if not dissolve else len(stats))


def _result(writer: VectorWriter, classes: ClassBand, stats, features) -> PolygonizeResult:
    srs = classes.srs
    return PolygonizeResult(
        path=writer.dest,
        uri=writer.uri,
        features=features,
        layer_name=writer.layer_name,
        classes=stats,
        colors={k: v for k, v in classes.colors.items() if k in stats},
        names={k: v for k, v in classes.names.items() if k in stats},
        area_unit="m²" if srs is not None and srs.IsGeographic() else "map units²",
    )


def _empty_error(ignore, nodata) -> MapSegError:
    return MapSegError(
        "The class raster has no pixels to polygonize: every pixel is nodata "
        f"({nodata}) or one of IGNORE_VALUES {ignore}. Check the band and IGNORE_VALUES."
    )


def _simplified(geom: ogr.Geometry, tolerance: float) -> ogr.Geometry:
    if tolerance <= 0:
        return geom
    out = geom.SimplifyPreserveTopology(tolerance)
    return geom if out is None or out.IsEmpty() else out


def _write_polygons(vds, layer, writer, srs, simplify, names, count, reporter) -> dict:
    stats: Dict[int, Tuple[int, float]] = {}
    step = max(1, count // 200)
    for i, feat in enumerate(layer):
        value = feat.GetFieldAsInteger(0)
        geom = _simplified(feat.GetGeometryRef(), simplify)
        area, perimeter = measure(geom, srs)
        writer.add(
            geom, {"class": value, "name": names.get(value), "area": area, "perimeter": perimeter}
        )
        n, a = stats.get(value, (0, 0.0))
        stats[value] = (n + 1, a + area)
        if i % step == 0:
            reporter.fraction(i / count)
    return stats


def _write_dissolved(vds, layer, writer, srs, simplify, names, count, reporter) -> dict:
    """One multipolygon per class: same-class polygons never share edges, so collecting them
    is a valid dissolve (they touch at most at corners) and needs no union."""
    result = vds.ExecuteSQL(f'SELECT DISTINCT "class" FROM "{layer.GetName()}"')
    values = sorted(f.GetFieldAsInteger(0) for f in result)
    vds.ReleaseResultSet(result)
    stats: Dict[int, Tuple[int, float]] = {}
    for k, value in enumerate(values):
        layer.SetAttributeFilter(f'"class" = {value}')
        multi = ogr.Geometry(ogr.wkbMultiPolygon)
        n = 0
        for feat in layer:
            multi.AddGeometry(feat.GetGeometryRef())
            n += 1
            reporter.check()
        geom = _simplified(multi, simplify)
        area, perimeter = measure(geom, srs)
        writer.add(
            geom, {"class": value, "name": names.get(value), "area": area, "perimeter": perimeter}
        )
        stats[value] = (n, area)
        reporter.fraction((k + 1) / len(values))
    layer.SetAttributeFilter(None)
    return stats

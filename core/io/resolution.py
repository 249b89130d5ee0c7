"""Pixel size versus the model's training pixel size, and processing at the model's resolution.

A network sees objects at the scale it was trained on: a 10 m model on 0.5 m imagery sees
every field as a texture. Sizes are compared only when both CRSs have the same kind of unit
(both projected -> metres, both geographic -> degrees); otherwise nothing can be said.

Resampling (RESAMPLE_TO_MODEL): the input is warped into a VRT at the model's pixel size
(nothing is copied to disk), segmented, and the classes are warped back onto the input grid by
nearest neighbour, so the output stays on the input grid and holds only class values.

Coarser processing (RESOLUTION medium/low): ``coarsen`` makes a VRT of the input at 2x or 4x
the pixel size (averaged; same extent, CRS and rotation), which is segmented and written as is:
the output is on the coarser grid. ``select_bands`` makes a VRT of chosen bands (BANDS).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Tuple

from osgeo import gdal, osr

from ..progress import Reporter
from .masks import alpha_mask, warp_vrt
from .raster import RasterInfo, block_size, windows
from .tiling import Window, extent_window
from .windows import BandWindows

FAR_FACTOR = 1.5


def _unit(wkt_or_srs) -> Tuple[str, float] | None:
    """("metre", metres per unit) or ("degree", degrees per unit); None if unknown."""
    srs = wkt_or_srs
    if isinstance(wkt_or_srs, str):
        if not wkt_or_srs:
            return None
        srs = osr.SpatialReference()
        try:
            srs.ImportFromWkt(wkt_or_srs)
        except RuntimeError:
            return None
    if srs is None:
        return None
    if srs.IsGeographic():
        return "degree", srs.GetAngularUnits() * 180.0 / math.pi
    if srs.IsProjected() or srs.IsLocal():
        return "metre", srs.GetLinearUnits()
    return None


def _mean_size(size) -> float | None:
    if size is None:
        return None
    if isinstance(size, (int, float)):
        return float(size) if size > 0 else None
    values = [abs(float(v)) for v in size if v]
    return math.sqrt(values[0] * values[-1]) if values else None


def check_pixel_size(
    info: RasterInfo, meta: dict, warn: Callable[[str], None]
) -> Tuple[float, Tuple[float, float]] | None:
    """(input / model size factor, model pixel size in input units), or None if not comparable.

    Warns when the factor is beyond 1.5 either way.
    """
    model_size = _mean_size(meta.get("pixel_size"))
    model_unit, input_unit = _unit(meta.get("crs_wkt") or ""), _unit(info.srs())
    if not model_size or not model_unit or not input_unit or model_unit[0] != input_unit[0]:
        return None
    px, py = info.pixel_size
    input_size = math.sqrt(px * py) * input_unit[1]
    model_size *= model_unit[1]
    factor = input_size / model_size
    kind = "m" if input_unit[0] == "metre" else "degrees"
    if factor > FAR_FACTOR or factor < 1.0 / FAR_FACTOR:
        warn(
            f"The input's pixel size ({input_size:.4g} {kind}) is {factor:.3g} times the "
            f"model's training pixel size ({model_size:.4g} {kind}): objects look "
            f"{'smaller' if factor > 1 else 'larger'} than the model learned and results may be "
            "poor. Set RESAMPLE_TO_MODEL to process at the model's resolution, or use a model "
            "trained at this resolution."
        )
    target = model_size / input_unit[1]
    return factor, (target, target)


def warp_to_model(
    ds: gdal.Dataset, info: RasterInfo, window: Window, target: Tuple[float, float], folder: str
) -> Tuple[str, Window]:
    """A VRT of the whole input at ``target`` pixel size and the window covering ``window``.

    The VRT spans the raster's whole (north-up) bounding box, so its tile grid is anchored to
    the raster, not to the extent.
    """
    gt = info.geotransform

    def corners(win: Window):
        x, y, w, h = win
        pts = [(x, y), (x + w, y), (x, y + h), (x + w, y + h)]
        xs = [gt[0] + c * gt[1] + r * gt[2] for c, r in pts]
        ys = [gt[3] + c * gt[4] + r * gt[5] for c, r in pts]
        return min(xs), min(ys), max(xs), max(ys)

    left, bottom, right, top = corners((0, 0, info.width, info.height))
    # Whole target pixels covering the raster: GDAL rounds the size to the nearest pixel, so a
    # grid that stops short of the raster's edge left its last columns or rows nodata.
    cols = math.ceil((right - left) / target[0] - 1e-6)
    rows = math.ceil((top - bottom) / target[1] - 1e-6)
    bounds = (left, top - rows * target[1], left + cols * target[0], top)
    downsampling = target[0] > info.pixel_size[0]
    path = os.path.join(folder, "input_at_model_resolution.vrt")
    vrt = warp_vrt(  # a mask (e.g. an RGBA orthophoto's alpha, masks.py) stays a mask
        path,
        ds,
        format="VRT",
        outputBounds=bounds,
        xRes=target[0],
        yRes=target[1],
        resampleAlg="average" if downsampling else "bilinear",
        options=["-nosrcalpha"],  # a 4th band of RGBA imagery is data, not a mask
    )
    vgt, vw, vh = vrt.GetGeoTransform(), vrt.RasterXSize, vrt.RasterYSize
    vrt = None
    x, y, w, h = extent_window(vgt, vw, vh, corners(window))
    # one pixel of margin so nearest-neighbour resampling back never reads past the result
    x0, y0 = max(0, x - 1), max(0, y - 1)
    x1, y1 = min(vw, x + w + 1), min(vh, y + h + 1)
    return path, (x0, y0, x1 - x0, y1 - y0)


def warp_back(src_path: str, dst: gdal.Dataset, nodata: float) -> None:
    """Nearest-neighbour warp of a class (or probability) raster onto ``dst``'s grid."""
    gdal.Warp(
        dst,
        src_path,
        resampleAlg="near",
        srcNodata=nodata,
        dstNodata=nodata,
        warpOptions=["INIT_DEST=NO_DATA"],
    )


def mask_nodata(ds: gdal.Dataset, window: Window, out, nodata: float, reporter: Reporter):
    """Set ``out`` to ``nodata`` exactly where any input band is nodata, block by block."""
    reader = BandWindows(ds)
    if not reader.maskable:
        return
    wx, wy, ww, wh = window
    bw, bh = block_size(ds)
    target = out.band()
    for x, y, w, h in windows(ww, wh, bw, bh):
        bad = ~reader.valid((wx + x, wy + y, w, h))
        if bad.any():
            arr = target.ReadAsArray(x, y, w, h)
            arr[bad] = nodata
            target.WriteArray(arr, x, y)
        reporter.check()


def select_bands(path: str, bands: list[int], folder: str) -> str:
    """A VRT of ``bands`` (1-based, in that order) of ``path``; nothing is copied."""
    out = os.path.join(folder, "input_bands.vrt")
    # an alpha band left out becomes the VRT's mask: alpha 0 is nodata (core.io.masks)
    mask = alpha_mask(gdal.Open(path), bands)
    gdal.Translate(out, path, format="VRT", bandList=list(bands), maskBand=mask)
    return out


def coarsen(path: str, factor: int, folder: str) -> str:
    """A VRT of ``path`` with pixels ``factor`` times larger (block average), same extent.

    The size is rounded (at least 1 pixel) and the pixel size adjusted so the extent stays
    exactly the input's. North-up rasters are warped (the average skips nodata pixels);
    rotated or ungeoreferenced ones are resampled by ``gdal.Translate``, which keeps the
    rotation terms.
    """
    ds = gdal.Open(path)
    width = max(1, int(round(ds.RasterXSize / factor)))
    height = max(1, int(round(ds.RasterYSize / factor)))
    gt = ds.GetGeoTransform(can_return_null=True)
    out = os.path.join(folder, f"input_coarse_{factor}x.vrt")
    if gt and gt[2] == 0 and gt[4] == 0 and ds.GetProjection():
        bounds = (
            min(gt[0], gt[0] + ds.RasterXSize * gt[1]),
            min(gt[3], gt[3] + ds.RasterYSize * gt[5]),
            max(gt[0], gt[0] + ds.RasterXSize * gt[1]),
            max(gt[3], gt[3] + ds.RasterYSize * gt[5]),
        )
        warp_vrt(  # a mask (e.g. an RGBA orthophoto's alpha, masks.py) stays a mask
            out,
            ds,
            format="VRT",
            outputBounds=bounds,
            width=width,
            height=height,
            resampleAlg="average",
            options=["-nosrcalpha"],  # a 4th band of RGBA imagery is data, not a mask
        )
    else:
        gdal.Translate(out, ds, format="VRT", width=width, height=height, resampleAlg="average")
    return out

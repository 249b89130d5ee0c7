"""What SAM sees of a raster: a processing grid, 8-bit RGB windows, masks back to polygons.

SAM takes 8-bit RGB. Byte imagery is used as stored; 16-bit and float bands are stretched to
0..255 between their 1st and 99th percentiles measured on sampled windows with nodata excluded
(``core.io.normalize.band_stats``), so a scene stored in 0..4000 is not black. Windows are read one
at a time (never the whole raster), at the raster's resolution or a coarser processing pixel
size resampled by averaging. Where the raster holds no data (a band's nodata, an explicit mask,
an RGBA orthophoto's alpha left out of the three bands: ``BandWindows``' rule) the image is
black and the window's valid mask False, so masks can be clipped to the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr

from ..errors import MapSegError
from ..io.masks import alpha_mask
from ..io.normalize import band_stats
from ..io.raster import RasterInfo, check_band, raster_info
from ..io.windows import BandWindows

Rect = Tuple[int, int, int, int]  # x, y, width, height in processing pixels


def sam_bands(ds: gdal.Dataset, bands: Sequence[int] | None) -> List[int]:
    """Three bands for SAM's RGB input: the given ones, or 1-2-3, or one band three times."""
    bands = [int(b) for b in (bands or [])]
    if not bands:
        bands = [1, 2, 3] if ds.RasterCount >= 3 else [1, 1, 1]
    if len(bands) == 1:
        bands = bands * 3
    if len(bands) != 3:
        raise MapSegError(
            f"SAM takes three bands (red, green, blue); {len(bands)} were given. Choose three "
            "bands, or one band to use as grey."
        )
    for b in bands:
        check_band(ds, b)
    return bands


@dataclass
class Grid:
    """The processing grid: the raster resampled to ``scale`` source pixels per pixel."""

    info: RasterInfo
    scale: float
    width: int
    height: int

    @property
    def geotransform(self) -> Tuple[float, ...]:
        g, s = self.info.geotransform, self.scale
        return (g[0], g[1] * s, g[2] * s, g[3], g[4] * s, g[5] * s)

    @property
    def pixel_area(self) -> float:
        return self.info.pixel_area * self.scale * self.scale

    def rect_geotransform(self, rect: Rect, factor: float = 1.0) -> Tuple[float, ...]:
        """Geotransform of ``rect`` read with ``factor`` processing pixels per image pixel."""
        g = self.geotransform
        x, y = rect[0], rect[1]
        return (
            g[0] + x * g[1] + y * g[2],
            g[1] * factor,
            g[2] * factor,
            g[3] + x * g[4] + y * g[5],
            g[4] * factor,
            g[5] * factor,
        )

    def to_pixel(self, mx: float, my: float) -> Tuple[float, float]:
        inv = gdal.InvGeoTransform(self.geotransform)
        return inv[0] + mx * inv[1] + my * inv[2], inv[3] + mx * inv[4] + my * inv[5]


def make_grid(ds: gdal.Dataset, pixel_size: float | None = None) -> Grid:
    info = raster_info(ds)
    native = info.pixel_size[0]
    scale = 1.0
    if pixel_size and native > 0 and pixel_size > native * (1 + 1e-9):
        scale = float(pixel_size) / native
    # Whole processing pixels only: a sliver narrower than one is left out at the far edges.
    width = max(1, int(math.floor(info.width / scale + 1e-9)))
    height = max(1, int(math.floor(info.height / scale + 1e-9)))
    return Grid(info, scale, width, height)


class ImageSource:
    """Reads processing-grid rectangles as (rows, cols, 3) uint8 RGB arrays and valid masks."""

    def __init__(self, ds: gdal.Dataset, bands: Sequence[int], grid: Grid) -> None:
        # The three bands as one in-memory VRT, an alpha band left out as its mask: every read
        # below (native or averaged) then sees nodata and masks alike (core.io.masks).
        alpha = alpha_mask(ds, bands)
        self.source = ds  # the VRT reads through it: it must outlive the VRT
        self.ds = gdal.Translate("", ds, format="VRT", bandList=list(bands), maskBand=alpha)
        self.grid = grid
        types = {self.ds.GetRasterBand(b).DataType for b in (1, 2, 3)}
        # Byte imagery is what SAM was trained on: keep it; stretch everything else.
        self.stats = None if types == {gdal.GDT_Byte} else band_stats([self.ds])

    def read(
        self, rect: Rect, out_size: Tuple[int, int] | None = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """``rect`` in processing pixels, resampled to ``out_size`` (cols, rows) if given: the
        RGB image (black where there is no data) and (rows, cols) True where there is data."""
        x, y, w, h = rect
        cols, rows = out_size or (w, h)
        s = self.grid.scale
        src, win = self.ds, (x, y, w, h)
        if s != 1.0 or (cols, rows) != (w, h):
            # averaged over the data only; the mask comes along as the copy's own mask
            src, win = self._resampled(rect, cols, rows), (0, 0, cols, rows)
        reader = BandWindows(src)
        raw = reader.raw(win)
        valid = reader.valid(win, raw)
        block = raw.astype(np.float32)
        if self.stats is not None:
            for i, st in enumerate(self.stats):
                block[i] = (block[i] - st["low"]) * (255.0 / max(st["high"] - st["low"], 1e-12))
        out = np.clip(np.nan_to_num(block), 0, 255).round().astype(np.uint8)
        out[:, ~valid] = 0
        return np.ascontiguousarray(out.transpose(1, 2, 0)), valid

    def _resampled(self, rect: Rect, cols: int, rows: int) -> gdal.Dataset:
        x, y, w, h = rect
        s = self.grid.scale
        return gdal.Translate(
            "",
            self.ds,
            format="MEM",
            srcWin=[x * s, y * s, w * s, h * s],
            width=cols,
            height=rows,
            resampleAlg="average",
        )


def mask_to_geometry(mask: np.ndarray, geotransform: Sequence[float]) -> ogr.Geometry | None:
    """The union of a boolean mask's pixels as one MultiPolygon in map coordinates."""
    if not mask.any():
        return None
    rows, cols = mask.shape
    src = gdal.GetDriverByName("MEM").Create("", cols, rows, 1, gdal.GDT_Byte)
    src.SetGeoTransform(list(geotransform))
    band = src.GetRasterBand(1)
    band.WriteArray(mask.astype(np.uint8))
    vec = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vec.CreateLayer("mask", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("v", ogr.OFTInteger))
    gdal.Polygonize(band, band, layer, 0, [])
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    for feature in layer:
        geom = feature.GetGeometryRef()
        if geom is not None and not geom.IsEmpty():
            multi.AddGeometry(geom)
    return multi if multi.GetGeometryCount() else None

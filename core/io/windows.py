"""Normalised windows of a raster's bands: the one read -> pad -> normalise -> zero-nodata step.

Inference tiles, label-free sampling, label-free training tiles and superpixel windows all read
their input through ``BandWindows``, so nodata and padding are treated alike everywhere: a
window reaching past the raster is reflect-padded (one-pixel rasters edge-padded), each band is
normalised with the model's statistics, and pixels that are nodata in any band are zeroed so
they never feed garbage values to their neighbours.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from osgeo import gdal

from .masks import explicit_mask, read_mask
from .normalize import normalise
from .raster import valid_mask
from .tiling import Window, read_padded

_FLOATS = (gdal.GDT_Float32, gdal.GDT_Float64)


class BandWindows:
    """Reads windows of ``bands`` (1-based; all bands when None) of ``ds``."""

    def __init__(self, ds: gdal.Dataset, stats: Sequence[dict], bands: Sequence[int] | None = None):
        self.ds, self.stats = ds, stats
        self.bands = list(bands) if bands else list(range(1, ds.RasterCount + 1))
        handles = [ds.GetRasterBand(b) for b in self.bands]
        self.nodata = [h.GetNoDataValue() for h in handles]
        # integer bands without a nodata value hold data everywhere: skip the mask
        self.maskable = any(h.DataType in _FLOATS for h in handles) or any(
            v is not None for v in self.nodata
        )
        self.mask = explicit_mask(ds, self.bands)  # e.g. an RGBA orthophoto's alpha (masks.py)
        self.maskable = self.maskable or self.mask is not None

    def raw(self, win: Window) -> np.ndarray:
        """(bands, rows, cols) in the raster's own data type; ``win`` inside the raster."""
        x, y, w, h = win
        block = self.ds.ReadAsArray(x, y, w, h, band_list=self.bands)
        return block.reshape(len(self.bands), h, w)

    def valid(self, block: np.ndarray) -> np.ndarray:
        """True where every band holds data."""
        ok = np.ones(block.shape[1:], dtype=bool)
        if self.maskable:
            for b, nodata in enumerate(self.nodata):
                ok &= valid_mask(block[b], nodata)
        return ok

    def read(
        self, win: Window, out: np.ndarray | None = None, padding_valid: bool = True
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Normalised (bands, h, w) float32 window (into ``out`` when given) and its valid mask.

        Pixels past the raster's edge are reflect-padded; they count as valid unless
        ``padding_valid`` is False. Invalid pixels are zero in the returned array.
        """
        block, (cw, ch) = read_padded(self.raw, win, self.ds.RasterXSize, self.ds.RasterYSize)
        x = normalise(block, self.stats, out=out)
        ok = self.valid(block)
        if self.mask is not None:
            size = (self.ds.RasterXSize, self.ds.RasterYSize)
            ok &= read_padded(lambda w: read_mask(self.mask, w)[None], win, *size)[0][0]
        if not padding_valid:
            ok[ch:, :] = False
            ok[:, cw:] = False
        if not ok.all():
            x[:, ~ok] = 0.0
        return x, ok

"""Dataset masks: an RGBA orthophoto's alpha band, or a raster's explicit mask, as nodata.

GDAL describes "which pixels hold data" per band (nodata values, handled by ``valid_mask``) and
per dataset: an alpha band, or an explicit mask band (an internal GeoTIFF mask, a ``.msk`` file,
a VRT ``<MaskBand>``). MapSeg treats them so:

- an explicit per-dataset mask is always honoured: its zeros are nodata in every band read;
- an alpha band is data when it is one of the bands fed to a model (a 4-band model trained on
  RGBA-tagged imagery keeps its 4th band) and the mask otherwise, but only when it looks like a
  mask: GDAL tags the 4th band of any 4-band Byte GeoTIFF as alpha by default, so a
  near-infrared band written that way must not blank the image. A mask holds (almost) only 0
  and its maximum; a near-infrared band holds a range of values.

``select_bands`` turns a chosen alpha band into the band-selection VRT's explicit mask, so every
reader downstream sees one kind of mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from osgeo import gdal

from .tiling import Window

# An alpha band is a mask when at least this share of sampled pixels is 0 or its maximum
# (anti-aliased edges of a feathered mosaic hold a few values in between).
MASK_SHARE = 0.99
_SAMPLES = 8  # sample windows per axis
_SAMPLE_SIZE = 256


def explicit_mask(ds: gdal.Dataset, bands: Sequence[int] | None = None) -> gdal.Band | None:
    """The dataset's explicit mask band (not an alpha band, not nodata), or None."""
    first = ds.GetRasterBand(int(bands[0]) if bands else 1)
    if first.GetMaskFlags() != gdal.GMF_PER_DATASET:
        return None
    return first.GetMaskBand()


def read_mask(mask: gdal.Band, win: Window) -> np.ndarray:
    """(rows, cols) True where the explicit mask says the pixel holds data."""
    return mask.ReadAsArray(*win) > 0


def _sample_windows(width: int, height: int) -> list[Window]:
    sw, sh = min(_SAMPLE_SIZE, width), min(_SAMPLE_SIZE, height)
    xs = np.unique(np.linspace(0, width - sw, _SAMPLES).astype(int))
    ys = np.unique(np.linspace(0, height - sh, _SAMPLES).astype(int))
    return [(int(x), int(y), sw, sh) for y in ys for x in xs]


def looks_like_mask(ds: gdal.Dataset, band: int) -> bool:
    """Whether band ``band`` holds (almost) only 0 and one maximum value, and some data."""
    handle = ds.GetRasterBand(band)
    values = np.concatenate(
        [
            handle.ReadAsArray(*win).ravel()
            for win in _sample_windows(ds.RasterXSize, ds.RasterYSize)
        ]
    )
    top = values.max()
    if not top > 0:
        return False  # all zero: a dark band, not an image that is entirely transparent
    return float(np.mean((values == 0) | (values == top))) >= MASK_SHARE


def alpha_band(ds: gdal.Dataset) -> int | None:
    """The 1-based band tagged alpha that looks like a mask (the last such band), or None."""
    for b in range(ds.RasterCount, 0, -1):
        if ds.GetRasterBand(b).GetColorInterpretation() == gdal.GCI_AlphaBand:
            return b if looks_like_mask(ds, b) else None
    return None


def alpha_mask(ds: gdal.Dataset, bands: Sequence[int]) -> int | None:
    """The alpha band that masks ``bands`` (an alpha band they do not include), or None."""
    alpha = alpha_band(ds)
    return alpha if alpha is not None and alpha not in [int(b) for b in bands] else None


def warp_vrt(path: str, ds: gdal.Dataset, **options) -> gdal.Dataset:
    """``gdal.Warp`` of ``ds`` into the VRT ``path``, keeping ``ds``'s explicit mask.

    The warper honours a source mask (masked pixels are left out of averages) but writes none:
    with one, it warps an alpha band along (the share of valid source pixels) and the VRT at
    ``path`` holds the data bands with that alpha band as its explicit mask.
    """
    if explicit_mask(ds) is None:
        return gdal.Warp(path, ds, **options)
    with_alpha = path[: -len(".vrt")] + "_alpha.vrt" if path.endswith(".vrt") else path + ".a"
    gdal.Warp(with_alpha, ds, dstAlpha=True, **options)
    n = ds.RasterCount
    return gdal.Translate(
        path, with_alpha, format="VRT", bandList=list(range(1, n + 1)), maskBand=n + 1
    )

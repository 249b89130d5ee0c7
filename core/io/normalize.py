"""Per-band normalisation statistics measured on training data.

Robust for 8-bit, 16-bit and float imagery alike: each band is clipped to its 1st..99th
percentile and scaled to [0, 1]. Never a blind /255: a 16-bit scene stored in 0..4000 and an
8-bit scene in 0..255 end up on the same footing, and a few saturated pixels do not squash the
rest of the histogram.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from osgeo import gdal

from ..errors import MapSegError
from .raster import Window

LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0


def sample_windows(width: int, height: int, size: int = 256, count: int = 64) -> list[Window]:
    """Up to ``count`` windows of ``size`` spread evenly over the raster (bounded I/O)."""
    size_x, size_y = min(size, width), min(size, height)
    per_axis = max(1, int(np.ceil(np.sqrt(count))))
    xs = np.unique(np.linspace(0, width - size_x, per_axis).astype(int))
    ys = np.unique(np.linspace(0, height - size_y, per_axis).astype(int))
    return [(int(x), int(y), size_x, size_y) for y in ys for x in xs]


def band_stats(
    datasets: Sequence[gdal.Dataset],
    bands: Sequence[int] | None = None,
    max_samples: int = 2_000_000,
) -> list[dict]:
    """Robust per-band ``{"offset", "scale", "low", "high", "mean", "std"}`` over ``datasets``.

    Pixels where any band is nodata or outside the raster's mask are excluded (``BandWindows``'
    rule), so an image border of zeros does not drag the low percentile down.
    """
    if not datasets:
        raise MapSegError("No raster was given to measure band statistics on.")
    from .windows import BandWindows  # windows.py imports normalise from here

    bands = list(bands or range(1, datasets[0].RasterCount + 1))
    samples: list[np.ndarray] = []
    for ds in datasets:
        reader = BandWindows(ds, bands=bands)
        for win in sample_windows(ds.RasterXSize, ds.RasterYSize):
            block = reader.raw(win)
            keep = reader.valid(win, block)
            if keep.any():
                samples.append(block[:, keep].astype(np.float32))
    if not samples:
        raise MapSegError(
            "Every sampled pixel is nodata: the rasters hold no data to learn from. Check the "
            "rasters' nodata value and extent."
        )
    values = np.concatenate(samples, axis=1)
    if values.shape[1] > max_samples:  # a fixed-stride subsample keeps this deterministic
        values = values[:, :: int(np.ceil(values.shape[1] / max_samples))]
    stats = []
    for row in values:
        low, high = np.percentile(row, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if not high > low:  # a constant band: keep it finite rather than dividing by zero
            high = low + 1.0
        stats.append(
            {
                "offset": float(low),
                "scale": float(high - low),
                "low": float(low),
                "high": float(high),
                "mean": float(row.mean()),
                "std": float(row.std()),
            }
        )
    return stats


def normalise(
    block: np.ndarray, stats: Sequence[dict], out: np.ndarray | None = None
) -> np.ndarray:
    """Clip each band to its training range and scale to [0, 1] (float32, in place if ``out``)."""
    if block.shape[0] != len(stats):
        raise MapSegError(
            f"The raster has {block.shape[0]} bands but the model expects {len(stats)}."
        )
    out = np.empty(block.shape, dtype=np.float32) if out is None else out
    for i, s in enumerate(stats):
        np.clip(block[i], s["low"], s["high"], out=out[i])
        out[i] -= s["offset"]
        out[i] *= 1.0 / s["scale"]
    if block.dtype.kind == "f":  # only float input can carry NaN or infinities
        np.nan_to_num(out, copy=False)
    return out

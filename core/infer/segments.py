"""Label-free Segment Raster: "divide the raster into K segments" with an embedding model.

Two passes keep ids stable and seamless:

1. ``fit_segments`` runs the network on a bounded number of tiles spread evenly over the
   processing window (tiles of the same raster-anchored grid the full run uses), samples valid
   pixels' embeddings, and fits one ``core.model.clustering.Segmenter`` (k-means; ids ordered by the
   mean brightness of the normalised input bands, so reruns give the same ids).
2. The normal tiled pipeline blends the embeddings like probabilities, and ``finalizer``
   assigns every blended pixel to those same centroids: no per-tile relabelling, no seams.

Also: the segment palette, and ``sieve`` (minimum mapping unit) for any class output.
"""

from __future__ import annotations

import colorsys
from typing import Callable, Sequence

import numpy as np
from osgeo import gdal

from ..errors import MapSegError
from ..io.raster import OutputRaster
from ..io.tiling import TileGrid, Window
from ..io.windows import BandWindows
from ..model.clustering import Segmenter
from ..progress import Reporter

MAX_SAMPLE_TILES = 24  # bounds pass 1's work and memory whatever the raster size
MAX_SAMPLES = 30_000  # k-means samples in all
MIN_SEGMENTS, MAX_SEGMENTS = 2, 50
# Distinct, colour-blind-friendlier first colours; more segments get golden-ratio hues.
BASE_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (255, 221, 87),
    (0, 0, 128),
]


def check_segments(k: int) -> int:
    if not MIN_SEGMENTS <= int(k) <= MAX_SEGMENTS:
        raise MapSegError(
            f"NUM_SEGMENTS must be between {MIN_SEGMENTS} and {MAX_SEGMENTS} (got {k})."
        )
    return int(k)


def segment_palette(k: int) -> tuple[dict, dict]:
    """({id: rgb}, {id: "Segment id"}) for ids 1..k, every colour different."""
    colors: dict[int, tuple] = {}
    for i in range(k):
        if i < len(BASE_COLORS):
            rgb = BASE_COLORS[i]
        else:
            h = (i * 0.618033988749895) % 1.0
            v = 0.95 if i % 2 else 0.7
            rgb = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, 0.75, v))
        while rgb in colors.values():  # never two segments with one colour
            rgb = (rgb[0], rgb[1], (rgb[2] + 37) % 256)
        colors[i + 1] = rgb
    return colors, {i: f"Segment {i}" for i in colors}


def sample_tiles(grid: TileGrid, window: Window, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` tiles of ``grid`` meeting ``window``, spread evenly (row-major order)."""
    tiles = list(grid.tiles(window))
    if len(tiles) <= count:
        return tiles
    (i0, i1), (j0, j1) = grid.tile_ranges(window)
    side = int(np.ceil(np.sqrt(count)))
    rows = np.unique(np.linspace(i0, i1, min(side, i1 - i0 + 1)).round().astype(int))
    cols = np.unique(np.linspace(j0, j1, max(1, count // len(rows))).round().astype(int))
    return [(int(i), int(j)) for i in rows for j in cols][:count]


def fit_segments(
    path: str,
    grid: TileGrid,
    window: Window,
    band_stats: Sequence[dict],
    forward: Callable[[np.ndarray], np.ndarray],
    k: int,
    batch: int,
    reporter: Reporter,
) -> Segmenter:
    """Pass 1: sample embeddings of valid pixels across ``window`` and fit k-means.

    ``forward`` maps a normalised (n, bands, T, T) batch to (n, D, T, T) raw embeddings.
    Only pixels inside the raster, inside the window and with data in every band are sampled.
    """
    ds = gdal.Open(path)
    reader = BandWindows(ds, band_stats)
    n_bands = len(reader.bands)
    tiles = sample_tiles(grid, window, MAX_SAMPLE_TILES)
    per_tile = max(k, MAX_SAMPLES // max(len(tiles), 1))
    rng = np.random.default_rng(0)
    feats, bright = [], []
    for start in range(0, len(tiles), batch):
        chunk = tiles[start : start + batch]
        x, keep = _read_sample_tiles(reader, grid, window, chunk)
        emb = forward(x)
        for n in range(len(chunk)):
            idx = np.flatnonzero(keep[n].ravel())
            if idx.size > per_tile:
                idx = np.sort(rng.choice(idx, size=per_tile, replace=False))
            feats.append(emb[n].reshape(emb.shape[1], -1)[:, idx].T)
            bright.append(x[n].reshape(n_bands, -1)[:, idx].mean(axis=0))
        reporter.fraction(0.8 * (start + len(chunk)) / len(tiles))
    ds = None
    samples = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    if len(samples) == 0:
        raise MapSegError(
            "Every sampled pixel of the extent is nodata: there is nothing to divide into "
            "segments. Check the raster's nodata value, or choose another extent."
        )
    reporter.info(f"Fitting {k} segments on {len(samples)} pixels from {len(tiles)} tiles.")
    segmenter = Segmenter.fit(samples, k, np.concatenate(bright), engine="numpy")
    reporter.fraction(1.0)
    return segmenter


def _read_sample_tiles(reader: BandWindows, grid: TileGrid, window: Window, chunk: list):
    """(normalised tiles, pixels to sample) for the tiles ``chunk`` of pass 1."""
    t, n_bands = grid.tile, len(reader.bands)
    wx, wy, ww, wh = window
    x = np.empty((len(chunk), n_bands, t, t), np.float32)
    keep = np.zeros((len(chunk), t, t), bool)
    for n, (i, j) in enumerate(chunk):
        tx, ty, _, _ = grid.tile_window(i, j)
        _, ok = reader.read((tx, ty, t, t), out=x[n])  # nodata zeroed, as in pass 2
        inside = np.zeros((t, t), bool)
        # inside the window (which lies inside the raster): real pixels only, no padding
        inside[max(wy - ty, 0) : max(wy + wh - ty, 0), max(wx - tx, 0) : max(wx + ww - tx, 0)] = 1
        ok &= inside
        # Pixels near a tile's edge lack context (padding artefacts, and pass 2 blends them
        # down): sample each pixel from the tile it is most central in. Half the overlap
        # from every edge leaves interiors that cover the grid without gaps, so no cover
        # of a small extent goes unsampled.
        inner = np.zeros((t, t), bool)
        m = grid.overlap // 2
        inner[m : t - m, m : t - m] = True
        central = ok & inner
        keep[n] = central if central.any() else ok
    return x, keep


def distances(segmenter: Segmenter, emb: np.ndarray) -> np.ndarray:
    """(n, K) squared distances of (n, D) embeddings to the centroids (standardised space)."""
    z = (emb - segmenter.mean) / segmenter.std
    c = segmenter.centroids
    d = (z * z).sum(axis=1, keepdims=True) - 2.0 * z @ c.T + (c * c).sum(axis=1)
    return np.maximum(d, 0.0)


def finalizer(segmenter: Segmenter, nodata: float, prob_nodata: float):
    """Pass 2's ``Job.finalize``: blended (D + 2, h, w) block -> (ids 1..K, confidence).

    Confidence = d2 / (d1 + d2) with d1 <= d2 the distances to the nearest and second-nearest
    centroid: 1 on a centroid, 0.5 half-way between two segments.
    """

    def finalize(block: np.ndarray):
        d = block.shape[0] - 2
        h, w = block.shape[1:]
        emb = (block[:d] / block[d]).reshape(d, -1).T
        dist = distances(segmenter, emb)
        ids = dist.argmin(axis=1)
        two = np.sqrt(np.partition(dist, 1, axis=1)[:, :2])
        total = two.sum(axis=1)
        conf = np.where(total > 0, two[:, 1] / np.where(total > 0, total, 1.0), 0.5)
        ids = (ids + 1).reshape(h, w)
        conf = conf.reshape(h, w).astype(np.float32)
        invalid = block[d + 1] > 0
        if invalid.any():
            ids[invalid] = nodata
            conf[invalid] = prob_nodata
        return ids, conf

    return finalize


def sieve(out: OutputRaster, mmu: int, reporter: Reporter) -> None:
    """Merge 4-connected patches smaller than ``mmu`` pixels into their largest neighbour.

    In place, before the output is committed. GDAL's sieve streams the raster line by line;
    nodata pixels (the band's mask) are neither changed nor merged into.
    """
    band = out.band()
    out.ds.FlushCache()

    def progress(done, _msg, _data):
        if reporter.canceled():
            return 0
        reporter.fraction(done)
        return 1

    try:
        gdal.SieveFilter(band, band.GetMaskBand(), band, int(mmu), 4, callback=progress)
    except RuntimeError:
        reporter.check()  # a cancel stops GDAL with an error: report the cancel
        raise
    reporter.check()
    out.ds.FlushCache()

"""Random training windows: as many samples as the time allows from a small labelled area.

A fixed tile grid gives a 540 x 900 labelled area a dozen 256-px tiles, so an "epoch" is one or
two optimizer steps and a network sees the same crops again and again. Instead, each sample is
a window at a random position (torchgeo's ``RandomBatchGeoSampler``), drawn class-balanced:
half the windows are centred near a labelled pixel of a class chosen uniformly among the
classes, half near a pixel drawn in proportion to the labels, so a class covering 3 % of the
pixels is in nearly every batch of 8 (two classes: 1 - 0.74^8 = 91 %). Anchor pixels are
sampled per grid tile by ``scan_tiles``. A window never touches a validation tile: a position
that would is drawn again, and after a few tries the anchor's own grid tile (kept apart from
validation by ``spatial_split``) is used.

Windows are cut from the normalised rasters held in memory when they fit the budget, else read
from the files by the prefetch thread. An epoch is a number of steps, not a pass over a grid.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Sequence, Tuple

import numpy as np

from .dataset import IGNORE_INDEX, Tile, TileReader, prefetched

# Share of windows anchored on a class drawn uniformly (the rest follow the label counts).
BALANCED_SHARE = 0.5
TRIES = 16  # positions drawn before falling back to the anchor's grid tile


class RandomWindows:
    """Class-balanced random windows over the training tiles' area, served in batches."""

    def __init__(
        self,
        reader: TileReader,
        tiles: Sequence[Tile],
        val_tiles: Sequence[Tile],
        preload: bool,
        steps_per_epoch: int,
        reporter=None,
    ) -> None:
        self.reader, self.tiles, self.size = reader, list(tiles), reader.size
        self.preloaded, self.steps_per_epoch = preload, steps_per_epoch
        self.blocked = _rects(val_tiles, len(reader.images))
        self._plan_anchors()
        self.x: List[np.ndarray] = []
        self.y: List[np.ndarray] = []
        if preload:
            self._load_rasters(reporter)

    def __len__(self) -> int:
        return len(self.tiles)

    def _plan_anchors(self) -> None:
        """Per class: its pixel count per tile; class draw probabilities."""
        values = [int(v) for v in self.reader.values]
        counts = np.array(
            [[t.values.get(v, 0) if v in t.points else 0 for v in values] for t in self.tiles],
            dtype=np.float64,
        ).reshape(len(self.tiles), len(values))
        self.values = values
        self.tile_counts = counts
        total = counts.sum(axis=0)
        present = total > 0
        freq = total / max(total.sum(), 1.0)
        uniform = present / max(present.sum(), 1)
        self.class_p = BALANCED_SHARE * uniform + (1 - BALANCED_SHARE) * freq

    def _load_rasters(self, reporter) -> None:
        """Each raster normalised and labelled once (nodata and unlabelled: IGNORE_INDEX)."""
        for r, ds in enumerate(self.reader.images):
            w, h = ds.RasterXSize, ds.RasterYSize
            x = np.empty((self.reader.bands, h, w), dtype=np.float32)
            y = np.empty((h, w), dtype=np.int64)
            self.reader.read(Tile(r, 0, 0, w, h, 0, 0), x, y)
            self.x.append(x)
            self.y.append(y.astype(np.int16))
            if reporter is not None:
                reporter.fraction((r + 1) / len(self.reader.images))

    def draw(self, rng, n: int) -> List[Tile]:
        """``n`` random windows (as Tiles) for one batch."""
        return [self._window(rng) for _ in range(n)]

    def _window(self, rng) -> Tile:
        c = int(rng.choice(len(self.values), p=self.class_p))
        weights = self.tile_counts[:, c]
        t = self.tiles[int(rng.choice(len(self.tiles), p=weights / weights.sum()))]
        points = t.points[self.values[c]]
        row, col = points[int(rng.integers(len(points)))]
        ds = self.reader.images[t.raster]
        w, h = min(self.size, ds.RasterXSize), min(self.size, ds.RasterYSize)
        for i in range(TRIES):
            # The anchor lands in the window's middle 70 %, later anywhere in it (near a
            # validation block only one side is free).
            lo, hi = (0.15, 0.85) if i < TRIES // 4 else (0.0, 1.0)
            x = int(np.clip(col - rng.integers(lo * w, hi * (w - 1) + 1), 0, ds.RasterXSize - w))
            y = int(np.clip(row - rng.integers(lo * h, hi * (h - 1) + 1), 0, ds.RasterYSize - h))
            if not _hits(self.blocked[t.raster], x, y, w, h):
                return Tile(t.raster, x, y, w, h, t.col, t.row)
        return t

    def _load(self, windows: Sequence[Tile]) -> Tuple[np.ndarray, np.ndarray]:
        s, c = self.size, self.reader.bands
        x = np.zeros((len(windows), c, s, s), dtype=np.float32)
        y = np.full((len(windows), s, s), IGNORE_INDEX, dtype=np.int64)
        for k, t in enumerate(windows):
            if self.preloaded:
                x[k, :, : t.h, : t.w] = self.x[t.raster][:, t.y : t.y + t.h, t.x : t.x + t.w]
                y[k, : t.h, : t.w] = self.y[t.raster][t.y : t.y + t.h, t.x : t.x + t.w]
            else:
                self.reader.read(t, x[k], y[k])
        return x, y

    def batches(self, order: Sequence[int], batch_size: int) -> Iterator:
        """The grid tiles in ``order``, in batches (to score on the training area)."""
        groups = [
            [self.tiles[i] for i in order[k : k + batch_size]]
            for k in range(0, len(order), batch_size)
        ]
        return (self._load(g) for g in groups) if self.preloaded else prefetched(groups, self._load)

    def epoch_steps(self, batch_size: int) -> int:
        return self.steps_per_epoch

    def epoch_batches(self, rng, batch_size: int, tile_p=None) -> Iterator:
        """``steps_per_epoch`` batches of random windows (``tile_p`` is for grid sets only)."""
        groups = [self.draw(rng, batch_size) for _ in range(self.steps_per_epoch)]
        if self.preloaded:
            return (self._load(g) for g in groups)
        return prefetched(groups, self._load)


def steps_per_epoch(train_tiles: int, val_tiles: int, batch_size: int) -> int:
    """At least 20 steps, a grid pass's worth of windows, and enough steps that validating
    ``val_tiles`` (a forward pass each, about a third of a training step) costs at most
    about a tenth of the epoch."""
    return max(20, math.ceil(train_tiles / batch_size), math.ceil(3 * val_tiles / batch_size))


def _rects(tiles: Sequence[Tile], rasters: int) -> List[np.ndarray]:
    """Per raster, the (x0, y0, x1, y1) rectangles of ``tiles``."""
    out = [[] for _ in range(rasters)]
    for t in tiles:
        out[t.raster].append((t.x, t.y, t.x + t.w, t.y + t.h))
    return [np.array(r, dtype=np.int64).reshape(-1, 4) for r in out]


def _hits(rects: np.ndarray, x: int, y: int, w: int, h: int) -> bool:
    """Whether the window overlaps any rectangle."""
    if not len(rects):
        return False
    return bool(
        np.any(
            (rects[:, 0] < x + w) & (x < rects[:, 2]) & (rects[:, 1] < y + h) & (y < rects[:, 3])
        )
    )

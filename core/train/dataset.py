"""Training tiles: a tile grid over each image, a spatial train/validation split, tile loading.

Tiles are laid on a regular grid (stride = tile size) and only tiles holding at least one
labelled pixel are kept. The validation set is made of whole spatial *blocks* of tiles, never of
random pixels or random tiles, so validation measures how the model does on ground it has not
seen; any training tile that touches a validation tile (the shifted last row/column) is dropped.
Tiles are normalised once and held in memory when they fit a budget; otherwise they are read
lazily with a background thread that reads the next batches while the network trains.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from osgeo import gdal

from ..errors import MapSegError
from ..io.tiling import axis_starts
from ..io.windows import BandWindows
from ..labels.classes import LabelLayer, label_values
from ..progress import Reporter

IGNORE_INDEX = -1  # target value of unlabelled pixels (the loss's ignore_index)
CLASS_SHARE = 0.3  # at most this share of a class's labelled pixels goes to validation


@dataclass
class Tile:
    raster: int
    x: int  # window actually read (clipped/shifted to fit the raster)
    y: int
    w: int
    h: int
    col: int  # position on the tile grid, for spatial blocks
    row: int
    values: dict = field(default_factory=dict)  # raw label value -> labelled pixel count
    # raw label value -> (n, 2) array of (row, col) raster positions of some of its pixels:
    # anchors for class-balanced random windows.
    points: dict = field(default_factory=dict)

    def overlaps(self, other: Tile) -> bool:
        return (
            self.raster == other.raster
            and self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )


def scan_tiles(
    images: Sequence[gdal.Dataset],
    labels: Sequence[LabelLayer],
    tile_size: int,
    reporter: Reporter,
) -> List[Tile]:
    """Every grid tile with at least one labelled pixel on image data, with its label value
    counts. Labels on image nodata or outside an explicit mask count nowhere: the reader masks
    them out, so a tile holding only those would give batches without a labelled pixel (a NaN
    loss).

    Labels are read one strip of tiles at a time and tiles without a label are skipped before
    any per-tile work, so a large raster with a small labelled area scans quickly at any tile
    size."""
    rows = [(r, row, y) for r, ds in enumerate(images)
            for row, y in enumerate(axis_starts(ds.RasterYSize, tile_size))]  # fmt: skip
    tiles, rng = [], np.random.default_rng(0)
    # TileReader's own rule (nodata in any band, an explicit mask), so no counted label is
    # one the reader then drops; validity needs no statistics
    windows = [BandWindows(ds, ()) for ds in images]
    for i, (r, row, y) in enumerate(rows):
        ds, layer = images[r], labels[r]
        w, h = min(tile_size, ds.RasterXSize), min(tile_size, ds.RasterYSize)
        strip = layer.dataset.GetRasterBand(1).ReadAsArray(0, y, ds.RasterXSize, h)
        labelled = label_values(strip, layer.unlabelled)
        # labelled pixels left of each column: a tile's count is a difference of two
        before = np.concatenate([[0], np.cumsum(labelled.any(axis=0))])
        for col, x in enumerate(axis_starts(ds.RasterXSize, tile_size)):
            if before[x + w] == before[x]:
                continue
            t = Tile(r, x, y, w, h, col, row)
            keep = labelled[:, x : x + w] & windows[r].valid((x, y, w, h))
            if keep.any():
                _count_labels(t, np.rint(strip[:, x : x + w]).astype(np.int64), keep, rng)
                tiles.append(t)
        reporter.fraction((i + 1) / len(rows))
    return tiles


def _count_labels(t: Tile, lab: np.ndarray, keep: np.ndarray, rng, anchors: int = 32) -> None:
    """Labelled pixels per value in tile ``t`` and up to ``anchors`` positions of each."""
    vals, counts = np.unique(lab[keep], return_counts=True)
    t.values = {int(v): int(c) for v, c in zip(vals, counts)}
    for v in t.values:
        rows, cols = np.nonzero(keep & (lab == v))
        pick = rng.choice(rows.size, size=min(anchors, rows.size), replace=False)
        t.points[int(v)] = np.stack([rows[pick] + t.y, cols[pick] + t.x], axis=1)


def class_counts(tiles: Sequence[Tile], values: Sequence[int]) -> np.ndarray:
    """Labelled pixels per class (in ``values`` order) over ``tiles``."""
    index = {int(v): i for i, v in enumerate(values)}
    counts = np.zeros(len(values), dtype=np.int64)
    for t in tiles:
        for v, c in t.values.items():
            if v in index:
                counts[index[v]] += c
    return counts


def spatial_split(
    tiles: Sequence[Tile], fraction: float, seed: int, block_tiles: int = 8
) -> Tuple[List[int], List[int]]:
    """(train, validation) tile indices: validation is whole spatial blocks of tiles.

    The block side (in tiles) halves until there are enough blocks to draw from, then blocks
    are drawn at random (seeded) until they hold ``fraction`` of the labelled pixels, skipping
    a block that would take more than ``CLASS_SHARE`` (or ``fraction``) of one class's pixels.
    Training tiles that overlap a validation tile are dropped, so no pixel is in both sets.
    """
    n = len(tiles)
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    want_blocks = max(5, math.ceil(3.0 / fraction))
    side = block_tiles
    while True:
        keys = [(t.raster, t.row // side, t.col // side) for t in tiles]
        blocks = sorted(set(keys))
        if len(blocks) >= want_blocks or side == 1:
            break
        side //= 2
    if len(blocks) < 2:
        return list(range(n)), []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(blocks))
    values = sorted({v for t in tiles for v in t.values})
    members: dict = {b: [] for b in blocks}
    for t, key in zip(tiles, keys):
        members[key].append(t)
    per_block = {b: class_counts(ts, values) for b, ts in members.items()}
    total = sum(per_block.values())
    # Sparse labels put a rare class in a handful of tiles; a block that would take more than
    # CLASS_SHARE of a class's pixels into validation is skipped, so training keeps most of it.
    cap = max(CLASS_SHARE, fraction) * total
    target, in_val, val_blocks = fraction * total.sum(), np.zeros_like(total), set()
    for i in order[:-1]:  # always leave at least one block for training
        if in_val.sum() >= target:
            break
        grown = in_val + per_block[blocks[i]]
        if (grown > cap).any():
            continue
        val_blocks.add(blocks[i])
        in_val = grown
    val = [i for i, k in enumerate(keys) if k in val_blocks]
    train = [
        i
        for i, k in enumerate(keys)
        if k not in val_blocks and not any(tiles[i].overlaps(tiles[j]) for j in val)
    ]
    return train, val


class TileReader:
    """Reads one tile as (normalised image (C, S, S) float32, class-index target (S, S) int64)."""

    def __init__(
        self,
        images: Sequence[gdal.Dataset],
        labels: Sequence[LabelLayer],
        class_values: Sequence[int],
        band_stats: Sequence[dict],
        tile_size: int,
        object_value: int | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        # One class against the rest: label ``object_value`` reads as 1, any other label as 0.
        self.object_value = object_value
        self.values = np.asarray(sorted(int(v) for v in class_values), dtype=np.int64)
        if list(self.values) != [int(v) for v in class_values]:
            raise MapSegError("Internal error: class values must be sorted.")
        self.size = tile_size
        self.bands = images[0].RasterCount
        # Segment Raster's own reader: nodata, masks and normalisation as at inference.
        self.windows = [BandWindows(ds, band_stats) for ds in images]

    def read(self, t: Tile, x_out: np.ndarray, y_out: np.ndarray) -> None:
        x_out.fill(0.0)
        _, valid = self.windows[t.raster].read((t.x, t.y, t.w, t.h), out=x_out[:, : t.h, : t.w])
        layer = self.labels[t.raster]
        lab = layer.dataset.GetRasterBand(1).ReadAsArray(t.x, t.y, t.w, t.h)
        keep = label_values(lab, layer.unlabelled) & valid
        lab = np.rint(np.where(keep, lab, 0)).astype(np.int64)
        if self.object_value is not None:
            lab = (lab == self.object_value).astype(np.int64)
        idx = np.clip(np.searchsorted(self.values, lab), 0, len(self.values) - 1)
        keep &= self.values[idx] == lab  # values outside the class table carry no label
        y_out.fill(IGNORE_INDEX)
        y_out[: t.h, : t.w] = np.where(keep, idx, IGNORE_INDEX)


class TileSet:
    """A set of tiles served in batches, preloaded in memory or read lazily with prefetch."""

    def __init__(
        self,
        reader: TileReader,
        tiles: Sequence[Tile],
        preload: bool,
        reporter: Reporter | None = None,
    ) -> None:
        self.reader, self.tiles = reader, list(tiles)
        self.preloaded = preload
        s, c = reader.size, reader.bands
        self.x = self.y = None
        if preload:
            self.x = np.empty((len(self.tiles), c, s, s), dtype=np.float32)
            self.y = np.empty((len(self.tiles), s, s), dtype=np.int16)
            target = np.empty((s, s), dtype=np.int64)
            for i, t in enumerate(self.tiles):
                reader.read(t, self.x[i], target)
                self.y[i] = target
                if reporter is not None and i % 8 == 0:
                    reporter.fraction((i + 1) / len(self.tiles))

    def __len__(self) -> int:
        return len(self.tiles)

    def object_fractions(self) -> np.ndarray:
        """Per tile, the share of its labelled pixels in a class other than the first (the
        object against background), from the label counts of the scan."""
        values = [int(v) for v in self.reader.values]
        out = np.zeros(len(self.tiles), dtype=np.float64)
        for i, t in enumerate(self.tiles):
            total = sum(c for v, c in t.values.items() if v in values)
            obj = sum(c for v, c in t.values.items() if v in values[1:])
            out[i] = obj / total if total else 0.0
        return out

    def _load(self, idx: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        if self.preloaded:
            sel = np.asarray(idx)
            return self.x[sel], self.y[sel].astype(np.int64)
        s, c = self.reader.size, self.reader.bands
        x = np.empty((len(idx), c, s, s), dtype=np.float32)
        y = np.empty((len(idx), s, s), dtype=np.int64)
        for k, i in enumerate(idx):
            self.reader.read(self.tiles[i], x[k], y[k])
        return x, y

    def batches(
        self, order: Sequence[int], batch_size: int, prefetch: int = 3
    ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Batches of (x, y) in ``order``; lazy sets read ahead in a background thread."""
        groups = [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        if self.preloaded:
            return (self._load(g) for g in groups)
        return prefetched(groups, self._load, prefetch)

    def epoch_steps(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def epoch_batches(self, rng, batch_size: int, tile_p=None):
        """One epoch: every tile once in random order, or ``len(self)`` draws with replacement
        from probabilities ``tile_p`` (the balanced sampler)."""
        order = (
            rng.permutation(len(self))
            if tile_p is None
            else rng.choice(len(self), size=len(self), p=tile_p)
        )
        if len(order) % batch_size == 1 and len(order) > 1:  # batch-norm needs two samples
            order = order[:-1]
        return self.batches(order, batch_size)


def prefetched(groups: Sequence, load, prefetch: int = 3) -> Iterator:
    """``load(group)`` for each group, computed ahead in a background thread.

    Only that thread touches the GDAL datasets while the iteration runs (GDAL handles are not
    thread-safe), and it stops as soon as the consumer stops iterating.
    """
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work() -> None:
        try:
            for g in groups:
                if stop.is_set():
                    return
                q.put(load(g))
            q.put(None)
        except BaseException as err:  # hand read errors to the consumer
            q.put(err)

    thread = threading.Thread(target=work, name="mapseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put() so the thread sees the stop flag
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def fits_in_memory(n_tiles: int, bands: int, tile_size: int, budget_mb: float) -> bool:
    need = n_tiles * tile_size * tile_size * (bands * 4 + 2)
    return need <= budget_mb * 1024 * 1024

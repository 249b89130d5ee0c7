"""The tile grid, blend weights and a strip accumulator for tiled, blended inference.

Tile/stride arithmetic (one axis; the other is the same):

* ``T`` = tile size, ``O`` = overlap, stride ``S = T - O``; ``2 * O <= T`` so ``O <= S`` and a
  pixel is covered by at most two tiles per axis (four in 2-D).
* Tile ``k`` covers raster pixels ``[k*S, k*S + T)``. The grid is anchored to the raster's pixel
  origin (0, 0), never to the processed extent: a sub-extent run computes exactly the tiles a
  full run computes there, so its result is the same.
* ``n`` tiles cover an axis of ``N`` pixels: ``n = 1`` if ``N <= T`` else
  ``ceil((N - T) / S) + 1``. The last tile may reach up to ``S - 1`` pixels past the edge (and a
  raster smaller than a tile is one tile): the part outside the raster is filled by reflection
  and never written. Padding rather than shifting the last tile back keeps every overlap exactly
  ``O`` wide, which bounds the carried overlap below.
* Pixel ``p`` of tile ``k`` has blend weight ``ramp(min(p, T - 1 - p))``: a sin^2 ramp over the
  ``O`` pixels next to each edge, 1 inside. Across an overlap the two tiles' ramps sum to 1
  (sin^2 + cos^2), so the weights are a partition of unity away from the raster border; a small
  floor keeps them positive where only one tile covers a pixel (the raster border).

Accumulation (``BlendAccumulator``): tiles arrive in row-major order. After tile row ``i`` no
later tile touches rows ``< (i + 1) * S``, and after tile ``(i, j)`` no later tile of the same row
touches columns ``< (j + 1) * S``. So when tile ``(i, j)`` arrives its ``S x S`` top-left block is
final once two carries are added: the right ``O`` columns of tile ``(i, j - 1)`` (``xcarry``,
``T x O``) and the bottom ``O`` rows that tile row ``i - 1`` left over these columns (``ycarry``,
``O`` rows by the window's width). Memory is ``C * (T*T + T*O + O*W)`` floats for ``C`` channels
and a window ``W`` pixels wide: it never holds a strip of full tiles, and grows with width only
through the ``O``-row carry (no way round it without computing tiles twice). The sums are done in
the same order whatever the window, so a sub-extent is bit-for-bit equal to the full run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Tuple

import numpy as np

from ..errors import MapSegError

Window = Tuple[int, int, int, int]  # xoff, yoff, xsize, ysize (pixels)
WEIGHT_FLOOR = 1e-3


def check_tiling(tile: int, overlap: int) -> None:
    """Raise a MapSegError that says what to change for an unusable tile size / overlap."""
    if tile < 16:
        raise MapSegError(f"The tile size must be at least 16 pixels (got {tile}).")
    if overlap < 0:
        raise MapSegError(f"The overlap cannot be negative (got {overlap}).")
    if 2 * overlap > tile:
        raise MapSegError(
            f"The tile size ({tile}) must be at least twice the overlap ({overlap}): lower "
            f"OVERLAP to {tile // 2} or less, or raise TILE_SIZE to {2 * overlap} or more."
        )


def axis_count(n: int, tile: int, stride: int) -> int:
    """Number of tiles covering an axis of ``n`` pixels."""
    return 1 if n <= tile else -(-(n - tile) // stride) + 1


def blend_ramp(tile: int, overlap: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """1-D weights: sin^2 ramp over ``overlap`` pixels at each end, 1 between, >= ``floor``."""
    dist = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float64)
    ramp = np.ones(tile)
    if overlap > 0:
        inside = dist < overlap
        ramp[inside] = np.sin(0.5 * np.pi * (dist[inside] + 0.5) / overlap) ** 2
    return np.maximum(ramp, floor).astype(np.float32)


def blend_window(tile: int, overlap: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """(tile, tile) separable blend weights."""
    ramp = blend_ramp(tile, overlap, floor)
    return np.outer(ramp, ramp).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of ``tile`` pixels with ``overlap``, anchored at the raster's pixel (0, 0)."""

    width: int
    height: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        check_tiling(self.tile, self.overlap)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def shape(self) -> Tuple[int, int]:
        """(tile rows, tile columns) over the whole raster."""
        return (
            axis_count(self.height, self.tile, self.stride),
            axis_count(self.width, self.tile, self.stride),
        )

    def _range(self, lo: int, hi: int, n_tiles: int) -> Tuple[int, int]:
        # tile k meets [lo, hi) iff k*S < hi and k*S + T > lo
        first = max(0, (lo - self.tile) // self.stride + 1)
        last = min(n_tiles - 1, (hi - 1) // self.stride)
        return first, last

    def tile_ranges(self, window: Window) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """Inclusive (first, last) tile rows and columns meeting ``window``."""
        x, y, w, h = window
        rows, cols = self.shape
        return self._range(y, y + h, rows), self._range(x, x + w, cols)

    def tiles(self, window: Window) -> Iterator[Tuple[int, int]]:
        """(row, col) of every tile meeting ``window``, row-major."""
        (i0, i1), (j0, j1) = self.tile_ranges(window)
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                yield i, j

    def count(self, window: Window) -> int:
        (i0, i1), (j0, j1) = self.tile_ranges(window)
        return (i1 - i0 + 1) * (j1 - j0 + 1)

    def tile_window(self, i: int, j: int) -> Window:
        """The tile's full (unclipped) window; it may extend past the raster's right/bottom."""
        return j * self.stride, i * self.stride, self.tile, self.tile


def read_padded(read: Callable[[Window], np.ndarray], win: Window, width: int, height: int):
    """Read ``win`` clipped to the raster and reflect-pad it back to the window's size.

    ``read(window) -> (bands, rows, cols)``. Returns the padded array and the clipped
    (cols, rows) actually inside the raster.
    """
    x, y, w, h = win
    cw, ch = min(w, width - x), min(h, height - y)
    block = read((x, y, cw, ch))
    if cw == w and ch == h:
        return block, (cw, ch)
    pad = ((0, 0), (0, h - ch), (0, w - cw))
    # numpy reflects repeatedly when the pad is wider than the data; one pixel has no mirror
    mode = "reflect" if cw > 1 and ch > 1 else "edge"
    return np.pad(block, pad, mode=mode), (cw, ch)


EmitFn = Callable[[int, int, np.ndarray], None]


class BlendAccumulator:
    """Sums weighted tile outputs and emits final blocks in raster order (see module doc).

    ``add(i, j, weighted, invalid)``: ``weighted`` is (C, T, T) probabilities already
    multiplied by the blend window, ``invalid`` an optional (T, T) array, 1 where the input is
    nodata. ``emit(x, y, block)`` receives final blocks (C + 2, h, w) of the window in raster
    pixels: channels ``0..C-1`` the weighted sums, ``C`` the weight sum, ``C + 1`` > 0 where
    the input is nodata. Blocks of one tile row are emitted left to right, rows top to bottom.
    """

    def __init__(self, grid: TileGrid, window: Window, classes: int, emit: EmitFn) -> None:
        self.grid, self.window, self.emit = grid, window, emit
        self.classes = classes
        (self.i0, self.i1), (self.j0, self.j1) = grid.tile_ranges(window)
        t, o = grid.tile, grid.overlap
        ch = classes + 2
        self.weights = blend_window(t, o)
        self.buf = np.zeros((ch, t, t), np.float32)
        self.xcarry = np.zeros((ch, t, o), np.float32)
        self.ycarry = np.zeros((ch, o, window[2]), np.float32)
        self._next = (self.i0, self.j0)

    def add(self, i: int, j: int, weighted: np.ndarray, invalid: np.ndarray | None = None):
        if (i, j) != self._next:
            raise ValueError(f"tile {(i, j)} out of order; expected {self._next}")
        g, c, o, s = self.grid, self.classes, self.grid.overlap, self.grid.stride
        buf = self.buf
        buf[:c] = weighted
        buf[c] = self.weights
        if invalid is None:
            buf[c + 1] = 0.0
        else:
            buf[c + 1] = invalid
        if j > self.j0 and o:
            buf[:, :, :o] += self.xcarry  # the previous tile's right overlap
        last_col, last_row = j == self.j1, i == self.i1
        if not last_col and o:
            self.xcarry[...] = buf[:, :, s:]
        # the final part of this tile: columns [jS, (j+1)S) (all T for the row's last tile),
        # rows [iS, (i+1)S) (all T for the last tile row), clipped to the window
        wx, wy, ww, wh = self.window
        tx, ty = j * s, i * s
        x0, x1 = max(tx, wx), min(tx + (g.tile if last_col else s), wx + ww)
        if x1 > x0:
            a, b = x0 - tx, x1 - tx  # tile columns
            ca, cb = x0 - wx, x1 - wx  # window columns (carry)
            if i > self.i0 and o:
                buf[:, :o, a:b] += self.ycarry[:, :, ca:cb]
            if not last_row and o:
                self.ycarry[:, :, ca:cb] = buf[:, s:, a:b]
            y0, y1 = max(ty, wy), min(ty + (g.tile if last_row else s), wy + wh)
            if y1 > y0:
                self.emit(x0, y0, buf[:, y0 - ty : y1 - ty, a:b])
        self._next = (i, j + 1) if not last_col else (i + 1, self.j0)

    @property
    def done(self) -> bool:
        return self._next[0] > self.i1


def channel_argmax(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(axis=0)`` for a (C, h, w) array, the same indices (first of ties).

    numpy's argmax over the leading axis walks each pixel's C values with a stride of h * w;
    C whole-plane comparisons are about twice as fast, and this runs once per output block
    while the network saturates the cores (bench/bench_onnx.py)."""
    if scores.shape[0] > 16:
        return scores.argmax(axis=0)
    best = np.zeros(scores.shape[1:], np.intp)
    top = scores[0].copy()
    above = np.empty(scores.shape[1:], bool)
    for k in range(1, scores.shape[0]):
        np.greater(scores[k], top, out=above)
        np.copyto(best, k, where=above)
        np.maximum(top, scores[k], out=top)
    if np.isnan(top).any():  # argmax takes the first NaN as the largest: keep its answer
        return scores.argmax(axis=0)
    return best


def finalize_block(
    block: np.ndarray,
    values: np.ndarray,
    nodata: float,
    prob_nodata: float,
    with_prob: bool = True,
) -> Tuple[np.ndarray, np.ndarray | None]:
    """Class values and (when asked for) winning probability of an emitted (C + 2, h, w) block."""
    c = block.shape[0] - 2
    scores = block[:c]
    best = channel_argmax(scores)
    cls = values[best]
    # The probability costs a gather and a division per pixel: only when it is written.
    prob = np.take_along_axis(scores, best[None], axis=0)[0] / block[c] if with_prob else None
    invalid = block[c + 1] > 0
    if invalid.any():
        cls[invalid] = nodata
        if prob is not None:
            prob[invalid] = prob_nodata
    return cls, None if prob is None else prob.astype(np.float32, copy=False)


# -- georeferencing --------------------------------------------------------------------------


def window_geotransform(gt, window: Window) -> Tuple[float, ...]:
    """Geotransform of a pixel window on the same grid (rotation terms kept)."""
    x, y = window[0], window[1]
    return (
        gt[0] + x * gt[1] + y * gt[2],
        gt[1],
        gt[2],
        gt[3] + x * gt[4] + y * gt[5],
        gt[4],
        gt[5],
    )


def extent_window(gt, width: int, height: int, extent) -> Window:
    """The pixel window covering map ``extent`` = (xmin, ymin, xmax, ymax), clipped.

    Works for rotated grids: the extent's corners are mapped to pixel space and their bounding
    box is taken. Raises if the extent misses the raster.
    """
    xmin, ymin, xmax, ymax = (float(v) for v in extent)
    det = gt[1] * gt[5] - gt[2] * gt[4]
    if det == 0:
        raise MapSegError("The raster's geotransform is degenerate; it has no usable extent.")
    cols, rows = [], []
    for mx, my in ((xmin, ymin), (xmin, ymax), (xmax, ymin), (xmax, ymax)):
        dx, dy = mx - gt[0], my - gt[3]
        cols.append((gt[5] * dx - gt[2] * dy) / det)
        rows.append((-gt[4] * dx + gt[1] * dy) / det)
    eps = 1e-6  # an extent snapped on pixel edges should not grab a neighbouring pixel
    x0 = max(0, int(math.floor(min(cols) + eps)))
    y0 = max(0, int(math.floor(min(rows) + eps)))
    x1 = min(width, int(math.ceil(max(cols) - eps)))
    y1 = min(height, int(math.ceil(max(rows) - eps)))
    if x1 <= x0 or y1 <= y0:
        raise MapSegError(
            f"The extent ({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, {ymax:.6g}) does not overlap the "
            "raster. Choose an extent inside the input raster (in its CRS), or leave EXTENT "
            "empty to process the whole raster."
        )
    return x0, y0, x1 - x0, y1 - y0


def axis_starts(length: int, size: int, stride: int | None = None) -> list[int]:
    """Window origins along one axis every ``stride`` (default ``size``) pixels; the last one is
    shifted back so it ends on the raster's edge and stays full size."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride or size))
    return starts + [length - size]

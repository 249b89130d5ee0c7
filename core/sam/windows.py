"""Overlapping windows over a large raster, and the merge of masks that windows cut apart.

An object crossing a window border is seen as two (or more) partial masks, one per window.
Neighbouring windows overlap, so both parts cover the same pixels of the overlap zone: two
masks from different windows whose pixels agree there (intersection over union inside the zone
of at least ``merge_iou``) are the same object. A mask cut by an interior window border is then
joined to its other part (union); two masks that are both whole (neither touches an interior
border) are duplicates, and only the one with the better predicted IoU is kept.

Masks are kept as (x, y, boolean crop of their bounding box) in processing pixels, so memory
follows the masks themselves, and a mask is handed out (``flush``) as soon as no window still to
come can overlap it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from ..io.tiling import axis_starts

Rect = Tuple[int, int, int, int]  # x, y, width, height


def tile(width: int, height: int, size: int, overlap: int) -> List[List[Rect]]:
    """Rows of windows of ``size`` (clipped to the raster) overlapping by ``overlap`` pixels."""
    stride = max(1, size - max(0, overlap))
    xs, ys = axis_starts(width, size, stride), axis_starts(height, size, stride)
    return [[(x, y, min(size, width), min(size, height)) for x in xs] for y in ys]


@dataclass(eq=False)  # identity: parts hold arrays, and two parts are never "equal"
class Part:
    """A mask on the processing grid: ``mask`` is the crop of its bounding box at (x, y)."""

    x: int
    y: int
    mask: np.ndarray
    pred_iou: float
    stability: float
    windows: List[Rect] = field(default_factory=list)
    cut: bool = False

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> Tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.mask.shape[1], self.y + self.mask.shape[0]


def part_from_window(
    mask: np.ndarray, window: Rect, width: int, height: int, pred_iou: float, stability: float
) -> Part | None:
    """A window-sized mask as a Part; ``cut`` when it touches a border inside the raster."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x, y, w, h = window
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cut = (
        (c0 == 0 and x > 0)
        or (r0 == 0 and y > 0)
        or (c1 == w and x + w < width)
        or (r1 == h and y + h < height)
    )
    crop = np.ascontiguousarray(mask[r0:r1, c0:c1])
    return Part(int(x + c0), int(y + r0), crop, pred_iou, stability, [window], bool(cut))


def _paste(part: Part, frame: Tuple[int, int, int, int]) -> np.ndarray:
    fx0, fy0, fx1, fy1 = frame
    out = np.zeros((fy1 - fy0, fx1 - fx0), dtype=bool)
    x0, y0, x1, y1 = part.bbox
    ix0, iy0, ix1, iy1 = max(x0, fx0), max(y0, fy0), min(x1, fx1), min(y1, fy1)
    if ix0 < ix1 and iy0 < iy1:
        out[iy0 - fy0 : iy1 - fy0, ix0 - fx0 : ix1 - fx0] = part.mask[
            iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0
        ]
    return out


def zone_iou(new: Part, old: Part) -> float:
    """IoU of two masks inside the overlap of ``new``'s window and ``old``'s windows."""
    wx, wy, ww, wh = new.windows[0]
    a, b = new.bbox, old.bbox
    frame = (max(min(a[0], b[0]), wx), max(min(a[1], b[1]), wy))
    frame += (min(max(a[2], b[2]), wx + ww), min(max(a[3], b[3]), wy + wh))
    if frame[0] >= frame[2] or frame[1] >= frame[3]:
        return 0.0
    zone = np.zeros((frame[3] - frame[1], frame[2] - frame[0]), dtype=bool)
    for ox, oy, ow, oh in old.windows:
        zx0, zy0 = max(ox, frame[0]) - frame[0], max(oy, frame[1]) - frame[1]
        zx1, zy1 = min(ox + ow, frame[2]) - frame[0], min(oy + oh, frame[3]) - frame[1]
        if zx0 < zx1 and zy0 < zy1:
            zone[zy0:zy1, zx0:zx1] = True
    m, n = _paste(new, frame) & zone, _paste(old, frame) & zone
    union = np.count_nonzero(m | n)
    return np.count_nonzero(m & n) / union if union else 0.0


def union(a: Part, b: Part) -> Part:
    """One mask made of both parts; scores are averaged by area."""
    frame = (min(a.bbox[0], b.bbox[0]), min(a.bbox[1], b.bbox[1]))
    frame += (max(a.bbox[2], b.bbox[2]), max(a.bbox[3], b.bbox[3]))
    mask = _paste(a, frame) | _paste(b, frame)
    wa, wb = a.area, b.area
    return Part(
        frame[0],
        frame[1],
        mask,
        (a.pred_iou * wa + b.pred_iou * wb) / (wa + wb),
        (a.stability * wa + b.stability * wb) / (wa + wb),
        a.windows + [w for w in b.windows if w not in a.windows],
        a.cut or b.cut,
    )


class Merger:
    """Collects window masks, joins parts of cut objects, drops duplicates, flushes finals."""

    def __init__(self, merge_iou: float = 0.5) -> None:
        self.merge_iou = merge_iou
        self.pending: List[Part] = []
        self.merged = 0
        self.duplicates = 0

    def add(self, part: Part) -> None:
        window = part.windows[0]
        best, best_iou = None, self.merge_iou
        for old in self.pending:
            # Masks of one window are distinct objects already (SAM's own box NMS saw them).
            if window in old.windows or not _overlaps(part.bbox, old.bbox):
                continue
            iou = zone_iou(part, old)
            if iou >= best_iou:
                best, best_iou = old, iou
        if best is None:
            self.pending.append(part)
            return
        index = self.pending.index(best)
        if not part.cut and not best.cut:
            self.duplicates += 1  # the same whole object seen by two windows
            if part.pred_iou > best.pred_iou:
                part.windows = best.windows + part.windows
                self.pending[index] = part
            else:
                best.windows.append(window)
            return
        self.merged += 1
        self.pending[index] = union(best, part)

    def flush(self, next_x: int | None, next_y: int | None) -> List[Part]:
        """Masks no later window can reach: those left of ``next_x`` (the next window in this
        row) and above ``next_y`` (the next row); None means no such window is left."""
        done: List[Part] = []
        keep: List[Part] = []
        for part in self.pending:
            _, _, x1, y1 = part.bbox
            final = (next_x is None or x1 <= next_x) and (next_y is None or y1 <= next_y)
            (done if final else keep).append(part)
        self.pending = keep
        return done


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

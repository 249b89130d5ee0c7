"""Windows around query points: where Pseudo-label From Points computes superpixels.

Each point claims a *reach* box (``REACH`` superpixel sizes around it); overlapping boxes merge
into disjoint *cores*, split on a grid when they grow past ``MAX_CORE_CELLS``; each core is
segmented with a *halo* of context and only the core is written. Edges are multiples of the
superpixel size (or the raster edge), so every window seeds the same superpixel grid.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np

REACH = 2  # a point's label spreads at most ~REACH superpixel sizes (its superpixel's extent)
HALO = 1  # superpixel sizes of context around a core, so superpixels at its edge are whole
MAX_CORE_CELLS = 2048 * 2048  # bounds memory per window (bands x cells x 4 bytes)

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, half-open)


def _root(parent: List[int], i: int) -> int:
    """Union-find root with path halving."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _merge_boxes(boxes: List[Box]) -> List[Box]:
    """Merge overlapping boxes into their bounding boxes until no two overlap (sweep in x)."""
    while True:
        boxes = sorted(boxes)
        parent = list(range(len(boxes)))
        active: List[int] = []
        for i, b in enumerate(boxes):
            active = [j for j in active if boxes[j][2] > b[0]]
            for j in active:
                if boxes[j][1] < b[3] and b[1] < boxes[j][3]:
                    parent[_root(parent, i)] = _root(parent, j)
            active.append(i)
        groups: Dict[int, Box] = {}
        for i, b in enumerate(boxes):
            r = _root(parent, i)
            g = groups.get(r)
            groups[r] = b if g is None else (
                min(g[0], b[0]), min(g[1], b[1]), max(g[2], b[2]), max(g[3], b[3])
            )  # fmt: skip
        if len(groups) == len(boxes):
            return boxes
        boxes = list(groups.values())


def plan_windows(
    cols: np.ndarray,
    rows: np.ndarray,
    width: int,
    height: int,
    size: int,
    max_core_cells: int = MAX_CORE_CELLS,
) -> List[Tuple[Box, Box]]:
    """``[(core, window), ...]``: disjoint cores covering every point's reach box, and the
    windows (core + halo) to segment. All edges are multiples of ``size`` (or the raster edge).
    """
    if len(cols) == 0:
        return []
    reach, halo = REACH * size, HALO * size
    pts = np.stack(
        [
            np.clip((cols - reach) // size * size, 0, width),
            np.clip((rows - reach) // size * size, 0, height),
            np.clip(((cols + reach) // size + 1) * size, 0, width),
            np.clip(((rows + reach) // size + 1) * size, 0, height),
        ],
        axis=1,
    ).astype(np.int64)
    side = max(size, int(math.sqrt(max_core_cells)) // size * size)
    plans = []
    for g in _merge_boxes([tuple(int(v) for v in b) for b in np.unique(pts, axis=0)]):
        for py in range(g[1] // side * side, g[3], side):
            for px in range(g[0] // side * side, g[2], side):
                # the piece of the group's bbox, shrunk to the reach boxes that touch it
                piece = (max(px, g[0]), max(py, g[1]), min(px + side, g[2]), min(py + side, g[3]))
                x0, y0 = np.maximum(pts[:, 0], piece[0]), np.maximum(pts[:, 1], piece[1])
                x1, y1 = np.minimum(pts[:, 2], piece[2]), np.minimum(pts[:, 3], piece[3])
                hit = (x0 < x1) & (y0 < y1)
                if not hit.any():
                    continue
                core = (
                    int(x0[hit].min()),
                    int(y0[hit].min()),
                    int(x1[hit].max()),
                    int(y1[hit].max()),
                )
                win = (
                    max(core[0] - halo, 0),
                    max(core[1] - halo, 0),
                    min(core[2] + halo, width),
                    min(core[3] + halo, height),
                )
                plans.append((core, win))
    return plans

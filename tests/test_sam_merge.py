"""SAM automatic masks: the window grid and the merge of masks cut by window borders."""

from __future__ import annotations

import numpy as np

from mapseg.core.sam.windows import Merger, part_from_window, tile


def test_tile_covers_with_exact_overlap_and_ends_on_the_edge():
    rows = tile(600, 300, 256, 64)
    assert [r[0][1] for r in rows] == [0, 44]
    assert [w[0] for w in rows[0]] == [0, 192, 344]
    assert all(w[2:] == (256, 256) for r in rows for w in r)
    assert tile(100, 80, 256, 64) == [[(0, 0, 100, 80)]]


def split(mask: np.ndarray, rows, score=0.9):
    """The parts a window grid would see of a global mask, as SAM would return them."""
    height, width = mask.shape
    parts = []
    for row in rows:
        for x, y, w, h in row:
            part = part_from_window(
                mask[y : y + h, x : x + w], (x, y, w, h), width, height, score, 0.9
            )
            if part is not None:
                parts.append(part)
    return parts


def merged(parts, rows):
    merger = Merger()
    out = []
    by_window = {}
    for p in parts:
        by_window.setdefault(p.windows[0], []).append(p)
    for r, row in enumerate(rows):
        for c, window in enumerate(row):
            for p in by_window.get(window, []):
                merger.add(p)
            nx = row[c + 1][0] if c + 1 < len(row) else None
            ny = rows[r + 1][0][1] if r + 1 < len(rows) else None
            out += merger.flush(nx, ny)
    return out + merger.flush(None, None), merger


def paint(parts, shape):
    canvas = np.zeros(shape, np.int32)
    for i, p in enumerate(parts, 1):
        x0, y0, x1, y1 = p.bbox
        canvas[y0:y1, x0:x1][p.mask] = i
    return canvas


def test_a_mask_cut_by_window_borders_is_joined_into_one():
    rows = tile(200, 150, 100, 30)
    truth = np.zeros((150, 200), bool)
    truth[40:120, 50:170] = True  # spans all 2 x 3 windows
    truth[60:70, 60:200] = True  # and touches the raster edge, which is not a cut
    parts = split(truth, rows)
    assert len(parts) == 6 and all(p.cut for p in parts)
    out, merger = merged(parts, rows)
    assert len(out) == 1 and merger.merged == 5
    (obj,) = out
    assert np.array_equal(paint([obj], truth.shape) > 0, truth)
    assert len(obj.windows) == 6


def test_whole_duplicates_are_dropped_and_neighbours_kept_apart():
    rows = tile(200, 100, 120, 40)  # windows at x = 0 and 80, overlap 80..120
    a = np.zeros((100, 200), bool)
    a[30:60, 90:110] = True  # whole in both windows: a duplicate
    b = np.zeros((100, 200), bool)
    b[30:60, 112:119] = True  # whole in both as well, next to a but not a
    c = np.zeros((100, 200), bool)
    c[5:20, 10:40] = True  # only in the first window
    parts = []
    for mask, scores in ((a, (0.7, 0.8)), (b, (0.9, 0.6)), (c, (0.5, 0.5))):
        for window, score in zip(rows[0], scores):
            x, y, w, h = window
            p = part_from_window(mask[y : y + h, x : x + w], window, 200, 100, score, 0.9)
            if p is not None:
                assert not p.cut
                parts.append(p)
    out, merger = merged(parts, rows)
    assert merger.duplicates == 2 and merger.merged == 0 and len(out) == 3
    got = {p.bbox: p.pred_iou for p in out}
    assert got == {(90, 30, 110, 60): 0.8, (112, 30, 119, 60): 0.9, (10, 5, 40, 20): 0.5}


def test_flush_keeps_masks_a_later_window_can_reach():
    merger = Merger()
    rows = tile(200, 100, 120, 40)
    left = part_from_window(
        np.pad(np.ones((5, 5), bool), ((10, 105), (10, 105))), rows[0][0], 200, 100, 0.9, 0.9
    )
    edge = np.zeros((100, 120), bool)
    edge[50:60, 85:95] = True
    right = part_from_window(edge, rows[0][0], 200, 100, 0.9, 0.9)
    merger.add(left)
    merger.add(right)
    done = merger.flush(rows[0][1][0], None)
    assert done == [left] and merger.pending == [right]

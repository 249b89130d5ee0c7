"""Object-level F1 (GISCUP 2023 style) from class masks read window by window.

Each window's 4-connected regions of the object class (the connectivity of GDAL's and QGIS's
Polygonize) are labelled with ``scipy.ndimage.label`` and joined to the regions they touch in the
window above and to the left (union-find over region ids). Only per-region areas and per-pair
overlap counts are kept, so memory grows with the number of objects, not with the pixel count.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


class ObjectCounter:
    """Connected regions (4-connected) of one class mask, labelled window by window."""

    def __init__(self, width: int) -> None:
        self.parent: List[int] = [0]
        self.areas: List[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.count = 0
        self.bottom = np.zeros(width, dtype=np.int64)  # ids along the last row read per column
        self.right: Tuple[int, np.ndarray] | None = None  # (yoff, ids) of the previous window

    def _find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def _join(self, a: np.ndarray, b: np.ndarray) -> None:
        keep = (a > 0) & (b > 0)
        if not keep.any():
            return
        pairs = np.unique(np.stack([a[keep], b[keep]], axis=1), axis=0)
        for x, y in pairs.tolist():
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def add(self, mask: np.ndarray, win) -> np.ndarray:
        """Label one window's mask; returns its region ids (0 outside every region)."""
        from scipy import ndimage

        xoff, yoff, w, h = win
        local, n = ndimage.label(mask)
        ids = np.where(local > 0, local.astype(np.int64) + self.count, 0)
        self.areas.append(np.bincount(local.ravel(), minlength=n + 1)[1:].astype(np.int64))
        self.parent.extend(range(self.count + 1, self.count + n + 1))
        self.count += n
        if yoff > 0:
            self._join(ids[0], self.bottom[xoff : xoff + w])
        if xoff > 0 and self.right is not None and self.right[0] == yoff:
            self._join(ids[:, 0], self.right[1])
        self.bottom[xoff : xoff + w] = ids[-1]
        self.right = (yoff, ids[:, -1].copy())
        return ids

    def roots(self) -> np.ndarray:
        """Each region id's final object id (pointer jumping over the union-find forest)."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                return parent
            parent = nxt


def match_objects(
    pred: ObjectCounter, ref: ObjectCounter, overlaps: Sequence[np.ndarray], threshold: float
) -> dict:
    """TP/FP/FN and F1 over objects: a predicted object is a true positive when the reference
    object it overlaps most has IoU >= ``threshold`` with it; one match per reference object
    (the highest IoU wins)."""
    proot, rroot = pred.roots(), ref.roots()
    pids, pinv = np.unique(proot[1:], return_inverse=True)
    rids, rinv = np.unique(rroot[1:], return_inverse=True)
    parea = np.bincount(pinv, weights=np.concatenate(pred.areas)[1:]).astype(np.int64)
    rarea = np.bincount(rinv, weights=np.concatenate(ref.areas)[1:]).astype(np.int64)
    n_pred, n_ref = len(pids), len(rids)
    tp = 0
    if overlaps and n_pred and n_ref:
        ov = np.concatenate(overlaps, axis=0)
        p = np.searchsorted(pids, proot[ov[:, 0]])
        r = np.searchsorted(rids, rroot[ov[:, 1]])
        keys, inv = np.unique(p * n_ref + r, return_inverse=True)
        inter = np.bincount(inv, weights=ov[:, 2]).astype(np.int64)
        p, r = keys // n_ref, keys % n_ref
        iou = inter / (parea[p] + rarea[r] - inter)
        # Each predicted object's greatest overlap (ties: higher IoU).
        order = np.lexsort((-iou, -inter, p))
        first = np.ones(order.size, dtype=bool)
        first[1:] = p[order][1:] != p[order][:-1]
        best = order[first]
        best = best[iou[best] >= threshold]
        used = set()
        for i in best[np.argsort(-iou[best], kind="stable")].tolist():
            if int(r[i]) not in used:
                used.add(int(r[i]))
        tp = len(used)
    fp, fn = n_pred - tp, n_ref - tp
    denom = 2 * tp + fp + fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "predicted_objects": n_pred,
        "reference_objects": n_ref,
        "f1": (2 * tp / denom) if denom else None,
        "precision": tp / n_pred if n_pred else None,
        "recall": tp / n_ref if n_ref else None,
    }

"""Segmentation metrics from a confusion matrix accumulated block by block.

A confusion matrix is all the state accuracy, IoU, precision, recall, F1 and kappa need, so it
can be accumulated over tiles, windows or batches of any size (``ConfusionMatrix.update``) and
scored once at the end: nothing holds every pixel at once. Rows are the reference class, columns
the predicted class, both as class *indices* 0..K-1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ConfusionMatrix:
    """A K x K int64 count matrix; ``update`` adds one block of (reference, prediction) pairs."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, reference, predicted, valid=None) -> None:
        """Count pixels where ``valid`` (and 0 <= reference < K); arrays of any equal shape."""
        ref = np.asarray(reference).ravel()
        pred = np.asarray(predicted).ravel()
        keep = (ref >= 0) & (ref < self.num_classes) & (pred >= 0) & (pred < self.num_classes)
        if valid is not None:
            keep &= np.asarray(valid, dtype=bool).ravel()
        k = self.num_classes
        # One bincount over the flattened pair index is the fastest exact way to count pairs.
        idx = ref[keep].astype(np.int64) * k + pred[keep].astype(np.int64)
        self.matrix += np.bincount(idx, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def scores(self, names: Sequence[str] | None = None) -> dict:
        return scores(self.matrix, names)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores(matrix: np.ndarray, names: Sequence[str] | None = None) -> dict:
    """Overall and per-class scores of a confusion matrix (rows reference, columns predicted).

    ``miou`` (and ``mean_f1``) average over the classes that occur in the reference or the
    prediction (the others have no defined IoU), as scikit-learn's macro averages do.
    """
    cm = np.asarray(matrix, dtype=np.float64)
    k = cm.shape[0]
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # reference pixels per class
    predicted = cm.sum(axis=0)
    total = cm.sum()
    union = support + predicted - tp
    iou = _ratio(tp, union)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    present = union > 0
    accuracy = float(tp.sum() / total) if total else 0.0
    expected = float((support * predicted).sum() / total**2) if total else 0.0
    kappa = (accuracy - expected) / (1.0 - expected) if total and expected < 1.0 else 0.0
    names = list(names) if names is not None else [str(i) for i in range(k)]
    per_class = [
        {
            "name": names[i],
            "iou": float(iou[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(k)
    ]
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "accuracy": accuracy,
        "kappa": float(kappa),
        "mean_f1": float(f1[present].mean()) if present.any() else 0.0,
        "pixels": int(total),
        "per_class": per_class,
        "confusion": cm.astype(np.int64).tolist(),
    }

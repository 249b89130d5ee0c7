"""Losses of supervised training and the class weights that counter imbalance.

Unlabelled pixels carry ``IGNORE_INDEX`` and count in no loss.
"""

from __future__ import annotations

import numpy as np

from ..errors import MapSegError
from .dataset import IGNORE_INDEX

LOSSES = ("ce", "dice_ce")


def class_weights(counts: np.ndarray, max_weight: float = 10.0) -> np.ndarray:
    """Inverse square-root frequency weights, mean 1 over labelled pixels, capped.

    The square root softens plain inverse frequency, which lets a class of a few pixels
    dominate the loss and the predictions; classes without pixels get weight 1 (never used).
    """
    counts = np.asarray(counts, dtype=np.float64)
    w = np.ones_like(counts)
    has = counts > 0
    if has.sum() < 2:
        return w
    w[has] = 1.0 / np.sqrt(counts[has] / counts[has].sum())
    w[has] /= (w[has] * counts[has]).sum() / counts[has].sum()
    return np.clip(w, 1.0 / max_weight, max_weight)


def dice_loss(logits, target, num_classes: int):
    """Soft dice over labelled pixels, averaged over the classes present in the batch."""
    import torch

    valid = target != IGNORE_INDEX
    probs = torch.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    onehot = torch.nn.functional.one_hot(target.clamp(min=0), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.float() * valid.unsqueeze(1)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return (1 - dice[present]).mean() if bool(present.any()) else logits.sum() * 0.0


def make_criterion(loss: str, weights: np.ndarray | None, num_classes: int, device: str):
    """``criterion(logits, target)``: (class-weighted) cross-entropy, plus dice for dice_ce."""
    import torch

    if loss not in LOSSES:
        raise MapSegError(f"Unknown loss '{loss}': choose one of {', '.join(LOSSES)}.")
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
    ce = torch.nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE_INDEX)

    def criterion(logits, target):
        value = ce(logits.float(), target)
        if loss == "dice_ce":
            value = value + dice_loss(logits, target, num_classes)
        return value

    return criterion

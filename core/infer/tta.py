"""Test-time augmentation: each tile goes through the network under the 8 symmetries of the
square (4 rotations by 90 degrees, each with and without a mirror), and the 8 outputs, turned
back, are averaged.

A network trained with random flips and rotations still answers a little differently to each
view; the average is steadier, at 8 times the inference time. It added 0.005 to 0.026 east mIoU
to each of five U-Nets on the NC Landsat benchmark, and nothing on the Dubai tiles
(``bench/RESULTS_train.md``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# (quarter turns, mirrored): the dihedral group of the square
VIEWS = tuple((k, m) for k in range(4) for m in (False, True))


def to_view(x: np.ndarray, k: int, mirrored: bool) -> np.ndarray:
    """(n, c, H, W) mirrored left-right (if asked), then turned ``k`` quarter turns."""
    if mirrored:
        x = x[..., ::-1]
    return np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))


def from_view(y: np.ndarray, k: int, mirrored: bool) -> np.ndarray:
    """The inverse of ``to_view``: the output of a view put back on the input's grid."""
    y = np.rot90(y, -k, axes=(-2, -1))
    return y[..., ::-1] if mirrored else y


def view_mean(forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """The mean of ``forward`` over the 8 views of ``x`` (n, c, H, W), on ``x``'s grid."""
    total = None
    for k, mirrored in VIEWS:
        y = from_view(forward(to_view(x, k, mirrored)), k, mirrored)
        total = y.astype(np.float32, copy=True) if total is None else total + y
    total *= 1.0 / len(VIEWS)
    return total


class Augmented:
    """A tile network (``core.model.network.Network`` or an ONNX one) run under the 8 views.

    The inner network runs unweighted; the blend window is applied once to the mean, so it
    need not be symmetric.
    """

    def __init__(self, net, weights: np.ndarray) -> None:
        self.net = net.with_weights(np.ones_like(weights))
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.cuda, self.alloc, self.device = net.cuda, net.alloc, net.device

    @property
    def batch(self) -> int:  # the inner network may halve it after a GPU out-of-memory error
        return self.net.batch

    def with_weights(self, weights: np.ndarray) -> Augmented:
        return Augmented(self.net, weights)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return view_mean(self.net, x) * self.weights

"""The network on its device for tiled inference: device choice, batch size, OOM-safe forward.

``Network`` maps a normalised (n, bands, T, T) batch to blend-weighted outputs: softmax
probabilities for a model with classes, raw embeddings for a label-free model (``softmax=False``).
On CUDA it uses pinned buffers, fp16 autocast, and halves the batch when the GPU runs out of
memory.
"""

from __future__ import annotations

import numpy as np

from ..errors import MapSegError
from ..progress import Reporter
from .device import is_cuda


def default_batch(tile: int, device: str) -> int:
    # about 0.25 M pixels per batch on CPU (enough to amortise per-call overhead), 2 M on CUDA
    pixels = (8 if is_cuda(device) else 1) * 512 * 512
    return max(1, pixels // (tile * tile))


class Network:
    """The model on its device: normalised batch -> softmax (or raw output) * blend window."""

    def __init__(
        self,
        model,
        device: str,
        weights: np.ndarray,
        batch: int,
        reporter: Reporter,
        softmax: bool = True,
    ):
        import torch

        self.torch, self.model, self.device = torch, model, device
        self.softmax = softmax
        self.cuda = is_cuda(device)
        self.weights = torch.from_numpy(weights).to(device)
        self.batch = batch
        self.reporter = reporter

    def with_weights(self, weights: np.ndarray) -> Network:
        """The same model and device with other blend weights (ones: unblended)."""
        return Network(
            self.model, self.device, weights, self.batch, self.reporter, softmax=self.softmax
        )

    def alloc(self, shape) -> np.ndarray:
        """Input batch buffers; pinned on CUDA so host->device copies run asynchronously."""
        return self.torch.empty(shape, dtype=self.torch.float32, pin_memory=self.cuda).numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        n, parts, k = x.shape[0], [], 0
        while k < n:
            b = min(self.batch, n - k)
            try:
                parts.append(self._forward(torch.from_numpy(x[k : k + b])))
            except getattr(torch, "OutOfMemoryError", RuntimeError) as err:
                if not self.cuda or "out of memory" not in str(err).lower():
                    raise
                self._out_of_memory(b)
                continue
            k += b
        if not self.cuda:  # already in host memory: no copy
            return (parts[0] if len(parts) == 1 else torch.cat(parts)).numpy()
        out = torch.empty((n,) + tuple(parts[0].shape[1:]), pin_memory=True)
        k = 0
        for part in parts:
            out[k : k + len(part)].copy_(part, non_blocking=True)
            k += len(part)
        torch.cuda.current_stream().synchronize()
        return out.numpy()

    def _forward(self, x):
        torch = self.torch
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=self.cuda)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
                logits = self.model(x)
            probs = torch.softmax(logits.float(), dim=1) if self.softmax else logits.float()
            probs *= self.weights
        return probs

    def _out_of_memory(self, b: int) -> None:
        self.torch.cuda.empty_cache()
        if b <= 1:
            raise MapSegError(
                "The GPU ran out of memory even with one tile per batch. Lower TILE_SIZE "
                "(e.g. to half), close other programs using the GPU, or set DEVICE to cpu."
            )
        self.batch = max(1, b // 2)
        self.reporter.warn(
            f"The GPU ran out of memory with {b} tiles per batch; retrying with {self.batch}. "
            f"Set BATCH_SIZE to {self.batch} (or lower TILE_SIZE) to avoid the retry."
        )

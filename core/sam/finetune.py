"""Helpers for fine-tuning SAM's mask decoder (``nets/sam.py``) with the generic training loop.

SAM is prompted with a box covering the whole tile, so a tile without the object teaches the
decoder to answer "nothing here" and a tile with it teaches the outline. Labelled scenes usually
hold far more of one kind than the other; ``balanced_weights`` gives per-tile sampling weights
(for ``torch.utils.data.WeightedRandomSampler``) that draw both kinds equally often.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import MapSegError


def object_fractions(
    labels: Sequence[np.ndarray], object_value: int = 1, ignore_value: int | None = 255
) -> np.ndarray:
    """The share of labelled pixels of each tile that belong to the object."""
    out = np.zeros(len(labels), dtype=np.float64)
    for i, tile in enumerate(labels):
        valid = tile != ignore_value if ignore_value is not None else np.ones(tile.shape, bool)
        n = int(np.count_nonzero(valid))
        out[i] = np.count_nonzero((tile == object_value) & valid) / n if n else 0.0
    return out


def balanced_weights(
    fractions: Sequence[float], positive_share: float = 0.5, min_fraction: float = 0.0
) -> np.ndarray:
    """Sampling weights (summing to 1) so positive tiles (object share > ``min_fraction``) are
    drawn with probability ``positive_share`` and negative ones with the rest, each kind
    uniformly. With only one kind present every tile gets the same weight."""
    if not 0.0 < positive_share < 1.0:
        raise MapSegError("positive_share must be strictly between 0 and 1.")
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.size == 0:
        raise MapSegError("No tile to sample from: label some ground first.")
    positive = fractions > min_fraction
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(fractions.size, 1.0 / fractions.size)
    return np.where(positive, positive_share / n_pos, (1.0 - positive_share) / n_neg)


def load_finetuned_sam(model_path: str, checkpoint: str, device: str = "cpu"):
    """(Sam on ``device`` in eval mode, its config): the encoders of ``checkpoint`` with the mask
    decoder that Train Model fine-tuned into the MapSeg model ``model_path``."""
    from ..model.modelfile import build_model, load_model

    meta, state = load_model(model_path)
    if meta["architecture"] != "sam":
        raise MapSegError(
            f"'{model_path}' is a {meta['architecture']} model, not Segment Anything fine-tuned "
            "by Train Model (ARCHITECTURE sam). Leave MODEL empty to use the checkpoint's own "
            "decoder, or use this model with Segment Raster."
        )
    # Older model files hold the whole SAM (no checkpoint id): CHECKPOINT is not needed then.
    needed = bool(meta["arch_kwargs"].get("checkpoint_id"))
    net = build_model(meta, state, checkpoint if needed else "")
    return net.sam.to(device).eval(), net.config

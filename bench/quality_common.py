"""Shared pieces of the quality benchmarks: the classic baseline, whole-image prediction, scores.

The baseline is a scikit-learn random forest on per-pixel colour and local statistics (each
band, plus its mean and standard deviation in 5 x 5 and 15 x 15 windows), trained on the same
labelled pixels the networks learn from: a strong classic method, not a straw man.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "pkg"))

from mapseg.core.evaluate.metrics import ConfusionMatrix  # noqa: E402
from mapseg.core.infer.tta import view_mean  # noqa: E402
from mapseg.core.io.normalize import normalise  # noqa: E402
from mapseg.core.model.modelfile import build_model, load_model  # noqa: E402

WINDOWS = (5, 15)


def features(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H * W, C * 5): each band, and its local mean and std per window."""
    out = []
    for band in image.astype(np.float32):
        out.append(band)
        for w in WINDOWS:
            mean = ndimage.uniform_filter(band, w)
            sq = ndimage.uniform_filter(band * band, w)
            out += [mean, np.sqrt(np.maximum(sq - mean * mean, 0))]
    return np.stack(out).reshape(len(out), -1).T


def random_forest(train: list, test: list, threads: int, samples: int = 150_000, seed: int = 0):
    """Fit on ``train`` [(image, labels, valid)] (up to ``samples`` labelled pixels), predict
    each ``test`` image; returns (predictions, seconds)."""
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    per = samples // max(1, len(train))
    for image, ref, valid in train:
        idx = np.flatnonzero(valid.ravel())
        idx = rng.choice(idx, size=min(per, idx.size), replace=False)
        xs.append(features(image)[idx])
        ys.append(ref.ravel()[idx])
    rf = RandomForestClassifier(
        n_estimators=100, min_samples_leaf=2, n_jobs=threads, random_state=seed
    )
    rf.fit(np.concatenate(xs), np.concatenate(ys))
    preds = [rf.predict(features(img)).reshape(img.shape[1:]) for img in test]
    return preds, time.perf_counter() - t0


def predict(model_path: str, image: np.ndarray, device: str = "cpu", tta: bool = False):
    """Class values of a saved model over a whole (small) image; ``tta``: the mean softmax of
    the 8 flipped/rotated views, as Segment Raster's TEST_TIME_AUGMENTATION computes it."""
    meta, state = load_model(model_path)
    net = build_model(meta, state).eval().to(device)
    x = normalise(image.astype(np.float32), meta["band_stats"])[None]

    def forward(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(a).to(device)), 1).cpu().numpy()

    probs = view_mean(forward, x) if tta else forward(x)
    return np.array([c["value"] for c in meta["classes"]])[probs.argmax(1)[0]]


def scores(preds: list, refs: list, valids: list, values) -> dict:
    """mIoU, accuracy, kappa and per-class IoU over several images (one confusion matrix)."""
    lut = np.full(max(values) + 2, -1, dtype=np.int64)
    lut[list(values)] = np.arange(len(values))
    cm = ConfusionMatrix(len(values))
    for pred, ref, valid in zip(preds, refs, valids):
        p = lut[np.clip(pred, 0, len(lut) - 1)]
        r = lut[np.clip(ref, 0, len(lut) - 1)]
        cm.update(r, p, valid & (r >= 0) & (p >= 0))
    return cm.scores()

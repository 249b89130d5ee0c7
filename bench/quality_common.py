"""Shared pieces of the quality benchmarks: the classic baseline, Segment Raster's prediction,
scores.

The baseline is a scikit-learn random forest on per-pixel colour and local statistics (each
band, plus its mean and standard deviation in 5 x 5 and 15 x 15 windows), trained on the same
labelled pixels the networks learn from: a strong classic method, not a straw man.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "pkg"))

from mapseg.core.evaluate.metrics import ConfusionMatrix  # noqa: E402
from mapseg.core.infer.segment import Options, segment_raster  # noqa: E402

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


def predict(model_path: str, image_path: str, device: str = "cpu", tta: bool = False):
    """Class values of a saved model over a GeoTIFF exactly as Segment Raster writes them with
    its defaults (the model's tile size, an eighth of it as blended overlap); ``tta``: its
    TEST_TIME_AUGMENTATION. Scoring one whole-image forward pass instead would measure a
    network a user never runs (a DeepLabV3 with a whole-tile context scored 0.131 that way and
    0.247 on 128-px tiles). PyTorch runs it: ONNX Runtime gives the same classes (bench_onnx)."""
    with tempfile.TemporaryDirectory(prefix="quality_predict_") as tmp:
        out = os.path.join(tmp, "classes.tif")
        opts = Options(device=device, tta=tta, runtime="torch")
        segment_raster(image_path, model_path, out, options=opts)
        return gdal.Open(out).ReadAsArray().astype(np.int64)


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


def superpixel_settings(text: str) -> list[tuple[str, int]]:
    """``"slic:20,felzenszwalb:40"`` -> [("slic", 20), ("felzenszwalb", 40)] (--superpixels)."""
    return [(m.split(":")[0].strip(), int(m.split(":")[1])) for m in text.split(",") if m.strip()]

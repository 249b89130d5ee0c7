"""The small separable scene and Train Model helpers that several test modules share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import write_raster

from mapseg.core.io.normalize import normalise
from mapseg.core.model.modelfile import build_model
from mapseg.core.train.job import TrainJob
from mapseg.core.train.loop import FitConfig

LEVELS = np.array([300, 1500, 2700])  # band-1 value of classes 1, 2, 3 (uint16 imagery)


def scene(h: int = 128, w: int = 128, seed: int = 0):
    """(image (3, h, w) uint16, labels (h, w) uint8 in 1..3): per-pixel separable classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cls = 1 + (np.sin(xx / 6.0) + np.cos(yy / 5.0) > 0).astype(np.uint8)
    cls[(xx + 2 * yy) % 37 < 6] = 3
    b1 = LEVELS[cls - 1] + rng.normal(0, 150, cls.shape)
    b2 = 4000 - LEVELS[cls - 1] + rng.normal(0, 150, cls.shape)
    b3 = rng.normal(2000, 300, cls.shape)  # pure noise band
    img = np.clip(np.stack([b1, b2, b3]), 0, 65535).astype(np.uint16)
    return img, cls


def fast_fit(**kw) -> FitConfig:
    base = dict(epochs=6, batch_size=2, learning_rate=0.02, seed=0)
    base.update(kw)
    return FitConfig(**base)


def job(tmp_path, img_path, lab_path, name="model.pt", **kw) -> TrainJob:
    base = dict(
        images=[str(img_path)],
        label_rasters=[str(lab_path)],
        output=str(tmp_path / name),
        tile_size=32,
        arch_kwargs={"base_width": 4},
        fit=fast_fit(),
    )
    base.update(kw)
    return TrainJob(**base)


def predict(meta: dict, state: dict, img: np.ndarray) -> np.ndarray:
    """Class values predicted by a saved model on a whole (small) image."""
    net = build_model(meta, state).eval()
    x = normalise(img.astype(np.float32), meta["band_stats"])
    with torch.no_grad():
        idx = net(torch.from_numpy(x)[None]).argmax(1)[0].numpy()
    return np.array([c["value"] for c in meta["classes"]])[idx]


def scene_files(folder: Path) -> dict:
    """``scene()`` written to ``folder`` as img.tif and lab.tif (nodata 0), with the arrays."""
    img, cls = scene()
    return {
        "dir": folder,
        "img": img,
        "cls": cls,
        "img_path": write_raster(folder / "img.tif", img),
        "lab_path": write_raster(folder / "lab.tif", cls, nodata=0),
    }

"""Tiny MapSeg model files for Segment Raster's tests (built here, never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import osr

CLASSES = [
    {"value": 3, "name": "dark", "color": [20, 40, 160]},
    {"value": 7, "name": "bright", "color": [250, 200, 30]},
]
STATS = [{"offset": 0.0, "scale": 255.0, "low": 0.0, "high": 255.0} for _ in range(3)]


def utm_wkt(epsg: int = 32633) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def save(path, net, bands=3, classes=None, tile=64, pixel_size=10.0, **extra) -> str:
    from mapseg.core.model.modelfile import new_meta, save_model

    classes = classes or CLASSES
    meta = new_meta(
        architecture="unet",
        arch_kwargs=net.mapseg_arch["kwargs"],
        in_bands=bands,
        band_stats=[dict(STATS[0]) for _ in range(bands)],
        classes=classes,
        tile_size=tile,
        pixel_size=pixel_size,
        crs_wkt=utm_wkt(),
        **extra,
    )
    return save_model(str(path), meta, net.state_dict())


def random_model(path, bands=3, classes=None, seed=0, **kwargs) -> str:
    """An untrained unet (base_width 4): deterministic, arbitrary but spatially varied output."""
    import torch

    from mapseg.nets import build_network

    classes = classes or CLASSES
    torch.manual_seed(seed)
    net = build_network("unet", bands, len(classes), base_width=4).eval()
    # Balance the classes: shift the head's biases so each class wins on part of a sample
    # image (a raw random net tends to pick one class everywhere).
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    sample = torch.from_numpy(blobs(64, 64, seed=seed)[0].astype(np.float32) / 255.0)[None]
    with torch.no_grad():
        logits = net(sample)[0].flatten(1)
        for c in range(1, len(classes)):
            head.bias[c] -= torch.quantile(logits[c] - logits[0], 1 - 1 / (c + 1))
    return save(path, net, bands=bands, classes=classes, **kwargs)


def blobs(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, rows, cols) uint8 image of bright blobs on a dark ground, and its 0/1 truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    truth = np.zeros((rows, cols), np.uint8)
    for _ in range(max(2, rows * cols // 1500)):
        cy, cx, r = rng.uniform(0, rows), rng.uniform(0, cols), rng.uniform(4, 14)
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    base = np.where(truth, 190.0, 60.0)
    img = base[None] + rng.normal(0, 25, (3, rows, cols))
    return np.clip(img, 0, 255).astype(np.uint8), truth


def trained_model(path, steps: int = 80, seed: int = 0) -> str:
    """A unet trained for a few seconds to tell bright (class 7) from dark (class 3) pixels."""
    import torch

    from mapseg.nets import build_network

    torch.manual_seed(seed)
    net = build_network("unet", 3, 2, base_width=4)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    img, truth = blobs(256, 256, seed=seed + 100)
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(img.astype(np.float32) / 255.0)
    y_all = torch.from_numpy(truth.astype(np.int64))
    net.train()
    for _ in range(steps):
        idx = rng.integers(0, 256 - 32, size=(8, 2))
        x = torch.stack([x_all[:, r : r + 32, c : c + 32] for r, c in idx])
        y = torch.stack([y_all[r : r + 32, c : c + 32] for r, c in idx])
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return save(Path(path), net)


def unsupervised_model(path, bands=3, dim=8, seed=0, tile=64, **extra) -> str:
    """A tiny untrained label-free unet: ``dim`` embedding channels, per-input normalisation."""
    import torch

    from mapseg.core.model.modelfile import new_meta, save_model
    from mapseg.nets import build_network

    torch.manual_seed(seed)
    net = build_network("unet", bands, dim, base_width=4).eval()
    meta = new_meta(
        architecture="unet",
        arch_kwargs=net.mapseg_arch["kwargs"],
        in_bands=bands,
        band_stats=[dict(STATS[0]) for _ in range(bands)],
        classes=[],
        mode="unsupervised",
        embedding_dim=dim,
        normalization="per-input",
        tile_size=tile,
        pixel_size=10.0,
        crs_wkt=utm_wkt(),
        **extra,
    )
    return save_model(str(path), meta, net.state_dict())


def regions(rows: int, cols: int, seed: int = 0, dtype=np.uint8, scale: float = 1.0):
    """(3, rows, cols) image of three clearly different land covers, and its 0/1/2 truth.

    Left third: dark blue, smooth; middle: bright yellow with texture; right: mid green,
    smooth; the borders wander so the regions are not just stripes.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    wobble = 0.08 * cols * np.sin(yy / max(rows, 1) * 2 * np.pi)
    truth = np.digitize(xx + wobble, [cols / 3, 2 * cols / 3]).astype(np.uint8)
    colours = np.array([[30, 40, 120], [220, 200, 60], [70, 150, 60]], np.float64)
    img = colours[truth].transpose(2, 0, 1)
    img = img + rng.normal(0, 2, img.shape)
    img[:, truth == 1] += 12 * np.sign(np.sin(xx[truth == 1] * 1.3))  # texture
    return (np.clip(img, 0, 255) * scale).astype(dtype), truth

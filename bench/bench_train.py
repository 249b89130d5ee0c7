"""Training throughput: the real Train Model pipeline vs the bare network on in-memory tensors.

The pipeline (GeoTIFF -> labels -> random windows -> normalisation -> batches -> augmentation
-> step with its safeguards (skip non-finite losses, keep batch-norm statistics),
with ``train_model``) should step nearly as fast as the same network stepping on tensors that
already sit in memory: data handling must not be the bottleneck. Both are measured in this run,
alternately, and the median of each is compared. ``--lazy`` also measures the pipeline with
tiles read from disk by the prefetch thread instead of preloaded.

Usage: ``.venv/bin/python bench/bench_train.py [--size 512] [--tile 64] [--threads 1]``
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal, osr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "pkg"))

from mapseg.core.progress import Reporter  # noqa: E402
from mapseg.core.train.job import TrainJob, train_model  # noqa: E402
from mapseg.core.train.loop import FitConfig  # noqa: E402
from mapseg.core.train.losses import make_criterion  # noqa: E402
from mapseg.nets import build_network  # noqa: E402


def write(path: str, arr: np.ndarray, gdal_type: int, nodata=None) -> str:
    arr = arr if arr.ndim == 3 else arr[None]
    ds = gdal.GetDriverByName("GTiff").Create(
        path, arr.shape[2], arr.shape[1], arr.shape[0], gdal_type, options=["TILED=YES"]
    )
    ds.SetGeoTransform([500000, 1.0, 0, 4000000, 0, -1.0])
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(arr.shape[0]):
        ds.GetRasterBand(i + 1).WriteArray(arr[i])
        if nodata is not None:
            ds.GetRasterBand(i + 1).SetNoDataValue(nodata)
    ds = None
    return path


def pipeline(img, lab, out, args, budget_mb) -> float:
    """Training steps per second of ``train_model`` (training steps only, no validation)."""
    job = TrainJob(
        images=[img],
        label_rasters=[lab],
        output=out,
        tile_size=args.tile,
        arch_kwargs={"base_width": args.width},
        val_fraction=0.1,
        memory_budget_mb=budget_mb,
        fit=FitConfig(epochs=args.epochs, batch_size=args.batch, seed=0),
    )
    meta = train_model(job, Reporter())
    hist = meta["history"][1:]  # the first epoch warms up allocators and caches
    return sum(h["steps"] for h in hist) / sum(h["train_seconds"] for h in hist)


def bare(args, steps: int, bands: int, classes: int) -> float:
    """Steps per second of the same network, loss and optimiser on tensors already in memory."""
    torch.manual_seed(0)
    net = build_network("unet", bands, classes, base_width=args.width).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    ce = make_criterion("dice_ce", np.ones(classes), classes, "cpu")  # Train Model's default
    x = torch.rand(args.batch, bands, args.tile, args.tile)
    y = torch.randint(0, classes, (args.batch, args.tile, args.tile))
    for _ in range(2):  # warm-up
        loss = ce(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = ce(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--lazy", action="store_true", help="also time lazily read tiles")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.size
    yy, xx = np.mgrid[:n, :n]
    cls = (1 + (np.sin(xx / 17.0) + np.cos(yy / 13.0) > 0) + ((xx + yy) % 97 < 15)).astype(np.uint8)
    img = np.stack([cls * 900 + rng.normal(0, 300, cls.shape) for _ in range(4)])
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    atexit.register(shutil.rmtree, tmp, True)  # rasters and models
    ip = write(str(tmp / "img.tif"), np.clip(img, 0, 65535).astype(np.uint16), gdal.GDT_UInt16)
    lp = write(str(tmp / "lab.tif"), cls, gdal.GDT_Byte, nodata=0)
    tiles = (n // args.tile) ** 2
    steps = max(4, int(0.9 * tiles) // args.batch)
    print(
        f"{n}x{n} px, 4 bands, tiles {args.tile} px ({tiles}), batch {args.batch}, unet "
        f"base_width {args.width}, {args.threads} thread(s), torch {torch.__version__}"
    )
    piped, bares, lazies = [], [], []
    for r in range(args.repeats):
        bares.append(bare(args, steps, 4, 3))
        piped.append(pipeline(ip, lp, str(tmp / "m.pt"), args, 1024))
        if args.lazy:
            lazies.append(pipeline(ip, lp, str(tmp / "m.pt"), args, 0))
        print(
            f"  round {r + 1}: in-memory tensors {bares[-1]:.2f} steps/s, pipeline "
            f"{piped[-1]:.2f} steps/s" + (f", lazy pipeline {lazies[-1]:.2f}" if lazies else "")
        )
    b, pi = statistics.median(bares), statistics.median(piped)
    print(f"in-memory tensors : {b:.2f} steps/s")
    print(f"pipeline (preload): {pi:.2f} steps/s  ratio {pi / b:.2f}x (target >= 0.85x)")
    if lazies:
        la = statistics.median(lazies)
        print(f"pipeline (lazy)   : {la:.2f} steps/s  ratio {la / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

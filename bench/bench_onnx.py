"""Segment Raster through ONNX Runtime: against onnxruntime's raw forward pass, against Segment
Raster's PyTorch path, and the agreement of the two paths' classes.

All figures come from one run on the same raster, model and tiles (the machine is shared, so
only ratios measured together mean anything):

- raw ONNX forward: the exported network alone (same session settings as Segment Raster) on the
  very normalised tile batches Segment Raster feeds it, held in memory beforehand;
- Segment Raster ONNX: the whole run with the .onnx model (reading, normalising, the network,
  blending, writing a GeoTIFF); target >= 0.95x of the raw forward pass;
- Segment Raster PyTorch: the same run with the .pt model forced onto PyTorch; target: the ONNX
  path >= 1.8x faster;
- agreement: share of pixels where the ONNX and PyTorch outputs have the same class, for a
  U-Net trained briefly on the scene (target >= 99.9%).

Runs alternate and the best of each is kept. Defaults follow issue 16's setting (U-Net width
16, 3 bands, 4 classes, tile 256, overlap 32, batch 4) on a 2048^2 raster to keep runs short.

Usage: .venv/bin/python bench/bench_onnx.py [--size 2048] [--width 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "pkg"))

from bench_segment import BATCH, CLASSES, OVERLAP, TILE, batches, fmt, make_inputs  # noqa: E402
from osgeo import gdal  # noqa: E402

from mapseg.core.infer.segment import Options, segment_raster  # noqa: E402
from mapseg.core.model.export import export_model  # noqa: E402
from mapseg.core.model.modelfile import build_model, load_model, save_model  # noqa: E402
from mapseg.core.model.onnxnet import session_options  # noqa: E402


def train_briefly(model_path: str, scene: str, steps: int) -> None:
    """A few optimiser steps so the classes are a trained model's, not near-ties of random
    weights: classes are intensity quartiles of the smoothed first band."""
    import torch
    from scipy import ndimage

    meta, state = load_model(model_path)
    net = build_model(meta, state)
    img = gdal.Open(scene).ReadAsArray(0, 0, 512, 512).astype(np.float32) / 255.0
    smooth = ndimage.uniform_filter(img[0], 9)
    labels = np.digitize(smooth, np.quantile(smooth, [0.25, 0.5, 0.75]))
    x_all, y_all = torch.from_numpy(img), torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    net.train()
    for _ in range(steps):
        idx = rng.integers(0, 512 - 64, size=(8, 2))
        x = torch.stack([x_all[:, r : r + 64, c : c + 64] for r, c in idx])
        y = torch.stack([y_all[r : r + 64, c : c + 64] for r, c in idx])
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # batch-norm statistics averaged over many windows: a few steps leave the running means far
    # off, and the eval-mode net would predict one class everywhere
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(20):
            idx = rng.integers(0, 512 - 64, size=(8, 2))
            net(torch.stack([x_all[:, r : r + 64, c : c + 64] for r, c in idx]))
    save_model(model_path, meta, net.eval().state_dict())


def raw_onnx(path: str, data) -> tuple[float, float]:
    """(wall, CPU) seconds of the network alone over ``data``."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, sess_options=session_options())
    name = session.get_inputs()[0].name
    session.run(None, {name: data[0]})  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for x in data:
        session.run(None, {name: x})
    return time.perf_counter() - start, time.process_time() - cpu


def segment(path, model, out, runtime) -> tuple[float, float]:
    """(wall, CPU) seconds of a whole Segment Raster run."""
    opts = Options(tile_size=TILE, overlap=OVERLAP, batch_size=BATCH, device="cpu", runtime=runtime)
    start, cpu = time.perf_counter(), time.process_time()
    res = segment_raster(path, model, out, options=opts)
    assert res.runtime.startswith("ONNX" if runtime != "torch" else "PyTorch"), res.runtime
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    import onnxruntime as ort
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--width", type=int, default=16, help="unet base_width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mapseg-bench-onnx-") as tmp:
        os.environ["MAPSEG_CACHE_DIR"] = os.path.join(tmp, "cache")
        path, pt = make_inputs(tmp, args.size, args.width)
        train_briefly(pt, path, args.train_steps)
        onnx = os.path.join(tmp, "model.onnx")
        diff = export_model(pt, onnx, tile=TILE)["max_difference"]
        data = batches(path, load_model(pt)[0])
        n_tiles = sum(len(x) for x in data)
        raw, seg_onnx, seg_torch, cpu = [], [], [], {"raw": [], "onnx": []}
        for r in range(args.repeats):
            for key, runs, (wall, used) in (
                ("raw", raw, raw_onnx(onnx, data)),
                ("onnx", seg_onnx, segment(path, onnx, os.path.join(tmp, f"o{r}.tif"), "auto")),
            ):
                runs.append(wall)
                cpu[key].append(used)
            seg_torch.append(segment(path, pt, os.path.join(tmp, f"torch{r}.tif"), "torch")[0])
        a = gdal.Open(os.path.join(tmp, "o0.tif")).ReadAsArray()
        b = gdal.Open(os.path.join(tmp, "torch0.tif")).ReadAsArray()
        shares = np.bincount(b.ravel(), minlength=CLASSES) / b.size
    print(
        f"{args.size}x{args.size} px, 3 bands, unet base_width {args.width} ({args.train_steps} "
        f"training steps), {CLASSES} classes, tile {TILE}, overlap {OVERLAP}, batch {BATCH}: "
        f"{n_tiles} tiles; onnxruntime {ort.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    best = {k: min(v) for k, v in (("raw", raw), ("onnx", seg_onnx), ("torch", seg_torch))}
    for label, key, runs in (
        ("raw ONNX forward     ", "raw", raw),
        ("Segment Raster ONNX  ", "onnx", seg_onnx),
        ("Segment Raster torch ", "torch", seg_torch),
    ):
        print(f"{label}: {n_tiles / best[key]:7.2f} tiles/s  (runs {fmt(runs)})")
    paired = sorted(r / s for r, s in zip(raw, seg_onnx))
    print(
        f"ONNX pipeline / raw ONNX forward : {best['raw'] / best['onnx']:.3f} best vs best, "
        f"{paired[len(paired) // 2]:.3f} median of paired runs  (target >= 0.95)"
    )
    # CPU seconds are steadier than wall time on a shared machine: the pipeline's extra work
    print(
        f"CPU-time ratio raw / pipeline    : {min(cpu['raw']) / min(cpu['onnx']):.3f}  "
        f"(raw {fmt(cpu['raw'])}; pipeline {fmt(cpu['onnx'])})"
    )
    print(f"ONNX path / PyTorch path         : {best['torch'] / best['onnx']:.3f}  (target >= 1.8)")
    print(
        f"agreement ONNX vs PyTorch classes : {(a == b).mean() * 100:.4f} %  (target >= 99.9; "
        f"PyTorch class shares {', '.join(f'{s:.2f}' for s in shares)}; "
        f"export max |diff| {diff:.2g})"
    )


if __name__ == "__main__":
    main()

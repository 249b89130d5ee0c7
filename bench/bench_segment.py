"""Segment Raster's CPU throughput against the raw forward pass of the same model.

The raw figure runs the network alone on the very tile batches Segment Raster feeds it (read,
normalised and held in memory beforehand); Segment Raster's figure is the whole run: reading,
normalising, the network, softmax, blending and writing a GeoTIFF. The pipeline overlaps the
I/O and blending with the network, so the ratio should be >= 0.9. Runs alternate and the best
of each is kept, since the machine may be shared.

Usage: .venv/bin/python bench/bench_segment.py [--size 1568] [--width 16] [--repeats 3]
       [--threads N]
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

from osgeo import gdal  # noqa: E402

from mapseg.core.infer.segment import Options, segment_raster  # noqa: E402
from mapseg.core.io.normalize import normalise  # noqa: E402
from mapseg.core.io.tiling import TileGrid, read_padded  # noqa: E402
from mapseg.core.model.modelfile import build_model, load_model, new_meta, save_model  # noqa: E402
from mapseg.nets import build_network  # noqa: E402

TILE, OVERLAP, BATCH, CLASSES = 256, 32, 4, 4


def make_inputs(folder: str, size: int, width: int) -> tuple[str, str]:
    import torch

    torch.manual_seed(0)
    net = build_network("unet", 3, CLASSES, base_width=width)
    meta = new_meta(
        architecture="unet",
        arch_kwargs=net.mapseg_arch["kwargs"],
        in_bands=3,
        band_stats=[{"offset": 0.0, "scale": 255.0, "low": 0.0, "high": 255.0}] * 3,
        classes=[{"value": i, "name": f"c{i}", "color": [60 * i, 80, 200]} for i in range(CLASSES)],
        tile_size=TILE,
    )
    model = save_model(os.path.join(folder, "model.pt"), meta, net.state_dict())
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    path = os.path.join(folder, "scene.tif")
    ds = gdal.GetDriverByName("GTiff").Create(
        path, size, size, 3, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE"]
    )
    ds.SetGeoTransform([0, 1, 0, 0, 0, -1])
    for b in range(3):
        img = 127 + 90 * np.sin(xx / (17.0 + 5 * b)) * np.cos(yy / 23.0)
        img += rng.normal(0, 10, xx.shape)
        ds.GetRasterBand(b + 1).WriteArray(img.clip(0, 255).astype(np.uint8))
    ds = None
    return path, model


def batches(path: str, meta: dict) -> list:
    """The normalised tile batches Segment Raster feeds the network, in memory."""
    ds = gdal.Open(path)
    grid = TileGrid(ds.RasterXSize, ds.RasterYSize, TILE, OVERLAP)
    tiles = list(grid.tiles((0, 0, ds.RasterXSize, ds.RasterYSize)))
    out = []
    for start in range(0, len(tiles), BATCH):
        chunk = tiles[start : start + BATCH]
        x = np.empty((len(chunk), 3, TILE, TILE), np.float32)
        for k, (i, j) in enumerate(chunk):
            block, _ = read_padded(
                lambda w: ds.ReadAsArray(*w), grid.tile_window(i, j), grid.width, grid.height
            )
            normalise(block, meta["band_stats"], out=x[k])
        out.append(x)
    return out


def raw_forward(model, data) -> tuple[float, float]:
    """(wall, CPU) seconds of the network alone over ``data``."""
    import torch

    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for x in data:
            model(torch.from_numpy(x))
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1568)
    parser.add_argument("--width", type=int, default=16, help="unet base_width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mapseg-bench-") as tmp:
        path, model_path = make_inputs(tmp, args.size, args.width)
        meta, state = load_model(model_path)
        model = build_model(meta, state).eval()
        data = batches(path, meta)
        n_tiles = sum(len(x) for x in data)
        # runtime="torch": this bench is about the PyTorch path (bench_onnx.py: ONNX Runtime)
        opts = Options(
            tile_size=TILE, overlap=OVERLAP, batch_size=BATCH, device="cpu", runtime="torch"
        )
        raw_forward(model, data[:2])  # warm-up
        raw, seg, raw_cpu, seg_cpu = [], [], [], []
        for r in range(args.repeats):
            wall, cpu = raw_forward(model, data)
            raw.append(wall)
            raw_cpu.append(cpu)
            start, cpu = time.perf_counter(), time.process_time()
            res = segment_raster(path, model_path, os.path.join(tmp, f"out{r}.tif"), options=opts)
            seg.append(time.perf_counter() - start)
            seg_cpu.append(time.process_time() - cpu)
            assert res.tiles == n_tiles
        best_raw, best_seg = min(raw), min(seg)
        print(
            f"{args.size}x{args.size} px, 3 bands, unet base_width {args.width}, {CLASSES} "
            f"classes, tile {TILE}, overlap {OVERLAP}, batch {BATCH}: {n_tiles} tiles; "
            f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
        )
        print(f"raw forward     : {n_tiles / best_raw:7.2f} tiles/s  (runs {fmt(raw)})")
        print(f"segment raster  : {n_tiles / best_seg:7.2f} tiles/s  (runs {fmt(seg)})")
        paired = sorted(r / s for r, s in zip(raw, seg))
        print(
            f"throughput ratio: {best_raw / best_seg:.3f} best vs best, "
            f"{paired[len(paired) // 2]:.3f} median of paired runs  (target >= 0.9)"
        )
        # CPU seconds are what a shared machine measures reliably: the pipeline's extra work
        print(
            f"CPU-time ratio  : {min(raw_cpu) / min(seg_cpu):.3f}  (raw {fmt(raw_cpu)}; "
            f"segment raster {fmt(seg_cpu)}; load average {os.getloadavg()[0]:.1f})"
        )


def fmt(times) -> str:
    return ", ".join(f"{t:.2f}s" for t in times)


if __name__ == "__main__":
    main()

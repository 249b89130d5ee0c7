"""Peak memory of Segment Raster: a 4000 x 4000 and a 16000 x 16000 3-band byte raster.

Each run is a child process (peak RSS = its VmHWM), segmenting the whole raster with a tiny
model (unet base_width 2) so the figures are about the pipeline, not the network. The rasters
are VRT mosaics of one 1000 x 1000 textured GeoTIFF (made in a temporary folder, deleted
afterwards), read through GDAL like any raster. Targets: 16000^2 under 1.5 GB and within 1.2x
of 4000^2. A baseline child (imports, model loaded, one tile run) shows the fixed cost.

``--runtime onnx`` runs the model exported to ONNX (Export Model) through ONNX Runtime in
children that never import PyTorch (checked): targets 16000^2 under 0.6 GB and within 1.1x of
4000^2. ``--runtime torch`` (default) keeps the PyTorch path.

Usage: .venv/bin/python bench/bench_segment_memory.py [--sizes 4000 16000] [--tile 256]
       [--runtime torch|onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "pkg"))

from osgeo import gdal  # noqa: E402

PIECE = 1000
CLASSES = 4


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make_model(folder: str, tile: int) -> str:
    import torch

    from mapseg.core.model.modelfile import new_meta, save_model
    from mapseg.nets import build_network

    torch.manual_seed(0)
    net = build_network("unet", 3, CLASSES, base_width=2)
    meta = new_meta(
        architecture="unet",
        arch_kwargs=net.mapseg_arch["kwargs"],
        in_bands=3,
        band_stats=[{"offset": 0.0, "scale": 255.0, "low": 0.0, "high": 255.0}] * 3,
        classes=[{"value": i, "name": f"c{i}", "color": [60 * i, 80, 200]} for i in range(CLASSES)],
        tile_size=tile,
    )
    return save_model(os.path.join(folder, "tiny.pt"), meta, net.state_dict())


def make_piece(folder: str) -> str:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:PIECE, 0:PIECE]
    path = os.path.join(folder, "piece.tif")
    ds = gdal.GetDriverByName("GTiff").Create(
        path, PIECE, PIECE, 3, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE"]
    )
    for b in range(3):
        img = 127 + 90 * np.sin(xx / (13.0 + 4 * b)) * np.cos(yy / 29.0)
        img += rng.normal(0, 12, xx.shape)
        ds.GetRasterBand(b + 1).WriteArray(img.clip(0, 255).astype(np.uint8))
    ds = None
    return path


def make_mosaic(folder: str, piece: str, size: int) -> str:
    """A size x size VRT tiling ``piece`` (size must be a multiple of the piece)."""
    n = size // PIECE
    bands = []
    for b in range(1, 4):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT='0'>{piece}</SourceFilename>"
            f"<SourceBand>{b}</SourceBand><SrcRect xOff='0' yOff='0' xSize='{PIECE}' "
            f"ySize='{PIECE}'/><DstRect xOff='{c * PIECE}' yOff='{r * PIECE}' "
            f"xSize='{PIECE}' ySize='{PIECE}'/></SimpleSource>"
            for r in range(n)
            for c in range(n)
        )
        bands.append(f"<VRTRasterBand dataType='Byte' band='{b}'>{sources}</VRTRasterBand>")
    path = os.path.join(folder, f"mosaic_{size}.vrt")
    Path(path).write_text(
        f"<VRTDataset rasterXSize='{size}' rasterYSize='{size}'>"
        "<GeoTransform>500000, 1, 0, 4000000, 0, -1</GeoTransform>"
        + "".join(bands)
        + "</VRTDataset>"
    )
    return path


def child(args) -> None:
    from mapseg.core.infer.segment import Options, segment_raster

    if args.runtime == "torch":
        import torch

        torch.set_num_threads(args.threads)
    opts = Options(tile_size=args.tile, overlap=args.tile // 8, device="cpu", runtime=args.runtime)
    start = time.perf_counter()
    res = segment_raster(args.raster, args.model, args.output, options=opts)
    print(
        json.dumps(
            {
                "peak_mb": peak_rss_mb(),
                "seconds": time.perf_counter() - start,
                "tiles": res.tiles,
                "batch": res.batch_size,
                "runtime": res.runtime,
                "torch_imported": "torch" in sys.modules,
            }
        )
    )


def run_child(raster: str, model: str, output: str, tile: int, threads: int, runtime: str):
    cmd = [sys.executable, __file__, "--child", raster, model, output]
    cmd += ["--tile", str(tile), "--threads", str(threads), "--runtime", runtime]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # ONNX Runtime's operator threads
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("RASTER", "MODEL", "OUTPUT"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--tile", type=int, default=256)
    # one torch thread: steadier on a shared machine, and memory does not depend on it
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    args = parser.parse_args()
    if args.child:
        args.raster, args.model, args.output = args.child
        child(args)
        return
    tmp = tempfile.mkdtemp(prefix="mapseg-bench-mem-")
    try:
        model = make_model(tmp, args.tile)
        limit, spread = (1.5, 1.2) if args.runtime == "torch" else (0.6, 1.1)
        if args.runtime == "onnx":
            from mapseg.core.model.export import export_model

            model = export_model(model, os.path.join(tmp, "tiny.onnx"))["output"]
        piece = make_piece(tmp)
        base = run_child(
            piece, model, os.path.join(tmp, "base.tif"), args.tile, args.threads, args.runtime
        )
        print(
            f"baseline ({PIECE}x{PIECE}, {base['tiles']} tiles): peak RSS "
            f"{base['peak_mb']:.0f} MB  [tiny unet base_width 2, tile {args.tile}, "
            f"{args.threads} thread(s), {base['runtime']}, torch imported: "
            f"{base['torch_imported']}]"
        )
        results = {}
        for size in args.sizes:
            raster = make_mosaic(tmp, piece, size)
            out = os.path.join(tmp, f"out_{size}.tif")
            r = run_child(raster, model, out, args.tile, args.threads, args.runtime)
            assert args.runtime == "torch" or not r["torch_imported"]
            results[size] = r
            check = gdal.Open(out)
            assert (check.RasterXSize, check.RasterYSize) == (size, size)
            check = None
            os.remove(out)
            print(
                f"{size:>6} x {size:<6}: peak RSS {r['peak_mb']:7.0f} MB, {r['tiles']} tiles, "
                f"batch {r['batch']}, {r['seconds']:.0f} s ({r['tiles'] / r['seconds']:.1f} "
                "tiles/s)"
            )
        if len(results) >= 2:
            small, big = min(results), max(results)
            ratio = results[big]["peak_mb"] / results[small]["peak_mb"]
            print(
                f"peak ratio {big}/{small}: {ratio:.3f} (target <= {spread}); {big}^2 peak "
                f"{results[big]['peak_mb'] / 1024:.2f} GB (target < {limit} GB)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Polygonize Classes vs raw gdal.Polygonize to the same GeoPackage, plus peak memory.

    .venv/bin/python bench/bench_polygonize.py            # 3000 x 3000, about a minute
    .venv/bin/python bench/bench_polygonize.py --size 4000 --speckle 0.02
    .venv/bin/python bench/bench_polygonize.py --big      # 20000 x 20000 (long; ~2 GB disk)

Each measurement runs in its own subprocess so peak RSS is per run. The raw baseline is the
best raw case: gdal.Polygonize into a GeoPackage inside one transaction (the same as ours), with
the class field only. Ours adds name/area/perimeter. Both run twice, interleaved; the faster of
each is compared, which damps noise from other processes on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build" / "pkg"))
gdal.UseExceptions()


def make_classes(path: str, size: int, speckle: float, n_classes: int = 6) -> None:
    """A smooth, blobby class map (like a segmentation) written in strips, never whole."""
    ds = gdal.GetDriverByName("GTiff").Create(
        path, size, size, 1, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=YES"]
    )
    ds.SetGeoTransform([500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0])
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    rng = np.random.default_rng(0)
    x = np.arange(size, dtype=np.float32)[None, :]
    for y0 in range(0, size, 512):
        y = np.arange(y0, min(size, y0 + 512), dtype=np.float32)[:, None]
        v = np.sin(x / 37) + np.sin(y / 53) + np.sin((x + y) / 71) + 0.5 * np.sin((x - 2 * y) / 29)
        v += rng.normal(0, speckle * 3, v.shape).astype(np.float32)
        edges = np.linspace(-2.5, 2.5, n_classes + 1)[1:-1]
        band.WriteArray((np.digitize(v, edges) + 1).astype(np.uint8), 0, y0)
    ds = None


def run_raw(src: str, dest: str) -> int:
    ds = gdal.Open(src)
    band = ds.GetRasterBand(1)
    out = ogr.GetDriverByName("GPKG").CreateDataSource(dest)
    layer = out.CreateLayer("raw", ds.GetSpatialRef(), ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
    out.StartTransaction()
    mask = None if band.GetMaskFlags() & gdal.GMF_ALL_VALID else band.GetMaskBand()
    gdal.Polygonize(band, mask, layer, 0, [])
    out.CommitTransaction()
    n = layer.GetFeatureCount()
    layer = out = None
    return n


def run_ours(src: str, dest: str, **kwargs) -> int:
    from mapseg.core.vectorize.polygonize import polygonize_classes

    return polygonize_classes(src, dest, **kwargs).features


def child(args) -> None:
    t = time.perf_counter()
    if args.child == "raw":
        n = run_raw(args.src, args.dest)
    else:
        n = run_ours(args.src, args.dest, **json.loads(args.kwargs))
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": seconds, "features": n, "peak_mb": peak}))


def measure(kind: str, src: str, dest: str, kwargs: dict) -> dict:
    if os.path.exists(dest):
        os.remove(dest)
    cmd = [sys.executable, __file__, "--child", kind, "--src", src, "--dest", dest]
    cmd += ["--kwargs", json.dumps(kwargs)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--speckle", type=float, default=0.01)
    parser.add_argument("--big", action="store_true", help="20000 x 20000, one run each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    size = 20000 if args.big else args.size
    repeats = 1 if args.big else 2
    with tempfile.TemporaryDirectory(prefix="bench-polygonize-") as tmp:
        src = os.path.join(tmp, "classes.tif")
        t = time.perf_counter()
        make_classes(src, size, args.speckle)
        print(f"class raster {size} x {size} written in {time.perf_counter() - t:.1f} s")
        runs = {"raw": [], "ours": [], "ours+ignore": []}
        for _ in range(repeats):
            runs["raw"].append(measure("raw", src, os.path.join(tmp, "raw.gpkg"), {}))
            runs["ours"].append(measure("ours", src, os.path.join(tmp, "ours.gpkg"), {}))
        ignore = {"ignore_values": "1"}
        runs["ours+ignore"].append(measure("ours", src, os.path.join(tmp, "i.gpkg"), ignore))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
        for kind, r in best.items():
            print(
                f"{kind:12s} {r['seconds']:8.2f} s  {r['features']:8d} polygons  "
                f"peak RSS {r['peak_mb']:7.1f} MB"
            )
        ratio = best["ours"]["seconds"] / best["raw"]["seconds"]
        print(f"ratio ours / raw gdal.Polygonize (GeoPackage, one transaction): {ratio:.2f}x")
        print(f"raster size in memory would be {size * size / 2**20:.0f} MB (Byte)")


if __name__ == "__main__":
    main()

"""Benchmark: Topographic Sinks engine vs calling whitebox-workflows directly, one run.

The baseline reads the DEM with Whitebox, fills it (``fill_depressions_wang_and_liu``,
``fix_flats=False``, the tool the engine uses) and writes it with Whitebox's defaults. The engine
does all of that plus the padding, the nodata handling, the subtraction and a compressed, tiled
Float32 GeoTIFF. Target: engine <= 1.25 x baseline.

    .venv/bin/python bench/bench_sinks.py [--size 3000] [--sinks]
    .venv/bin/python bench/bench_sinks.py --memory [--size 1500]

``--memory`` runs the engine alone in a fresh process on a generated DEM with a nodata hole
inside (the costliest path: the holes are drained by reconstruction) and prints the peak memory
per DEM cell next to ``core.terrain.budget.BYTES_PER_CELL``, the estimate used to refuse DEMs
that would not fit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build" / "pkg"))
SHARED = ROOT.parent / "shared" / "data" / "dem"

from mapseg.core.terrain.sinks import topographic_sinks  # noqa: E402

gdal.UseExceptions()


def make_dem(path: str, size: int, seed: int = 0) -> str:
    """Rolling terrain with noise and pits; Float32, DEFLATE without predictor (Whitebox cannot
    read predictor-compressed GeoTIFFs, so the baseline needs a file it can read)."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((size // 16 + 2, size // 16 + 2))
    ds = gdal.GetDriverByName("MEM").Create(
        "", coarse.shape[1], coarse.shape[0], 1, gdal.GDT_Float64
    )
    ds.SetGeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    ds.GetRasterBand(1).WriteArray(coarse)
    smooth = gdal.Warp("", ds, format="MEM", width=size, height=size, resampleAlg="cubicspline")
    z = smooth.ReadAsArray() * 200 + np.linspace(0, 50, size)[None, :]
    z += rng.standard_normal((size, size)) * 0.2
    out = gdal.GetDriverByName("GTiff").Create(
        path, size, size, 1, gdal.GDT_Float32, ["TILED=YES", "COMPRESS=DEFLATE"]
    )
    out.SetGeoTransform([500000.0, 5.0, 0.0, 4000000.0, 0.0, -5.0])
    out.GetRasterBand(1).SetNoDataValue(-9999.0)
    out.GetRasterBand(1).WriteArray(z.astype(np.float32))
    out = None
    return path


def whitebox_direct(src: str, dest: str) -> float:
    import whitebox_workflows as wbw

    t = time.perf_counter()
    wbe = wbw.WbEnvironment()
    dem = wbe.read_raster(src)
    filled = wbe.hydrology.fill_depressions_wang_and_liu(dem=dem, fix_flats=False)
    wbe.write_raster(filled, dest)
    return time.perf_counter() - t


def engine(src: str, dest: str, sinks: str | None) -> float:
    t = time.perf_counter()
    topographic_sinks(src, dest, sinks_dest=sinks)
    return time.perf_counter() - t


def bench(name: str, src: str, work: str, with_sinks: bool) -> None:
    ds = gdal.Open(src)
    cells = ds.RasterXSize * ds.RasterYSize
    ds = None
    base = whitebox_direct(src, os.path.join(work, "wb.tif"))
    ours = engine(src, os.path.join(work, "depth.tif"), None)
    line = (
        f"{name}: {cells / 1e6:.2f} M cells | whitebox read+fill+write {base:.2f} s "
        f"({cells / base / 1e6:.2f} M cells/s) | engine {ours:.2f} s "
        f"({cells / ours / 1e6:.2f} M cells/s) | ratio {ours / base:.2f}"
    )
    if with_sinks:
        both = engine(src, os.path.join(work, "depth2.tif"), os.path.join(work, "s.gpkg"))
        line += f" | with polygons {both:.2f} s (ratio {both / base:.2f})"
    print(line, flush=True)


def memory_per_cell(size: int) -> None:
    """Peak resident memory of one engine run, in bytes per DEM cell (fresh interpreter)."""
    import subprocess

    from mapseg.core.terrain.budget import BYTES_PER_CELL

    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as work:
        src = make_dem(os.path.join(work, "dem.tif"), size)
        ds = gdal.Open(src, gdal.GA_Update)
        hole = np.full((size // 20, size // 20), -9999.0, np.float32)
        ds.GetRasterBand(1).WriteArray(hole, size // 3, size // 3)
        ds = None
        code = (
            "import resource, sys; sys.path.insert(0, sys.argv[3]);"
            "import whitebox_workflows, scipy.ndimage, skimage.morphology;"
            "from mapseg.core.terrain.sinks import topographic_sinks;"
            "m = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "b = m();"
            "topographic_sinks(sys.argv[1], sys.argv[2], sinks_dest=sys.argv[2] + '.gpkg');"
            "print((m() - b) * 1024)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, src, os.path.join(work, "d.tif"), str(ROOT / "build/pkg")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        per_cell = float(out.stdout.split()[-1]) / (size * size)
        print(
            f"generated {size}x{size} with a nodata hole: peak {per_cell:.0f} bytes per cell "
            f"(estimate used by the memory check: {BYTES_PER_CELL}; ratio "
            f"{per_cell / BYTES_PER_CELL:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000, help="generated DEM side (pixels)")
    parser.add_argument("--sinks", action="store_true", help="also time the polygon output")
    parser.add_argument("--memory", action="store_true", help="peak memory per DEM cell")
    args = parser.parse_args()
    if args.memory:
        memory_per_cell(args.size)
        return
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as work:
        src = make_dem(os.path.join(work, "dem.tif"), args.size)
        bench(f"generated {args.size}x{args.size}", src, work, args.sinks)
        for name in ("pysheds_dem.tif", "opengeos_alexandria_dtm.tif"):
            path = SHARED / name
            if not path.exists():
                continue
            # A copy Whitebox can read (no predictor), so both sides read the same cells.
            copy = os.path.join(work, "shared_" + name)
            gdal.Translate(copy, str(path), creationOptions=["COMPRESS=DEFLATE"])
            bench(name, copy, work, args.sinks)


if __name__ == "__main__":
    main()

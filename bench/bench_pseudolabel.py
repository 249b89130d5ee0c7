"""Pseudo-label From Points scales with the points, not the raster.

Builds a 50000 x 50000 3-band VRT (a 500 x 500 texture upsampled on read: nothing is written
at full size), places 500 random points and times the engine per method, against the same
points on a 5000 x 5000 VRT of the same texture. Prints seconds, pixels segmented, the output
file size and the ratio big/small: close to 1 means the work follows the points.

Run: ``.venv/bin/python bench/bench_pseudolabel.py [n_points] [superpixel_size]``
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "pkg"))

from mapseg.core.labels.pseudolabel import pseudo_label  # noqa: E402

gdal.UseExceptions()


def texture(path: str, n: int = 500, seed: int = 0) -> str:
    """A 3-band Byte raster of smooth random patches (fields, woods, water...)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    bands = [ndimage.gaussian_filter(rng.random((n, n)), 3) for _ in range(3)]
    ds = gdal.GetDriverByName("GTiff").Create(path, n, n, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((0.0, 100.0, 0.0, 50000.0, 0.0, -100.0))
    for i, b in enumerate(bands):
        b = (b - b.min()) / (b.max() - b.min())
        ds.GetRasterBand(i + 1).WriteArray((np.round(b * 8) * 31).astype(np.uint8))
    ds = None
    return path


def upsampled(src: str, dest: str, size: int) -> str:
    gdal.Translate(dest, src, format="VRT", width=size, height=size)
    return dest


def main() -> None:
    n_points = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    sp_size = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    tmp = tempfile.mkdtemp(prefix="bench_pseudolabel_")
    atexit.register(shutil.rmtree, tmp, True)  # rasters and models
    small = texture(os.path.join(tmp, "texture.tif"))
    rng = np.random.default_rng(1)
    # map coordinates in the texture's 0..50000 extent: the same places on both grids
    xs, ys = rng.uniform(0, 50000, n_points), rng.uniform(0, 50000, n_points)
    classes = rng.integers(1, 6, n_points)
    print(f"{n_points} points, superpixels ~{sp_size} px")
    for method in ("slic", "felzenszwalb", "watershed"):
        rows = {}
        for side in (5000, 50000):
            vrt = upsampled(small, os.path.join(tmp, f"big{side}.vrt"), side)
            out = os.path.join(tmp, f"labels_{method}_{side}.tif")
            t, cpu = time.perf_counter(), time.process_time()
            r = pseudo_label(vrt, xs, ys, classes, out, method=method, size=sp_size)
            rows[side] = (time.perf_counter() - t, r["pixels_segmented"], os.path.getsize(out))
            print(
                f"  {method:12s} {side:>5d}^2: {rows[side][0]:6.2f} s "
                f"({time.process_time() - cpu:.2f} s CPU), "
                f"{r['pixels_segmented'] / 1e6:6.2f} M px segmented in {r['windows']} windows, "
                f"output {rows[side][2] / 1e6:.2f} MB, {r['points_used']} points used"
            )
        (t5, p5, _), (t50, p50, _) = rows[5000], rows[50000]
        print(
            f"  {method:12s} ratio 50000^2 / 5000^2 (100x the pixels): time {t50 / t5:.2f}, "
            f"pixels segmented {p50 / p5:.2f}"
        )


if __name__ == "__main__":
    main()

"""Segment Raster with the shipped default model vs k-means on the filter bank (issue 12 item 3).

On one 4000 x 4000 3-band Byte raster (smooth random patches, the texture of
``bench_pseudolabel.py``), in the same run: Segment Raster with an empty ``MODEL`` (the default
model, 6 segments, the CPU runtime it picks) against the whole-raster baseline that the
label-free benchmark scores, i.e. reading the raster, normalising it, the filter bank (means at
3, 9, 27 px and standard deviation at 9 px) and k-means with 6 clusters
(``core.train.labelfree.segment``), writing nothing. Target: the default model within 2x.

Run: ``.venv/bin/python bench/bench_default_model.py [size] [rounds]``
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "build" / "pkg"))
from bench_pseudolabel import texture  # noqa: E402
from quality_label_free import load  # noqa: E402

from mapseg.core.infer.segment import Options, segment_raster  # noqa: E402
from mapseg.core.model.clustering import filter_bank  # noqa: E402
from mapseg.core.train.labelfree import segment  # noqa: E402

gdal.UseExceptions()
SEGMENTS = 6


def make_raster(folder: str, size: int) -> str:
    small = texture(os.path.join(folder, "texture.tif"))
    path = os.path.join(folder, f"scene{size}.tif")
    gdal.Translate(path, small, width=size, height=size, creationOptions=["TILED=YES"])
    return path


def default_model(path: str, folder: str) -> tuple[float, str]:
    out = os.path.join(folder, "segments.tif")
    if os.path.exists(out):
        os.remove(out)
    start = time.perf_counter()
    res = segment_raster(path, "", out, options=Options(num_segments=SEGMENTS, device="cpu"))
    return time.perf_counter() - start, res.runtime


def filter_bank_kmeans(path: str) -> float:
    start = time.perf_counter()
    x, valid = load(path)  # as the label-free benchmark reads a scene
    seg = segment(filter_bank(x), x, valid, SEGMENTS)
    assert len(np.unique(seg)) == SEGMENTS
    return time.perf_counter() - start


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    folder = tempfile.mkdtemp(prefix="bench_default_model_")
    atexit.register(shutil.rmtree, folder, True)  # rasters and models
    path = make_raster(folder, size)
    print(f"{size} x {size} x 3 Byte, {SEGMENTS} segments, {rounds} rounds (alternating)")
    model_s, bank_s = [], []
    for r in range(rounds):
        seconds, runtime = default_model(path, folder)
        model_s.append(seconds)
        bank_s.append(filter_bank_kmeans(path))
        print(f"  round {r + 1}: default model {model_s[-1]:.1f} s ({runtime}), "
              f"filter bank + k-means {bank_s[-1]:.1f} s", flush=True)  # fmt: skip
    ratio = np.median(model_s) / np.median(bank_s)
    print(f"median: default model {np.median(model_s):.1f} s, filter bank + k-means "
          f"{np.median(bank_s):.1f} s: {ratio:.2f}x (target <= 2x: "
          f"{'met' if ratio <= 2 else 'MISSED'})")  # fmt: skip


if __name__ == "__main__":
    main()

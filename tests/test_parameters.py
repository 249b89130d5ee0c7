"""Choices by name through qgis_process, clear messages for wrong names, and GDAL's exception
setting left as it was for the rest of QGIS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import ROOT, qgis_process, qgis_process_json, write_raster

from mapseg.core.model.modelfile import load_model


def _tiny_scene(tmp_path):
    rng = np.random.default_rng(3)
    cls = np.ones((128, 128), np.uint8)
    cls[:, 64:] = 2
    img = (cls * 90 + rng.integers(0, 20, (3, 128, 128))).astype(np.uint8)
    return write_raster(tmp_path / "img.tif", img), write_raster(tmp_path / "lab.tif", cls)


def test_every_choice_takes_names(provider):
    from qgis.core import QgsProcessingParameterEnum

    enums = [
        (alg.id(), p.name())
        for alg in provider.algorithms()
        for p in alg.parameterDefinitions()
        if isinstance(p, QgsProcessingParameterEnum)
    ]
    assert ("mapseg:trainmodel", "ARCHITECTURE") in enums
    assert ("mapseg:segmentraster", "DEVICE") in enums
    for alg_id, name in enums:
        param = provider.algorithm(alg_id.split(":")[1]).parameterDefinition(name)
        assert param.usesStaticStrings(), f"{alg_id} {name} takes indices"
        assert param.defaultValue() in param.options(), f"{alg_id} {name} default"


def test_names_work_through_qgis_process(tmp_path):
    img, lab = _tiny_scene(tmp_path)
    out = tmp_path / "m.pt"
    result = qgis_process_json(
        "trainmodel",
        {
            "INPUT": img,
            "LABELS": lab,
            "ARCHITECTURE": "unet",
            "LOSS": "dice_ce",
            "DEVICE": "cpu",
            "ARCH_OPTIONS": "base_width=4",
            "TILE_SIZE": 32,
            "EPOCHS": 1,
            "BATCH_SIZE": 2,
            "OUTPUT_MODEL": str(out),
        },
    )
    assert result["results"]["OUTPUT_MODEL"] == str(out)
    meta = load_model(str(out))[0]
    assert meta["architecture"] == "unet"
    assert meta["arch_kwargs"]["base_width"] == 4


def test_wrong_name_lists_the_valid_ones(tmp_path):
    img, lab = _tiny_scene(tmp_path)
    out = tmp_path / "m.pt"
    proc = qgis_process(
        "trainmodel",
        {"INPUT": img, "LABELS": lab, "ARCHITECTURE": "unet3", "OUTPUT_MODEL": str(out)},
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "ARCHITECTURE" in text
    for name in ("unet", "deeplabv3", "fcn", "refinenet", "sam"):
        assert name in text
    assert not out.exists()
    # an index is not a name: refused with the same help, not silently mapped
    proc = qgis_process(
        "segmentraster",
        {"INPUT": img, "DEVICE": 1, "OUTPUT": str(tmp_path / "c.tif")},
    )
    assert proc.returncode != 0
    assert "auto, cpu, cuda" in proc.stdout + proc.stderr
    assert not (tmp_path / "c.tif").exists()


GDAL_STATE = """
import json, os, sys
sys.path[:0] = ["/usr/share/qgis/python/plugins", "/usr/share/qgis/python", sys.argv[1]]
from osgeo import gdal, ogr, osr
from qgis.core import QgsApplication
app = QgsApplication([], False); app.initQgis()
from processing.core.Processing import Processing
Processing.initialize()
state = lambda: [m.GetUseExceptions() for m in (gdal, ogr, osr)]
seen = {"start": state()}
from mapseg.provider import MapSegProvider
provider = MapSegProvider()  # kept referenced: the registry does not own a Python object
QgsApplication.processingRegistry().addProvider(provider)
seen["loaded"] = state()
import processing
res = processing.run("mapseg:polygonizeclasses", {"INPUT": sys.argv[2], "OUTPUT": sys.argv[3]})
seen["after_run"] = state()
try:
    bad = {"INPUT": sys.argv[2], "OUTPUT": "/nonexistent/x.gpkg"}
    processing.run("mapseg:polygonizeclasses", bad)
except Exception:
    pass
seen["after_error"] = state()
print(json.dumps(seen))
"""


def test_gdal_exceptions_stay_off_for_the_rest_of_qgis(tmp_path):
    """Loading the provider and running algorithms (also one that fails) never leaves GDAL,
    OGR or OSR exceptions switched on in a QGIS whose setting is off."""
    cls = np.zeros((20, 20), np.uint8)
    cls[5:15, 5:15] = 1
    src = write_raster(tmp_path / "cls.tif", cls)
    script = tmp_path / "state.py"
    script.write_text(GDAL_STATE)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(ROOT / "build" / "qgis-profile")
    proc = subprocess.run(
        [sys.executable, str(script), str(ROOT / "build" / "pkg"), src, str(tmp_path / "p.gpkg")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {k: [0, 0, 0] for k in ("start", "loaded", "after_run", "after_error")}
    assert (tmp_path / "p.gpkg").exists()

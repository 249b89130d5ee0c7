"""The plugin loads as QGIS loads it, and the provider exposes every algorithm."""

import configparser
import importlib
import subprocess

from conftest import QGIS_PROCESS, ROOT

from mapseg.algorithms import ALGORITHMS


def test_metadata_is_complete():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    general = meta["general"]
    assert general["hasProcessingProvider"] == "yes"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["license"] == "GPL-2.0-or-later"
    assert len(general["about"]) > 200
    assert (ROOT / general["icon"]).exists()


def test_provider_lists_every_algorithm(provider):
    from qgis.core import QgsProcessingModelAlgorithm

    algs = [a for a in provider.algorithms() if not isinstance(a, QgsProcessingModelAlgorithm)]
    ids = sorted(a.id() for a in algs)
    assert ids == sorted(f"mapseg:{cls.NAME}" for cls in ALGORITHMS)
    models = sorted(p.stem for p in (ROOT / "models").glob("*.model3"))
    loaded = [a for a in provider.algorithms() if isinstance(a, QgsProcessingModelAlgorithm)]
    assert len(loaded) == len(models) >= 1
    assert all(m.group() == "Models" and m.shortHelpString() for m in loaded)
    for alg in algs:
        assert alg.displayName() and alg.group()
        assert alg.shortHelpString(), f"{alg.id()} has no help text"


def test_plugin_never_imports_pyqt5_directly():
    for path in ROOT.rglob("*.py"):
        if any(part in {".venv", "build"} for part in path.parts):
            continue
        text = path.read_text()
        banned = "PyQt" + "5"  # spelled apart so this file does not match itself
        assert f"from {banned}" not in text and f"import {banned}" not in text, path


def test_provider_import_does_not_import_torch():
    # QGIS starts fast and the provider loads without torch: importing it must not pull torch in.
    code = (
        "import sys; sys.path.append('/usr/share/qgis/python/plugins');"
        "import mapseg.provider, mapseg.algorithms;"
        "assert 'torch' not in sys.modules, 'torch imported at provider import time';"
        "assert 'whitebox_workflows' not in sys.modules"
    )
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", code], check=True)


def test_core_never_imports_qgis():
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text()
        assert "import qgis" not in text and "from qgis" not in text, path
    importlib.import_module("mapseg.core.io.raster")


def test_qgis_process_lists_the_provider():
    out = subprocess.run(
        [str(QGIS_PROCESS), "list"], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "MapSeg" in out
    for cls in ALGORITHMS:
        assert f"mapseg:{cls.NAME}" in out

"""The dependency installer: QGIS's interpreter found, real pip, the package folder switched in
only when complete, the plugin's path hook in a new qgis_process, and the dialog offscreen.

Installs use a tiny wheel built here (no network); the resolution of the full requirement set
asks the package index (metadata only: pip fetches no wheel in a dry run).
"""

from __future__ import annotations

import configparser
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from conftest import ROOT
from wheels import HangingIndex, make_wheel

from mapseg.install import folder_for, installed
from mapseg.install.cuda import cuda_builds, parse_driver_version, torch_index
from mapseg.install.interpreter import candidates, find_python, installed_version
from mapseg.install.pip import REQUIREMENTS, InstallError, Request, check_build, read_report
from mapseg.install.run import Events, resolve

QGIS_PYTHON = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
QGIS_PROCESS_BIN = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
PKG_PATH = str(ROOT / "build" / "pkg")  # `import mapseg` for QGIS's interpreter


def run_cli(*args, python=QGIS_PYTHON, **kwargs):
    env = dict(os.environ, PYTHONPATH=PKG_PATH)
    return subprocess.run(
        [str(python), "-m", "mapseg.install", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def local_args(wheels: Path) -> list:
    return [
        "--packages",
        "mapseg_probe",
        "--pip-arg=--no-index",
        f"--pip-arg=--find-links={wheels}",
    ]


# -- interpreter discovery ------------------------------------------------------------------


def test_windows_layouts_find_python_under_the_prefix_not_qgis_exe():
    osgeo4w = candidates(
        r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\apps\Python312", "win32", (3, 12)
    )
    assert osgeo4w[0] == PureWindowsPath(r"C:\OSGeo4W\apps\Python312\python.exe")
    assert all(p.name.lower().startswith("python") for p in osgeo4w)
    # The standalone installer: prefix may be reported as the QGIS folder itself.
    standalone = candidates(
        r"C:\Program Files\QGIS 3.34.4\bin\qgis-bin.exe",
        r"C:\Program Files\QGIS 3.34.4",
        "win32",
        (3, 12),
    )
    assert PureWindowsPath(r"C:\Program Files\QGIS 3.34.4\apps\Python312\python.exe") in standalone
    assert not [p for p in standalone if p.name.lower() == "qgis-bin.exe"]


def test_macos_app_bundle_layout(tmp_path):
    bundle = "/Applications/QGIS.app/Contents"
    found = candidates(
        f"{bundle}/MacOS/QGIS",
        f"{bundle}/Frameworks/Python.framework/Versions/3.9",
        "darwin",
        (3, 9),
    )
    assert found[0] == PurePosixPath(f"{bundle}/MacOS/bin/python3.9")
    assert PurePosixPath(f"{bundle}/Frameworks/Python.framework/Versions/3.9/bin/python3") in found
    # On a real tree, find_python returns the bundle's Python that runs (here: a link to this
    # machine's QGIS Python placed where the bundle keeps it).
    contents = tmp_path / "QGIS.app" / "Contents"
    (contents / "MacOS" / "bin").mkdir(parents=True)
    (contents / "MacOS" / "QGIS").write_text("not a python")
    (contents / "MacOS" / "bin" / "python3").symlink_to(QGIS_PYTHON)
    got = find_python(str(contents / "MacOS" / "QGIS"), str(contents / "Frameworks"), "darwin")
    assert got == contents / "MacOS" / "bin" / "python3"
    # A Python that sees another numpy than QGIS's is never taken for QGIS's.
    with pytest.raises(InstallError, match="numpy 1"):
        find_python(
            str(contents / "MacOS" / "QGIS"),
            str(contents / "Frameworks"),
            "darwin",
            expect={"numpy": "0.0.1"},
        )


def test_linux_qgis_python_found_and_working():
    # Inside QGIS on Linux sys.executable is whatever "python3" PATH finds (a pyenv shim on
    # this machine, without GDAL): the prefix decides.
    got = find_python("/usr/bin/qgis", "/usr", "linux")
    assert got == QGIS_PYTHON
    out = subprocess.run(
        [str(got), "-c", "import osgeo, numpy; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == installed_version("numpy")


# -- CUDA build choice ------------------------------------------------------------------------


def test_cuda_build_follows_the_driver():
    assert parse_driver_version("535.104.05\n535.104.05\n") == "535.104.05"
    assert parse_driver_version("NVIDIA-SMI has failed") is None
    assert cuda_builds("535.104.05", "linux") == ["cu121", "cu118"]
    assert cuda_builds("560.50", "linux")[0] == "cu126"
    assert cuda_builds("560.50", "win32")[0] == "cu124"  # Windows numbers its drivers apart
    assert cuda_builds("580.82.07", "linux")[0] == "cu130"
    assert cuda_builds("470.57", "linux") == [] and cuda_builds(None, "linux") == []
    assert cuda_builds("580.82.07", "darwin") == []
    assert torch_index("cpu", "linux") == "https://download.pytorch.org/whl/cpu"
    assert torch_index("cpu", "win32") is None and torch_index("cu126", "win32").endswith("cu126")
    assert Request("py", build="cpu", platform="linux").index_args()[0] == "--extra-index-url"


# -- resolution -------------------------------------------------------------------------------


def test_full_requirement_set_resolves_with_qgis_numpy_and_gdal_kept(tmp_path):
    """pip --dry-run --report with QGIS's interpreter: every requirement resolves, and nothing
    replaces numpy or GDAL. ``pypi``: this machine reaches PyPI but not download.pytorch.org."""
    request = Request(str(QGIS_PYTHON), list(REQUIREMENTS), "pypi", "linux")
    info, packages = resolve(request, tmp_path / "root", Events(), tmp_path)
    names = {p.name.lower() for p in packages}
    assert {
        "torch",
        "torchvision",
        "scikit-learn",
        "whitebox-workflows",
        "segment-anything",
    } <= names
    assert not names & {"numpy", "gdal"}
    assert (tmp_path / "constraints.txt").read_text().splitlines() == [
        f"numpy=={info['numpy']}",
        f"GDAL=={info['gdal']}",
    ]
    assert info["numpy"] == installed_version("numpy") and info["gdal"] == installed_version("GDAL")
    # Every module an algorithm needs is either in QGIS's Python already or in the report.
    from mapseg.algorithms.base import MapSegAlgorithm
    from mapseg.gui.install_dialog import required_modules

    for module in required_modules():
        pip_name = MapSegAlgorithm.PIP_NAMES.get(module, module).lower()
        present = subprocess.run([str(QGIS_PYTHON), "-c", f"import {module}"]).returncode == 0
        assert present or pip_name in names, module
    torch = next(p for p in packages if p.name.lower() == "torch")
    assert torch.size and torch.size > 50_000_000, "download size of torch not measured"


def test_a_report_replacing_numpy_or_the_wrong_torch_build_is_refused(tmp_path):
    def report(*pins):
        items = [
            {"metadata": {"name": n, "version": v}, "download_info": {"url": "file:///x"}}
            for n, v in pins
        ]
        path = tmp_path / "report.json"
        path.write_text(json.dumps({"install": items}))
        return path

    assert [p.pin for p in read_report(report(("six", "1.0")))] == ["six==1.0"]
    with pytest.raises(InstallError, match="numpy==2.1.0"):
        read_report(report(("six", "1.0"), ("numpy", "2.1.0")))
    with pytest.raises(InstallError, match="GDAL==3.9.0"):
        read_report(report(("GDAL", "3.9.0")))
    check_build(read_report(report(("torch", "2.5.1+cpu"))), "cpu", "linux")
    with pytest.raises(InstallError, match="download.pytorch.org"):
        check_build(read_report(report(("torch", "2.5.1"))), "cpu", "linux")


def test_a_requirement_that_needs_another_numpy_fails_to_resolve(tmp_path):
    request = Request(str(QGIS_PYTHON), ["numpy>=2"], "cpu", "linux")
    with pytest.raises(InstallError, match="pip failed"):
        resolve(request, tmp_path / "root", Events(), tmp_path)


# -- install, path hook in a new QGIS process, cancel, remove ----------------------------------

PROBE_PLUGIN = """
import json, sys
from qgis.core import (QgsApplication, QgsProcessingAlgorithm, QgsProcessingOutputString,
                       QgsProcessingProvider)

class Probe(QgsProcessingAlgorithm):
    def name(self): return "probe"
    def displayName(self): return "probe"
    def createInstance(self): return Probe()
    def initAlgorithm(self, config=None):
        self.addOutput(QgsProcessingOutputString("REPORT", "report"))
    def processAlgorithm(self, parameters, context, feedback):
        from mapseg.install.interpreter import find_python
        report = {"python": str(find_python()), "executable": sys.executable}
        try:
            import mapseg_probe
            report.update(value=mapseg_probe.VALUE, file=mapseg_probe.__file__)
        except ImportError as err:
            report["error"] = str(err)
        return {"REPORT": json.dumps(report)}

class Provider(QgsProcessingProvider):
    def id(self): return "probeplugin"
    def name(self): return "probe"
    def loadAlgorithms(self): self.addAlgorithm(Probe())

class Plugin:
    def __init__(self, iface): self.provider = None
    def initProcessing(self):
        self.provider = Provider()
        QgsApplication.processingRegistry().addProvider(self.provider)
    def initGui(self): self.initProcessing()
    def unload(self): QgsApplication.processingRegistry().removeProvider(self.provider)

def classFactory(iface): return Plugin(iface)
"""


def temp_profile(tmp_path) -> Path:
    """A QGIS profile with MapSeg (linked) and a probe plugin enabled."""
    config = tmp_path / "qgis-config"
    default = config / "profiles" / "default"
    probe = default / "python" / "plugins" / "probeplugin"
    probe.mkdir(parents=True)
    (default / "python" / "plugins" / "mapseg").symlink_to(ROOT)
    (probe / "__init__.py").write_text(PROBE_PLUGIN)
    (probe / "metadata.txt").write_text(
        "[general]\nname=probeplugin\nqgisMinimumVersion=3.22\ndescription=probe\nversion=1\n"
        "author=test\nemail=t@t\nhasProcessingProvider=yes\n"
    )
    (default / "QGIS").mkdir()
    (default / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\nmapseg=true\nprobeplugin=true\n")
    return config


def run_probe(config: Path) -> dict:
    """qgis_process with the temp profile and QGIS's own Python paths only (no venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAPSEG_PACKAGES")}
    env.update(
        QGIS_CUSTOM_CONFIG_PATH=str(config),
        QT_QPA_PLATFORM="offscreen",
        XDG_RUNTIME_DIR=f"/tmp/runtime-{os.getuid()}",
    )
    out = subprocess.run(
        [QGIS_PROCESS_BIN, "run", "probeplugin:probe", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(json.loads(out.stdout[out.stdout.index("{") :])["results"]["REPORT"])


def test_install_into_the_profile_then_a_new_qgis_process_imports_it(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    config = temp_profile(tmp_path)
    root = config / "profiles" / "default" / "python" / "mapseg-packages"
    before = run_probe(config)
    assert "error" in before and before["python"] == str(QGIS_PYTHON)
    assert before["executable"] != before["python"]  # qgis_process's sys.executable is no help

    out = run_cli("--target", str(root), *local_args(wheels))
    assert out.returncode == 0, out.stderr + out.stdout
    folder = folder_for(root)
    assert (folder / "mapseg_probe" / "__init__.py").is_file()
    manifest = installed(folder)
    assert manifest["packages"] == ["mapseg_probe==1.0"]
    assert manifest["numpy"] == installed_version("numpy")
    assert sorted(p.name for p in root.iterdir()) == [folder.name]  # no partial left

    after = run_probe(config)
    assert after.get("value") == 42, after
    assert after["file"] == str(folder / "mapseg_probe" / "__init__.py")

    out = run_cli("--target", str(root), "--remove")
    assert out.returncode == 0 and not root.exists(), out.stdout + out.stderr
    assert "error" in run_probe(config)


def test_cancel_stops_pip_and_leaves_no_folder_and_the_previous_install(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    root = tmp_path / "root"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HangingIndex)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([["mapseg_probe", "1.0", 1000]]))
    cancel = tmp_path / "cancel"
    hanging = [
        "--pip-arg=--no-index",
        f"--pip-arg=--find-links=http://127.0.0.1:{server.server_port}/",
    ]
    try:
        for previous in (False, True):
            if previous:  # a finished install must survive a canceled reinstall untouched
                assert run_cli("--target", str(root), *local_args(wheels)).returncode == 0
            cancel.unlink(missing_ok=True)
            env = dict(os.environ, PYTHONPATH=PKG_PATH)
            args = [
                str(QGIS_PYTHON),
                "-m",
                "mapseg.install",
                "--target",
                str(root),
                "--events",
                "--plan",
                str(plan),
                "--packages",
                "mapseg_probe",
                "--cancel-file",
                str(cancel),
                *hanging,
            ]
            proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
            for line in proc.stdout:
                if line.startswith("@mapseg partial"):
                    partial = Path(json.loads(line.split(" ", 2)[2]))
                    assert partial.is_dir()
                    time.sleep(1.0)  # pip is now waiting on the index
                    cancel.write_text("x")
                    break
            start = time.monotonic()
            assert proc.wait(60) == 130
            assert time.monotonic() - start < 30
            assert not partial.exists()
            if previous:
                assert sorted(p.name for p in root.iterdir()) == [folder_for(root).name]
                assert installed(folder_for(root))["packages"] == ["mapseg_probe==1.0"]
            else:
                assert not root.exists()
    finally:
        server.shutdown()


def test_cleanup_keeps_the_partial_folder_of_a_running_installer(tmp_path):
    from mapseg.install import cleanup, new_partial

    target = folder_for(tmp_path)
    mine = new_partial(target)  # this process runs: an install in progress
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".{target.name}.partial-{dead.pid}-0badc0de"
    old = tmp_path / f".{target.name}.old-12345678"
    for path in (stale, old):
        path.mkdir()
        (path / "file").write_text("x")
    cleanup(tmp_path)
    assert mine.is_dir() and not stale.exists() and not old.exists()


def test_activate_puts_the_folder_first_with_its_pth_files_but_not_the_distutils_shim(tmp_path):
    from mapseg.install import activate
    from mapseg.install.folder import deactivate, write_manifest

    folder = folder_for(tmp_path)
    assert not activate(folder)  # nothing installed: nothing added
    (folder / "extra").mkdir(parents=True)
    (folder / "ns.pth").write_text("extra\n")
    (folder / "distutils-precedence.pth").write_text("import sys; sys.mapseg_shim = True\n")
    write_manifest(folder, {"packages": []})
    try:
        assert activate(folder)
        assert sys.path[0] == str(folder) and str(folder / "extra") in sys.path
        assert not hasattr(sys, "mapseg_shim")
    finally:
        deactivate(folder)
        if str(folder / "extra") in sys.path:
            sys.path.remove(str(folder / "extra"))
    assert str(folder) not in sys.path


def test_install_module_never_imports_qgis():
    for path in (ROOT / "install").glob("*.py"):
        text = path.read_text()
        assert "import qgis" not in text and "from qgis" not in text, path
    code = (
        "import sys, mapseg.install.__main__, mapseg.install.run; assert 'qgis' not in sys.modules"
    )
    subprocess.run(
        [str(QGIS_PYTHON), "-c", code], env=dict(os.environ, PYTHONPATH=PKG_PATH), check=True
    )


def test_requirement_set_is_requirements_txt_runtime_part_and_covers_the_algorithms():
    from mapseg.algorithms import ALGORITHMS
    from mapseg.algorithms.base import MapSegAlgorithm
    from mapseg.gui.install_dialog import required_modules

    text = (ROOT / "requirements.txt").read_text()
    runtime = text.split("# Development")[0]
    assert "torch" in REQUIREMENTS and "segment-anything" in REQUIREMENTS
    assert all(r in runtime for r in REQUIREMENTS)
    assert not {"pytest", "ruff", "pytest-qgis"} & set(REQUIREMENTS)
    assert all("#" not in r and " " not in r for r in REQUIREMENTS)
    modules = required_modules()
    assert "torch" in modules and set(modules) == {m for c in ALGORITHMS for m in c.REQUIRES}
    assert set(MapSegAlgorithm.PIP_NAMES.values()) <= set(REQUIREMENTS)
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    assert "Install dependencies" in meta["general"]["about"]

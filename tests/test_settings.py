"""MapSeg's provider settings: registered on Options > Processing > Providers > MapSeg, read by
the algorithms as defaults (explicit parameters win), stored in the QGIS profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SCREENSHOTS, run_alg, write_raster
from scenes import Log

from mapseg import settings
from mapseg.install.folder import version_dirname

QGIS_PROCESS_BIN = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
KEYS = ("DEVICE", "TILE_SIZE", "BATCH_SIZE", "TEMP_FOLDER", "DEPENDENCY_FOLDER")


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@contextmanager
def changed(key: str, value):
    """Change a setting in this process as the options page does, without saving it to the
    shared test profile (other test processes read that file)."""
    from processing.core.ProcessingConfig import ProcessingConfig

    item = ProcessingConfig.settings[settings.PREFIX + key]
    before = item.value
    item.setValue(value)
    try:
        yield
    finally:
        item.value = before


def test_settings_page_lists_mapseg_under_providers(provider, qgis_iface):
    from processing.core.ProcessingConfig import ProcessingConfig
    from processing.gui.ConfigDialog import ConfigDialog

    groups = ProcessingConfig.getSettings()
    mine = {s.name: s for s in groups["MapSeg"]}
    assert set(KEYS) <= set(settings.SETTINGS)  # others add theirs (e.g. a Dask scheduler)
    assert set(mine) == {settings.PREFIX + k for k in settings.SETTINGS}
    assert mine["MAPSEG_DEVICE"].options == ["auto", "cpu", "cuda"]
    dialog = ConfigDialog()
    model = dialog.model
    providers = next(
        model.item(r) for r in range(model.rowCount()) if model.item(r).text() == "Providers"
    )
    group = next(
        providers.child(r)
        for r in range(providers.rowCount())
        if providers.child(r).text() == "MapSeg"
    )
    labels = {group.child(r).text() for r in range(group.rowCount())}
    assert labels == {spec.label for spec in settings.SETTINGS.values()}
    dialog.tree.expand(providers.index())
    dialog.tree.expand(group.index())
    dialog.tree.scrollTo(group.index())
    dialog.resize(900, 600)
    dialog.show()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert dialog.grab().save(str(SCREENSHOTS / "mapseg_settings.png"))
    dialog.close()


def test_setting_values_are_typed_and_stored_in_the_profile(provider):
    with changed("TILE_SIZE", "256"), changed("DEVICE", "cpu"):
        assert settings.setting("TILE_SIZE") == 256 and settings.setting("DEVICE") == "cpu"
    assert settings.setting("BATCH_SIZE") == 0 and settings.setting("DEVICE") == "auto"
    # Before the provider registers them, values come straight from the profile's settings.
    from qgis.core import QgsSettings

    key = "Processing/Configuration/MAPSEG_TEMP_FOLDER"
    settings.unregister()
    try:
        QgsSettings().setValue(key, "/tmp/mapseg-scratch")
        assert settings.setting("TEMP_FOLDER") == "/tmp/mapseg-scratch"
    finally:
        QgsSettings().remove(key)
        settings.register()
    assert settings.setting("TEMP_FOLDER") == ""


def test_dependency_folder_comes_from_the_setting_or_the_environment(
    provider, tmp_path, monkeypatch
):
    from qgis.core import QgsApplication

    monkeypatch.delenv(settings.PACKAGES_ENV, raising=False)
    profile = Path(QgsApplication.qgisSettingsDirPath())
    assert (
        settings.dependency_folder() == profile / "python" / "mapseg-packages" / version_dirname()
    )
    with changed("DEPENDENCY_FOLDER", str(tmp_path)):
        assert settings.dependency_folder() == tmp_path / version_dirname()
        monkeypatch.setenv(settings.PACKAGES_ENV, str(tmp_path / "env"))
        assert settings.dependency_folder() == tmp_path / "env" / version_dirname()


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(0)
    img = np.zeros((3, 40, 40), np.uint8)
    img[:, :, 20:] = 200
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    return write_raster(tmp_path / "scene.tif", img)


def test_default_device_setting_is_what_segment_raster_uses(provider, scene, tmp_path):
    from qgis.core import QgsProcessingException

    params = {"INPUT": scene, "NUM_SEGMENTS": 2, "OUTPUT": str(tmp_path / "a.tif")}
    with changed("DEVICE", "cpu"):
        log = Log()
        run_alg("segmentraster", params, log)
        assert any(" tiles on cpu " in line for line in log.lines), log.lines
    with changed("DEVICE", "cuda"):
        if has_cuda():
            log = Log()
            run_alg("segmentraster", dict(params, OUTPUT=str(tmp_path / "b.tif")), log)
            assert any(" tiles on cuda" in line for line in log.lines), log.lines
        else:
            with pytest.raises(QgsProcessingException, match="DEVICE is cuda"):
                run_alg("segmentraster", dict(params, OUTPUT=str(tmp_path / "b.tif")))
            assert not (tmp_path / "b.tif").exists()
        # An explicit DEVICE wins over the setting.
        log = Log()
        run_alg("segmentraster", dict(params, DEVICE="cpu", OUTPUT=str(tmp_path / "c.tif")), log)
        assert any(" tiles on cpu " in line for line in log.lines), log.lines


def test_default_device_stored_in_the_profile_reaches_qgis_process(tmp_path, scene):
    """The options page saves to the profile; a qgis_process started with that profile uses it."""
    config = tmp_path / "qgis-config"
    default = config / "profiles" / "default"
    (default / "python" / "plugins").mkdir(parents=True)
    (default / "python" / "plugins" / "mapseg").symlink_to(ROOT)
    (default / "QGIS").mkdir()
    cuda = settings.DEVICES.index("cuda")
    (default / "QGIS" / "QGIS3.ini").write_text(
        f"[PythonPlugins]\nmapseg=true\n\n[Processing]\nConfiguration\\MAPSEG_DEVICE={cuda}\n"
    )
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    env = dict(
        os.environ,
        QGIS_CUSTOM_CONFIG_PATH=str(config),
        QT_QPA_PLATFORM="offscreen",
        PYTHONPATH=f"{site}:{ROOT / 'build' / 'pkg'}",
        OMP_NUM_THREADS="1",
        XDG_RUNTIME_DIR=f"/tmp/runtime-{os.getuid()}",
    )
    env.pop(settings.PACKAGES_ENV, None)
    dest = tmp_path / "out.tif"
    args = [
        QGIS_PROCESS_BIN,
        "run",
        "mapseg:segmentraster",
        "--json",
        "--",
        f"INPUT={scene}",
        "NUM_SEGMENTS=2",
        f"OUTPUT={dest}",
    ]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if has_cuda():
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout[out.stdout.index("{") :])
        assert "tiles on cuda" in json.dumps(result)
    else:
        assert out.returncode != 0 and "DEVICE is cuda" in out.stdout + out.stderr
        assert not dest.exists()
    out = subprocess.run(
        args[:-1] + [f"OUTPUT={dest}", "DEVICE=cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert dest.exists()


def test_default_tile_and_batch_settings_reach_segment_raster(provider, scene, tmp_path):
    params = {"INPUT": scene, "NUM_SEGMENTS": 2, "OUTPUT": str(tmp_path / "a.tif")}
    with changed("TILE_SIZE", 48), changed("BATCH_SIZE", 3):
        log = Log()
        run_alg("segmentraster", params, log)
        assert any("(tile 48," in line and "batch 3)" in line for line in log.lines), log.lines
        log = Log()  # explicit parameters win
        run_alg("segmentraster", dict(params, TILE_SIZE=32, OUTPUT=str(tmp_path / "b.tif")), log)
        assert any("(tile 32," in line for line in log.lines), log.lines


def test_temp_folder_setting_holds_the_scratch_files(provider, scene, tmp_path):
    import tempfile

    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    seen = set()
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda _: seen.update(os.listdir(scratch)))
    before = tempfile.gettempdir()
    params = {"INPUT": scene, "NUM_SEGMENTS": 2, "RESOLUTION": "medium"}
    with changed("TEMP_FOLDER", str(scratch)):
        run_alg("segmentraster", dict(params, OUTPUT=str(tmp_path / "a.tif")), feedback)
    assert any(name.startswith("mapseg") for name in seen), seen  # made there during the run
    assert os.listdir(scratch) == []  # and removed
    assert tempfile.gettempdir() == before
    gone = tmp_path / "gone"  # the options page checks the folder; it may vanish later
    gone.mkdir()
    with changed("TEMP_FOLDER", str(gone)):
        gone.rmdir()
        with pytest.raises(QgsProcessingException, match="does not exist or is not writable"):
            run_alg("segmentraster", dict(params, OUTPUT=str(tmp_path / "b.tif")))
    assert not (tmp_path / "b.tif").exists()
    assert tempfile.gettempdir() == before

"""MapSeg's provider settings (Settings > Options > Processing > Providers > MapSeg).

They are Processing ``ProcessingConfig`` settings, the way QGIS's own providers keep theirs
(stored in the QGIS profile under ``Processing/Configuration/MAPSEG_*``). Algorithms read them
with ``setting(key)``; an explicit algorithm parameter always wins. ``setting`` also works
before the provider is registered and where Processing's Python plugin is absent (it then
reads the stored value directly), so the plugin's path hook can use it at load time.

To add a setting (e.g. a Dask scheduler address), add an entry to ``SETTINGS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication

from .core.model.device import DEVICES as CORE_DEVICES

GROUP = "MapSeg"
PREFIX = "MAPSEG_"
DEVICES = tuple(CORE_DEVICES)  # the choices of every DEVICE parameter
# Overrides the dependency folder (servers, tests): `python -m mapseg.install --target DIR`.
PACKAGES_ENV = "MAPSEG_PACKAGES"


@dataclass(frozen=True)
class Spec:
    label: str
    default: object
    kind: str  # "selection" | "folder" | "int" | "string"
    options: tuple = ()


SETTINGS = {
    "DEVICE": Spec(
        "Default device (algorithms whose DEVICE is not given)", "auto", "selection", DEVICES
    ),  # fmt: skip
    "TILE_SIZE": Spec("Default inference tile size in pixels (0: the model's)", 0, "int"),
    "BATCH_SIZE": Spec("Default inference tiles per batch (0: automatic)", 0, "int"),
    "TEMP_FOLDER": Spec("Folder for temporary files (empty: the system's)", "", "folder"),
    "DEPENDENCY_FOLDER": Spec(
        "Dependency folder (empty: <profile>/python/mapseg-packages; used from the next start)",
        "",
        "folder",
    ),
}


def _config():
    """Processing's ProcessingConfig and Setting, or None outside QGIS's Processing plugin."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:
        return None
    return ProcessingConfig, Setting


def _convert(spec: Spec, value):
    if value is None or value == "":
        return spec.default
    if spec.kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            return spec.default
    return str(value)


def setting(key: str):
    """The value of a MapSeg setting (``DEVICE``, ``TILE_SIZE``, ``BATCH_SIZE``, ``TEMP_FOLDER``,
    ``DEPENDENCY_FOLDER``): a device name, an int, or a folder path ('' for the default)."""
    spec = SETTINGS[key]
    config = _config()
    if config is not None and PREFIX + key in config[0].settings:
        return _convert(spec, config[0].getSetting(PREFIX + key, readable=True))
    value = QgsSettings().value(f"Processing/Configuration/{PREFIX}{key}", None)
    if spec.kind == "selection" and value not in (None, ""):
        try:  # ProcessingConfig stores a selection as its index
            value = spec.options[int(value)]
        except (TypeError, ValueError, IndexError):
            value = spec.default
    return _convert(spec, value)


def set_setting(key: str, value) -> None:
    """Store a setting the way the options page does (tests, scripts)."""
    spec, config = SETTINGS[key], _config()
    if config is not None and PREFIX + key in config[0].settings:
        stored = spec.options.index(value) if spec.kind == "selection" else value
        config[0].setSettingValue(PREFIX + key, stored)
        return
    stored = spec.options.index(value) if spec.kind == "selection" else value
    QgsSettings().setValue(f"Processing/Configuration/{PREFIX}{key}", stored)


def register(icon=None) -> bool:
    """Add MapSeg's settings to Processing's options page. False without Processing."""
    config = _config()
    if config is None:
        return False
    ProcessingConfig, Setting = config
    kinds = {"selection": Setting.SELECTION, "folder": Setting.FOLDER, "int": Setting.INT}
    if icon is not None:
        ProcessingConfig.settingIcons[GROUP] = icon
    for key, spec in SETTINGS.items():
        label = QCoreApplication.translate("MapSeg", spec.label)
        item = Setting(
            GROUP,
            PREFIX + key,
            label,
            spec.default,
            valuetype=kinds.get(spec.kind, Setting.STRING),
            options=list(spec.options) or None,
        )
        item.read()
        ProcessingConfig.addSetting(item)
    return True


def unregister() -> None:
    config = _config()
    if config is None:
        return
    for key in SETTINGS:
        if PREFIX + key in config[0].settings:
            config[0].removeSetting(PREFIX + key)


def dependency_root() -> Path:
    """Where the installer puts packages: $MAPSEG_PACKAGES, the setting, or the profile's."""
    from .install.folder import default_root

    chosen = os.environ.get(PACKAGES_ENV) or setting("DEPENDENCY_FOLDER")
    return Path(chosen) if chosen else default_root(QgsApplication.qgisSettingsDirPath())


def dependency_folder() -> Path:
    """This Python version's package folder under ``dependency_root()``."""
    from .install.folder import folder_for

    return folder_for(dependency_root())

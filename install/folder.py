"""MapSeg's package folder: one per Python version, built beside it, switched in when complete.

``<root>/python3.11`` holds what the installer put there (root: the provider setting, or
``<QGIS profile>/python/mapseg-packages``). An install writes ``.python3.11.partial-<id>``
and only a complete, checked install is renamed to ``python3.11``: a cancelled or failed
install leaves nothing behind but that partial folder, which is deleted at once (or, when a
file in it is still held open on Windows, by ``cleanup`` the next time the plugin loads).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import site
import sys
import time
import uuid
from pathlib import Path

from .pip import InstallError, normalize

MANIFEST = "mapseg-install.json"
DEFAULT_DIRNAME = "mapseg-packages"


def version_dirname(version: tuple = sys.version_info[:2]) -> str:
    return f"python{version[0]}.{version[1]}"


def default_root(profile_dir: str | os.PathLike) -> Path:
    """The default root inside a QGIS profile folder (``QgsApplication.qgisSettingsDirPath()``)."""
    return Path(profile_dir) / "python" / DEFAULT_DIRNAME


def folder_for(root: str | os.PathLike, version: tuple = sys.version_info[:2]) -> Path:
    return Path(root) / version_dirname(version)


def new_partial(target: Path) -> Path:
    """A new, empty folder beside ``target``, named after this process (see ``cleanup``)."""
    partial = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    return partial


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (an installer still filling its partial folder)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFO
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmtree(path: Path) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def discard(partial: Path) -> None:
    """Delete an unfinished install folder (and the root, if that leaves it empty)."""
    _rmtree(partial)
    _remove_empty(partial.parent)


def _remove_empty(root: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        root.rmdir()


def check_folder(partial: Path, packages: list) -> None:
    """Refuse a folder holding QGIS's own numpy/GDAL, or missing a package pip should have
    written (each ``Package`` leaves a ``<name>-<version>.dist-info``)."""
    owned = [n for n in ("numpy", "osgeo") if (partial / n).exists()]
    if owned:
        raise InstallError(f"The install wrote {', '.join(owned)}, which QGIS provides; removed.")
    found = {
        normalize(p.name[: -len(".dist-info")].rsplit("-", 1)[0])
        for p in partial.glob("*.dist-info")
    }
    missing = [p.pin for p in packages if normalize(p.name) not in found]
    if missing:
        raise InstallError(f"pip finished but {', '.join(missing)} is not in {partial}.")


def write_manifest(folder: Path, info: dict) -> None:
    data = dict(info, installed=time.strftime("%Y-%m-%dT%H:%M:%S"))
    (folder / MANIFEST).write_text(json.dumps(data, indent=1), encoding="utf-8")


def installed(target: Path) -> dict | None:
    """The manifest of a complete install in ``target``, or None when there is none."""
    path = Path(target) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def commit(partial: Path, target: Path) -> None:
    """Switch the finished ``partial`` in as ``target``; the previous install is removed."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            target.rename(old)
        except OSError:
            discard(partial)
            raise InstallError(
                f"{target} is in use (its packages are loaded). Restart QGIS and install again "
                "before running a MapSeg algorithm."
            ) from None
    partial.rename(target)
    if old is not None:
        _rmtree(old)  # left for cleanup() when Windows still holds a file open


def remove(target: Path) -> bool:
    """Delete an install. False when files are held open (Windows): it is moved aside then and
    deleted when the plugin next loads."""
    target = Path(target)
    if not target.exists():
        return True
    if _rmtree(target):
        _remove_empty(target.parent)
        return True
    try:
        target.rename(target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    except OSError:
        (target / MANIFEST).unlink(missing_ok=True)  # no manifest: not activated again
    return False


def cleanup(root: Path) -> None:
    """Delete what an earlier cancelled, failed or replaced install left in ``root``; a partial
    folder whose installer process still runs (another QGIS, a qgis_process) is kept."""
    if not Path(root).is_dir():
        return
    for path in Path(root).iterdir():
        if not path.name.startswith("."):
            continue
        if ".partial-" in path.name:
            owner = path.name.split(".partial-", 1)[1].split("-")[0]
            if not (owner.isdigit() and pid_alive(int(owner))):
                _rmtree(path)
        elif ".old-" in path.name:
            _rmtree(path)


def activate(target: Path) -> bool:
    """Put a complete install first on ``sys.path`` (its ``.pth`` files too). True when added."""
    target = Path(target)
    if installed(target) is None:
        return False
    entry = str(target)
    if entry not in sys.path:
        sys.path.insert(0, entry)
        for pth in sorted(target.glob("*.pth")):
            # Namespace-package .pth files are needed; setuptools' distutils shim would change
            # distutils for every plugin in QGIS's process, so it is left out.
            if pth.name != "distutils-precedence.pth":
                site.addpackage(entry, pth.name, {entry})
    importlib.invalidate_caches()
    return True


def deactivate(target: Path) -> None:
    entry = str(Path(target))
    while entry in sys.path:
        sys.path.remove(entry)
    importlib.invalidate_caches()

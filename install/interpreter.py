"""Find the Python interpreter QGIS itself runs, and check it before using it.

Inside QGIS ``sys.executable`` is often not a Python: on Windows (OSGeo4W or the standalone
installer) it is ``qgis-bin.exe``/``qgis.exe`` and Python lives in ``apps/Python3XY``
(``sys.prefix``); in the macOS app bundle it is ``QGIS.app/Contents/MacOS/QGIS`` with Python
under ``Contents/MacOS/bin`` or ``Contents/Frameworks``; on Linux it may be ``/usr/bin/qgis``
with Python in ``/usr/bin``. ``candidates`` lists where each layout keeps it (pure, testable
on any machine); ``find_python`` returns the first candidate that runs as the same Python
version and has pip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

from .pip import InstallError

_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?(\.exe)?", re.IGNORECASE)

# What the installer needs to know about an interpreter, printed as JSON by the interpreter.
PROBE = (
    "import json, sys, platform\n"
    "from importlib import metadata as m\n"
    "def v(name):\n"
    "    try:\n"
    "        return m.version(name)\n"
    "    except Exception:\n"
    "        return None\n"
    "print(json.dumps({'version': list(sys.version_info[:2]), 'platform': sys.platform,\n"
    "    'machine': platform.machine(), 'numpy': v('numpy'), 'gdal': v('GDAL'),\n"
    "    'pip': v('pip'), 'executable': sys.executable}))\n"
)


def candidates(
    executable: str, prefix: str, platform: str, version: tuple = sys.version_info[:2]
) -> list:
    """Interpreter paths to try, best first, for a QGIS with these ``sys`` values."""
    pure = PureWindowsPath if platform == "win32" else PurePosixPath
    exe, pre = pure(executable), pure(prefix)
    major, minor = version[0], version[1]
    names = [f"python{major}.{minor}", f"python{major}", "python"]
    found = []
    if platform == "win32":
        apps = exe.parent.parent / "apps" / f"Python{major}{minor}"
        found += [pre / "python.exe", apps / "python.exe", exe.parent / "python.exe"]
        found += [exe.parent / "python3.exe"]
    elif platform == "darwin":
        contents = exe.parent.parent  # QGIS.app/Contents
        framework = contents / "Frameworks" / "Python.framework" / "Versions" / f"{major}.{minor}"
        for folder in (exe.parent / "bin", exe.parent, pre / "bin", framework / "bin"):
            found += [folder / n for n in names]
    else:
        for folder in (pre / "bin", exe.parent, pure("/usr/bin"), pure("/usr/local/bin")):
            found += [folder / n for n in names]
    # A Python-named sys.executable last: embedded in QGIS on Linux it is whatever "python3"
    # PATH finds first (a pyenv shim, say), not necessarily the Python QGIS runs.
    if executable and _PYTHON_NAME.fullmatch(exe.name):
        found.append(exe)
    unique = []
    for path in found:
        if str(path) not in {str(p) for p in unique}:
            unique.append(path)
    return unique


def probe(python: str | os.PathLike, env: dict | None = None) -> dict:
    """Run ``python`` and report its version, platform, numpy, GDAL and pip versions."""
    try:
        out = subprocess.run(
            [str(python), "-c", PROBE], capture_output=True, text=True, timeout=60, env=env
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise InstallError(f"Could not run {python}: {err}") from None
    if out.returncode != 0:
        raise InstallError(f"{python} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _mismatch(info: dict, version: tuple, expect: dict) -> str | None:
    """Why a probed interpreter is not QGIS's, or None when it is."""
    if tuple(info["version"]) != version:
        return f"Python {info['version'][0]}.{info['version'][1]}"
    for key, want in expect.items():
        if want and info.get(key) != want:
            return f"{key} {info.get(key) or 'missing'}, QGIS has {want}"
    return None if info["pip"] else "no pip"


def find_python(
    executable: str | None = None,
    prefix: str | None = None,
    platform: str | None = None,
    version: tuple | None = None,
    expect: dict | None = None,
) -> Path:
    """QGIS's own Python: the first candidate that exists, runs as this Python version, sees
    the numpy and GDAL this process (QGIS) has, and has pip. Raises InstallError saying what
    was tried otherwise."""
    version = tuple(version or sys.version_info[:2])
    if expect is None:
        expect = {"numpy": installed_version("numpy"), "gdal": installed_version("GDAL")}
    tried = []
    for path in candidates(
        executable if executable is not None else sys.executable,
        prefix if prefix is not None else sys.prefix,
        platform or sys.platform,
        version,
    ):
        if not os.path.isfile(str(path)):
            continue
        try:
            info = probe(path)
        except InstallError as err:
            tried.append(f"{path}: {err}")
            continue
        reason = _mismatch(info, version, expect)
        if reason is None:
            return Path(str(path))
        tried.append(f"{path}: {reason}")
    detail = "; ".join(tried) or "no candidate exists"
    raise InstallError(
        f"Could not find QGIS's Python {version[0]}.{version[1]} with pip ({detail}). On "
        "Debian/Ubuntu install pip with `sudo apt install python3-pip`; elsewhere reinstall "
        "QGIS with its Python, or install manually (README, 'Install into QGIS desktop')."
    )

"""A hand-made wheel and a package index that never answers: the installer tests' fixtures
(no network)."""

from __future__ import annotations

import http.server
import time
import zipfile
from pathlib import Path


def make_wheel(folder: Path, name: str = "mapseg_probe", version: str = "1.0") -> Path:
    """A pure-Python wheel written by hand: ``import mapseg_probe`` gives VALUE = 42."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for arcname, text in files.items():
            whl.writestr(arcname, text)
    return path


class HangingIndex(http.server.BaseHTTPRequestHandler):
    """A package index that never answers: pip waits on it until canceled."""

    def do_GET(self):
        time.sleep(60)

    def log_message(self, *args):
        pass

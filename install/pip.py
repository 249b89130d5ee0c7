"""pip commands, constraints and the resolved package list.

The install is two pip runs with QGIS's interpreter:

1. ``pip install --dry-run --report`` resolves the requirements against QGIS's own environment
   with numpy and GDAL constrained to the versions QGIS has, so what QGIS already provides
   (numpy, GDAL's bindings, anything else that satisfies a requirement) is kept and the report
   lists only what is missing. Its URLs give the download size before anything is fetched.
2. ``pip install --no-deps --target <new folder>`` installs exactly that list.

A report that would install numpy or GDAL is refused: the folder goes first on ``sys.path``,
and a second numpy there would be loaded under QGIS's GDAL, which was built against its own.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .cuda import torch_index

REQUIREMENTS_TXT = Path(__file__).resolve().parents[1] / "requirements.txt"


def runtime_requirements(path: Path = REQUIREMENTS_TXT) -> tuple:
    """The runtime part of the plugin's requirements.txt (it ships in the plugin zip): the
    lines before ``# Development``, without comments."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# Development"):
            break
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            found.append(requirement)
    return tuple(found)


# What the installer installs: one list, kept in requirements.txt.
REQUIREMENTS = runtime_requirements()
# Distributions QGIS owns: pinned to QGIS's versions and never written into the folder.
PROTECTED = ("numpy", "gdal")


class InstallError(Exception):
    """An install step failed; the message says what and what to do."""


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def constraints(info: dict) -> str:
    """A pip constraints file keeping QGIS's numpy and GDAL bindings at their versions."""
    lines = [f"numpy=={info['numpy']}"] if info.get("numpy") else []
    if info.get("gdal"):
        lines.append(f"GDAL=={info['gdal']}")
    return "".join(line + "\n" for line in lines)


@dataclass
class Package:
    name: str
    version: str
    url: str
    size: int | None = None

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class Request:
    """What to install, with which interpreter, from where."""

    python: str
    requirements: list = field(default_factory=lambda: list(REQUIREMENTS))
    build: str = "cpu"
    platform: str = "linux"
    pip_args: list = field(default_factory=list)  # e.g. --find-links for a local wheel

    def index_args(self) -> list:
        index = torch_index(self.build, self.platform) if "torch" in self.requirements else None
        return ["--extra-index-url", index] if index else []

    def resolve_command(self, report: Path, constraint_file: Path) -> list:
        return [
            self.python, "-m", "pip", "install", "--dry-run",
            "--report", str(report), "--no-input", "--disable-pip-version-check",
            "-c", str(constraint_file), *self.index_args(), *self.pip_args, *self.requirements,
        ]  # fmt: skip

    def install_command(self, target: Path, pins_file: Path, constraint_file: Path) -> list:
        return [
            self.python, "-m", "pip", "install", "--no-deps", "--target", str(target),
            "--no-input", "--disable-pip-version-check", "--no-warn-script-location",
            "--progress-bar", "off", "-c", str(constraint_file), *self.index_args(),
            *self.pip_args, "-r", str(pins_file),
        ]  # fmt: skip


def read_report(path: Path) -> list:
    """The packages a ``pip install --report`` would install; refuses numpy and GDAL."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    packages = [
        Package(item["metadata"]["name"], item["metadata"]["version"], item["download_info"]["url"])
        for item in report.get("install", [])
    ]
    clash = [p.pin for p in packages if normalize(p.name) in PROTECTED]
    if clash:
        raise InstallError(
            f"pip would install {', '.join(clash)}, replacing QGIS's own. A requirement needs "
            "another version than QGIS ships; update QGIS or install an older MapSeg."
        )
    return packages


def check_build(packages: list, build: str, platform: str) -> None:
    """On Linux the CPU and CUDA builds carry a local version (``2.5.1+cpu``): make sure the
    resolution picked PyTorch's index and not the default index's CUDA build."""
    torch = next((p for p in packages if normalize(p.name) == "torch"), None)
    if torch is None or torch_index(build, platform) is None:
        return
    if not torch.version.endswith("+" + build):
        raise InstallError(
            f"The package index offered torch {torch.version}, not the {build} build from "
            "download.pytorch.org: check that download.pytorch.org can be reached."
        )


def url_size(url: str, timeout: float = 20.0) -> int | None:
    """Bytes behind a download URL (a local file's size, or HTTP Content-Length)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        return os.path.getsize(path) if os.path.exists(path) else None
    try:
        head = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(head, timeout=timeout) as r:
            length = r.headers.get("Content-Length")
            return int(length) if length else None
    except (OSError, ValueError):
        return None


def add_sizes(packages: list) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        for package, size in zip(packages, pool.map(lambda p: url_size(p.url), packages)):
            package.size = size


def human_size(size: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000.0
    return str(size)  # pragma: no cover


def summary(packages: list) -> str:
    known = [p.size for p in packages if p.size is not None]
    total = human_size(sum(known))
    unknown = len(packages) - len(known)
    more = f" (+{unknown} of unknown size)" if unknown else ""
    return f"{len(packages)} package(s), {total} to download{more}"

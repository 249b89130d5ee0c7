"""Which PyTorch build to install: CPU, or the CUDA build the NVIDIA driver can run.

PyTorch publishes one wheel index per CUDA version (``https://download.pytorch.org/whl/cu126``);
a CUDA build runs only on a driver at least as new as the one its CUDA toolkit shipped with
(NVIDIA's "CUDA Toolkit and Corresponding Driver Versions" table), so the driver version that
``nvidia-smi`` reports decides which builds are offered, newest first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

TORCH_INDEX = "https://download.pytorch.org/whl/{build}"

# (build, CUDA version, minimum Linux driver, minimum Windows driver), newest first.
CUDA_BUILDS = (
    ("cu130", "13.0", "580.65.06", "580.88"),
    ("cu129", "12.9", "575.51.03", "576.02"),
    ("cu128", "12.8", "570.26", "570.65"),
    ("cu126", "12.6", "560.28.03", "560.76"),
    ("cu124", "12.4", "550.54.14", "551.61"),
    ("cu121", "12.1", "530.30.02", "531.14"),
    ("cu118", "11.8", "520.61.05", "520.06"),
)


def _version(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def driver_version(nvidia_smi: str | None = None) -> str | None:
    """The NVIDIA driver version ``nvidia-smi`` reports, or None without a driver or GPU."""
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_driver_version(out.stdout) if out.returncode == 0 else None


def parse_driver_version(text: str) -> str | None:
    """First driver version in ``nvidia-smi --query-gpu=driver_version`` output (one per GPU)."""
    match = re.search(r"^\s*(\d+\.\d+(?:\.\d+)?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def cuda_builds(driver: str | None, platform: str = sys.platform) -> list:
    """The CUDA builds (``cu126``...) this driver runs, newest first; none without a driver.

    macOS has no CUDA builds at all (PyTorch uses Metal there)."""
    if not driver or platform == "darwin":
        return []
    column = 3 if platform == "win32" else 2
    return [b[0] for b in CUDA_BUILDS if _version(driver) >= _version(b[column])]


def cuda_version(build: str) -> str:
    return next(b[1] for b in CUDA_BUILDS if b[0] == build)


def torch_index(build: str, platform: str = sys.platform) -> str | None:
    """The extra package index for a build; None where the default index already serves it.

    PyPI's torch is the CPU build on Windows and macOS, but a CUDA build (with gigabytes of
    NVIDIA libraries) on Linux, so only Linux needs PyTorch's own CPU index. ``pypi`` means
    whatever the configured package index serves."""
    if build == "pypi" or (build == "cpu" and platform in ("win32", "darwin")):
        return None
    if build != "cpu" and build not in {b[0] for b in CUDA_BUILDS}:
        raise ValueError(f"unknown PyTorch build {build!r}")
    return TORCH_INDEX.format(build=build)


def describe(build: str) -> str:
    if build == "cpu":
        return "CPU"
    if build == "pypi":
        return "as the package index serves it"
    return f"CUDA {cuda_version(build)}"

"""Memory and disk budget of Topographic Sinks, checked before any work.

The priority-flood fill is a whole-raster operation: the DEM, its fill and the depth are held in
memory at once. Measured peak (``bench/bench_sinks.py --memory``): 78 to 92 bytes per DEM cell
with nodata holes inside the DEM (Whitebox's own arrays and queue, the padded float64 DEM, the
hole-draining reconstruction), so the estimate is 100 bytes per cell. Whitebox also reads and
writes uncompressed float64 GeoTIFFs (it silently misreads predictor-compressed ones): 16 bytes
per cell of temporary disk space, taken next to the destination, never in the system temp
folder (often a small RAM-backed ``/tmp``).
"""

from __future__ import annotations

import os
import shutil

from ..errors import MapSegError

BYTES_PER_CELL = 100
TEMP_BYTES_PER_CELL = 16
LIMIT_ENV = "MAPSEG_MEMORY_LIMIT_GB"
DEFAULT_FRACTION = 0.5  # of physical memory: QGIS, its layers and the OS keep the rest
GB = 1024**3


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    try:  # Windows
        import ctypes

        class Status(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong)] + [
                (n, ctypes.c_ulonglong)
                for n in ("total", "avail", "page_total", "page_avail", "virt", "virt_avail", "x")
            ]

        status = Status()
        status.length = ctypes.sizeof(Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.total)
    except (AttributeError, OSError):
        pass
    return None


def memory_limit(limit_gb: float | None = None) -> tuple[float, str]:
    """(limit in bytes, where it comes from): the parameter, else the environment variable,
    else half the physical memory (no limit where that is unknown)."""
    if limit_gb:
        return limit_gb * GB, "the MEMORY_LIMIT parameter"
    env = os.environ.get(LIMIT_ENV, "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            raise MapSegError(
                f"The environment variable {LIMIT_ENV}='{env}' is not a number of gigabytes; "
                "set it to e.g. 8, or unset it."
            ) from None
        if value > 0:
            return value * GB, f"the environment variable {LIMIT_ENV}"
    total = physical_memory()
    if total is None:
        return float("inf"), "no limit: the physical memory is unknown"
    return total * DEFAULT_FRACTION, "half of this machine's physical memory"


def check_budget(width: int, height: int, folder: str, limit_gb: float | None = None) -> int:
    """Refuse a DEM whose fill would not fit in memory or in the temporary disk space next to
    the outputs; returns the estimated bytes of memory."""
    cells = (width + 2) * (height + 2)
    need = cells * BYTES_PER_CELL
    limit, source = memory_limit(limit_gb)
    if need > limit:
        raise MapSegError(
            f"Topographic Sinks holds the whole DEM in memory: this {width} x {height} DEM "
            f"needs about {need / GB:.1f} GB, above the limit of {limit / GB:.1f} GB "
            f"({source}). If this machine has the memory, raise the limit with the advanced "
            f"parameter MEMORY_LIMIT (GB) or the environment variable {LIMIT_ENV}; otherwise "
            "clip the DEM to the area you need or resample it to coarser cells first."
        )
    disk = cells * TEMP_BYTES_PER_CELL
    free = shutil.disk_usage(folder).free
    if disk > free:
        raise MapSegError(
            f"Topographic Sinks needs about {disk / GB:.1f} GB of temporary space next to the "
            f"output, in '{folder}', which has {free / GB:.1f} GB free. Free some space or "
            "write the outputs to another disk."
        )
    return need

"""Installing MapSeg's Python dependencies into a MapSeg-owned folder, without QGIS.

Everything here is plain Python (no ``qgis`` import) so that it runs in three places: inside
QGIS behind the installer dialog, in QGIS's own interpreter as ``python -m mapseg.install``
(the dialog runs exactly that), and on headless ``qgis_process`` servers.

- ``interpreter``: find QGIS's real Python (``sys.executable`` is qgis.exe on Windows).
- ``cuda``: which PyTorch build the NVIDIA driver can run.
- ``pip``: the requirement set, the constraints (QGIS's numpy and GDAL stay), pip's commands.
- ``folder``: the per-Python-version folder, built beside and switched in when complete.
"""

from .folder import (
    activate,
    cleanup,
    commit,
    discard,
    folder_for,
    installed,
    new_partial,
    remove,
)
from .pip import REQUIREMENTS, InstallError

__all__ = [
    "REQUIREMENTS",
    "InstallError",
    "activate",
    "cleanup",
    "commit",
    "discard",
    "folder_for",
    "installed",
    "new_partial",
    "remove",
]

"""The folder for MapSeg's temporary files (Options > Processing > Providers > MapSeg).

Engine code makes its scratch files with ``tempfile``; ``scratch_folder`` points ``tempfile``
at the user's chosen folder (a large disk instead of a small RAM-backed ``/tmp``) for the span of
one run and restores the previous folder afterwards.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

from ..errors import MapSegError


@contextmanager
def scratch_folder(folder: str | None) -> Iterator[str]:
    """Temporary files go to ``folder`` inside the block (the system's when empty)."""
    if not folder:
        yield tempfile.gettempdir()
        return
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise MapSegError(
            f"The folder for temporary files '{folder}' does not exist or is not writable. "
            "Choose another one in Options > Processing > Providers > MapSeg, or clear it to "
            "use the system's."
        )
    before = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = before

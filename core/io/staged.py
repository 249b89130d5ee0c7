"""What every output writer shares: a partial file beside the destination, an optional style,
and the steps ``core.io.outputs`` publishes it by (finish -> moves / layer copies -> cleanup)."""

from __future__ import annotations

import os
import tempfile
from typing import List, Tuple

Move = Tuple["str | None", str]  # (new file, or None to remove the destination; destination)


def partial_path(dest: str, suffix: str) -> str:
    """A unique hidden name beside ``dest`` that no file holds yet (same filesystem, so the
    final rename is atomic)."""
    folder, name = os.path.split(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial" + suffix, dir=folder or ".")
    os.close(fd)
    os.unlink(tmp)  # GDAL/OGR create the file; mkstemp only reserved a unique name
    return tmp


class StagedOutput:
    """Base of ``OutputRaster`` and ``VectorWriter``. Subclasses set ``dest`` and implement
    ``finish`` (close the partial file), ``moves`` and ``discard``."""

    dest: str = ""
    style: str | None = None  # QML published as the output's default style
    _style_tmp: str | None = None
    _done: bool = False

    @property
    def uri(self) -> str:
        """What QGIS opens once published."""
        return self.dest

    def layer_copies(self) -> list:
        """(GeoPackage, layer, scratch GeoPackage, style) copied into existing files."""
        return []

    def cleanup(self) -> None:
        """After publishing: nothing of this output is left to discard."""
        self._done = True

    def _write_style(self) -> None:
        """The style as a partial ``.qml`` beside the destination, moved with the data."""
        if self.style and self._style_tmp is None:
            self._style_tmp = partial_path(self.dest, ".qml")
            with open(self._style_tmp, "w", encoding="utf-8") as f:
                f.write(self.style)

    def _style_moves(self) -> List[Move]:
        if not self._style_tmp:
            return []
        return [(self._style_tmp, os.path.splitext(self.dest)[0] + ".qml")]

    def commit(self) -> str:
        """Finish and publish this output alone; several outputs that must land together go
        through ``core.io.outputs.OutputSet``."""
        from .outputs import commit_alone

        commit_alone(self)
        return self.dest

    def discard(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.discard()

"""Raster paths every Dask worker can open: no file of the client's temporary folder.

Segment Raster reads band selections and coarser pixels through VRT files written into a
temporary folder of the process that plans the run. Workers elsewhere cannot see that folder, so
the VRT is handed over as its XML text (GDAL opens a string starting with ``<VRTDataset`` as a
dataset), with VRTs it references in that folder inlined the same way and relative source paths
made absolute.
"""

from __future__ import annotations

import os
import re
from xml.sax.saxutils import escape, unescape

_SOURCE = re.compile(r"<(SourceDataset|SourceFilename)([^>]*)>([^<]*)</\1>")
_RELATIVE = re.compile(r'\s*relativeToVRT="[01]"')


def reachable_path(path: str) -> str:
    """A local file as an absolute path (workers do not share the client's working folder);
    anything else (``/vsis3/...``, a URL, a connection string) unchanged."""
    return os.path.abspath(path) if os.path.exists(path) else path


def portable_vrt(path: str, folder: str) -> str:
    """The XML of the VRT ``path`` with VRTs under ``folder`` inlined, every path absolute."""
    folder = os.path.abspath(folder)
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        text = f.read()

    def absolute(match: re.Match) -> str:
        tag, attrs, name = match.groups()
        name = unescape(name)
        if 'relativeToVRT="1"' in attrs:
            name = os.path.normpath(os.path.join(base, name))
        inside = os.path.abspath(name).startswith(folder + os.sep)
        if inside and name.lower().endswith(".vrt"):
            name = portable_vrt(name, folder)
        attrs = _RELATIVE.sub("", attrs)
        return f'<{tag} relativeToVRT="0"{attrs}>{escape(name)}</{tag}>'

    return _SOURCE.sub(absolute, text)


def portable_path(path: str, folder: str) -> str:
    """``path``, or the XML of a VRT the run wrote into its temporary ``folder``."""
    inside = os.path.abspath(path).startswith(os.path.abspath(folder) + os.sep)
    return portable_vrt(path, folder) if inside else path

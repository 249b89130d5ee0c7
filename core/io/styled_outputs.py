"""Default styles for outputs that are already being written, and publishing them together.

The engines that write class rasters, probability rasters and mask polygons (Segment Raster,
Pseudo-label From Points, Segment With SAM, SAM Automatic Masks) open their writers
(``OutputRaster``, ``VectorWriter``) in their own loops. These helpers give each writer its
default style (``core.io.styles``) once its data is written, and publish the run's writers as
one all-or-nothing ``OutputSet``: the data, their ``.qml`` files and GeoPackage styles land
together, or nothing changes.
"""

from __future__ import annotations

from typing import Iterable, List, Mapping

from ..progress import Reporter
from .outputs import OutputSet
from .raster import OutputRaster
from .styles import class_raster_style, id_style, ramp_style


def class_list(values: Iterable[int], colors: Mapping | None, names: Mapping | None) -> list:
    """``[{"value", "name", "color"}]`` for ``values`` from a colour table and category names
    (value -> colour, value -> name); a value without a name is named after itself."""
    colors, names = colors or {}, names or {}
    return [
        {"value": int(v), "name": names.get(int(v)) or str(v), "color": colors.get(int(v))}
        for v in values
    ]


def style_classes(out: OutputRaster, values, colors=None, names=None) -> None:
    """A paletted legend listing exactly ``values`` (nodata and unused table entries left out)."""
    OutputSet.style(out, class_raster_style(class_list(values, colors, names)))


def written_range(out: OutputRaster, band: int = 1) -> tuple[float, float] | None:
    """(min, max) of the data written so far (nodata left out); None when all is nodata."""
    out.ds.FlushCache()
    try:
        lo, hi = out.band(band).ComputeRasterMinMax(False)
    except RuntimeError:  # GDAL raises when every pixel is nodata
        return None
    return float(lo), float(hi)


def style_range(out: OutputRaster, ramp: str = "viridis") -> None:
    """A colour ramp over the range the raster really holds (e.g. 0.5..0.97 of a confidence)."""
    span = written_range(out) or (0.0, 1.0)
    OutputSet.style(out, ramp_style(span[0], span[1], ramp))


def style_ids(out: OutputRaster, label: str) -> None:
    """Twelve colours over the UInt32 range, for ids spread over it (neighbours differ)."""
    OutputSet.style(out, id_style(2**32 - 1, label))


def publish_classes(
    out: OutputRaster, values, colors=None, names=None, confidence=None, extra=()
) -> List[str]:
    """Style a class raster (exactly ``values``) and its optional ``confidence`` raster (a ramp
    over its range), then publish them with the ``extra`` writers, all or none."""
    style_classes(out, values, colors, names)
    if confidence is not None:
        style_range(confidence)
    return commit_together([out, confidence, *extra])


def commit_together(items: List, reporter: Reporter | None = None) -> List[str]:
    """Publish writers opened outside an ``OutputSet`` (None entries skipped) all or none."""
    outputs = OutputSet()
    for item in items:
        outputs.add(item)  # None is skipped; two writers to one destination are refused
    return outputs.commit(reporter)

"""Default styles of SAM's outputs, published with the data (``core.io.styled_outputs``).

Mask polygons are drawn as outlines, so the image stays visible under them, labelled by the
prompts' class when there is a class field. Segment With SAM's mask raster (each pixel holds the
id of the prompt whose mask covers it) gets a legend of exactly the prompts written, named after
their class when there is one.
"""

from __future__ import annotations

from typing import Mapping

from ..infer.segments import segment_palette
from ..io.outputs import OutputSet
from ..io.styled_outputs import commit_together, style_classes
from ..io.styles import outline_style


def publish_masks(polygons, label_field: str | None, raster=None, labels: Mapping | None = None):
    """Style the mask polygons (outlines, labelled by ``label_field``) and the optional mask
    ``raster`` (``labels``: prompt id -> class, or None without a class field), then publish
    them together."""
    OutputSet.style(polygons, outline_style(label_field))
    if raster is not None:
        ids = sorted(labels or {})
        colors = dict(zip(ids, segment_palette(len(ids))[0].values()))
        names = {i: f"Prompt {i}" if labels[i] is None else f"Prompt {i}: {labels[i]}" for i in ids}
        style_classes(raster, ids, colors, names)
    return commit_together([polygons, raster])

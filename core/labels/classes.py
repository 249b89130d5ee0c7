"""Training labels: class tables, label rasters aligned to the image grid, rasterised polygons.

Every label source ends up as a single-band GDAL dataset on exactly the grid of its image
(same size, same geotransform), whose ``unlabelled`` values (its nodata and the ignore value)
mean "no label here". Label rasters on another grid are resampled with nearest neighbour into
an in-memory warped VRT (never interpolating class values); polygons are burnt with
``gdal.Rasterize``, which reprojects them from their own CRS.
"""

from __future__ import annotations

import colorsys
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr

from ..errors import MapSegError
from ..io.raster import open_raster, raster_info, read_classes, same_grid, scratch_raster
from ..progress import Reporter

# Distinct, colour-blind-friendly first colours (ColorBrewer Paired/Set1), then golden-ratio hues.
_BASE_PALETTE = [
    "#1f78b4", "#33a02c", "#e31a1c", "#ff7f00", "#6a3d9a", "#b15928",
    "#a6cee3", "#b2df8a", "#fb9a99", "#fdbf6f", "#cab2d6", "#ffff99",
]  # fmt: skip


def hex_to_rgb(text: str) -> List[int]:
    text = text.strip().lstrip("#")
    if not re.fullmatch(r"[0-9a-fA-F]{6}", text):
        raise MapSegError(f"'#{text}' is not a colour: write colours as #rrggbb, e.g. #1f78b4.")
    return [int(text[i : i + 2], 16) for i in (0, 2, 4)]


def palette(n: int) -> List[List[int]]:
    """``n`` distinct RGB colours, always the same for the same ``n``."""
    colors = [hex_to_rgb(c) for c in _BASE_PALETTE[:n]]
    for i in range(len(colors), n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.75 + 0.2 * (i % 3 == 0))
        colors.append([int(r * 255), int(g * 255), int(b * 255)])
    return colors


def parse_classes(text: str) -> List[dict]:
    """``"1:water:#1f78b4, 2:forest"`` -> ``[{"value": 1, "name": "water", "color": [..]}, ...]``.

    Entries are separated by commas or semicolons; name and colour are optional.
    """
    classes: List[dict] = []
    for entry in re.split(r"[,;\n]", text or ""):
        entry = entry.strip()
        if not entry:
            continue
        parts = [p.strip() for p in entry.split(":")]
        try:
            value = int(parts[0])
        except ValueError:
            raise MapSegError(
                f"Cannot read the class '{entry}': each class is value[:name[:#colour]], e.g. "
                "'1:water:#1f78b4, 2:forest:#33a02c'."
            ) from None
        cls: dict = {"value": value, "name": parts[1] if len(parts) > 1 and parts[1] else ""}
        if len(parts) > 2 and parts[2]:
            cls["color"] = hex_to_rgb(parts[2])
        classes.append(cls)
    values = [c["value"] for c in classes]
    if len(set(values)) != len(values):
        raise MapSegError(f"A class value appears twice in the class list: {values}.")
    return classes


def build_classes(
    values: Sequence[int],
    given: Sequence[dict] = (),
    names: dict | None = None,
    colors: dict | None = None,
) -> List[dict]:
    """The model's class table, sorted by value: names/colours from ``given``, then from the
    label source (``names``/``colors`` by value), else ``class <v>`` and a generated palette."""
    by_value = {int(c["value"]): c for c in given}
    names, colors = names or {}, colors or {}
    table = []
    generated = palette(len(values))
    for i, v in enumerate(sorted(int(x) for x in values)):
        c = by_value.get(v, {})
        color = c.get("color") or (list(colors[v][:3]) if v in colors else generated[i])
        table.append(
            {
                "value": v,
                "name": c.get("name") or names.get(v) or f"class {v}",
                "color": [int(x) for x in color],
            }
        )
    return table


@dataclass
class LabelLayer:
    """A label dataset on an image's grid; ``unlabelled`` values carry no label."""

    dataset: gdal.Dataset
    unlabelled: List[float]
    names: dict = field(default_factory=dict)
    colors: dict = field(default_factory=dict)
    source: str = ""


def label_raster(
    path: str, image: gdal.Dataset, ignore_value: float, reporter: Reporter
) -> LabelLayer:
    """Open a label raster and put it on ``image``'s grid (nearest neighbour if it differs)."""
    ds = open_raster(path)
    band = ds.GetRasterBand(1)
    nodata = band.GetNoDataValue()
    colors, names = read_classes(band)
    if ds.RasterCount != 1:
        reporter.warn(f"The label raster '{path}' has {ds.RasterCount} bands; band 1 is used.")
    if gdal.GetDataTypeName(band.DataType).startswith(("Float", "CFloat")):
        reporter.warn(
            f"The label raster '{path}' stores floating point values; they are rounded to whole "
            "class values."
        )
    unlabelled = [float(ignore_value)] + ([float(nodata)] if nodata is not None else [])
    if not same_grid(raster_info(ds), raster_info(image), plain=True):
        info, img = raster_info(ds), raster_info(image)
        if not info.georeferenced or not img.georeferenced:
            raise MapSegError(
                f"The label raster '{path}' ({info.width} x {info.height}) is not on the grid of "
                f"its image '{img.path}' ({img.width} x {img.height}) and one of them has no "
                "georeferencing, so they cannot be aligned. Give a label raster of the same size."
            )
        # Nearest neighbour only: averaging class values would invent classes.
        fill = nodata if nodata is not None else float(ignore_value)
        gt = img.geotransform
        xs = [gt[0], gt[0] + gt[1] * img.width]
        ys = [gt[3], gt[3] + gt[5] * img.height]
        ds = gdal.Warp(
            "",
            ds,
            format="VRT",
            dstSRS=img.projection or None,
            outputBounds=(min(xs), min(ys), max(xs), max(ys)),
            width=img.width,
            height=img.height,
            resampleAlg="near",
            srcNodata=nodata,
            dstNodata=fill,
        )
        reporter.info(
            f"The label raster '{os.path.basename(path)}' is not on the grid of "
            f"'{os.path.basename(img.path)}': it was resampled onto the image grid with nearest "
            "neighbour (pixels it does not cover are unlabelled)."
        )
        unlabelled.append(float(fill))
    return LabelLayer(ds, sorted(set(unlabelled)), names, colors, path)


def _field_kind(layer: ogr.Layer, name: str) -> str:
    defn = layer.GetLayerDefn()
    idx = defn.GetFieldIndex(name)
    if idx < 0:
        fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        raise MapSegError(
            f"The polygon layer has no field '{name}'. Its fields are: {', '.join(fields)}."
        )
    kind = defn.GetFieldDefn(idx).GetType()
    if kind in (ogr.OFTInteger, ogr.OFTInteger64):
        return "int"
    if kind == ogr.OFTReal:
        return "real"
    return "text"


def _open_layer(path: str, layer_name: str = ""):
    try:
        vds = ogr.Open(path)
    except RuntimeError as err:
        raise MapSegError(f"OGR cannot open the polygon layer '{path}': {err}") from None
    if vds is None:
        raise MapSegError(f"OGR cannot open the polygon layer '{path}'.")
    layer = vds.GetLayerByName(layer_name) if layer_name else vds.GetLayer(0)
    if layer is None:
        raise MapSegError(f"The vector file '{path}' has no layer '{layer_name}'.")
    return vds, layer


def polygon_classes(
    path: str, class_field: str, given: Sequence[dict], layer_name: str = ""
) -> dict:
    """``{"kind", "burn": [(where, value)] or None, "names": {value: name}}`` for the field.

    A numeric field is burnt as is. A text field's texts are matched on the class names of
    ``given`` (case-insensitively), which must then name them all; without ``given`` they are
    numbered 1, 2, ... in sorted order, as Pseudo-label From Points numbers text classes
    (``"numbered": True``).
    """
    if not class_field:
        raise MapSegError("Choose the polygon layer's field that holds the class (CLASS_FIELD).")
    vds, layer = _open_layer(path, layer_name)
    kind = _field_kind(layer, class_field)
    texts = layer_texts(layer, class_field) if kind == "text" else set()
    name = layer.GetName()
    del layer, vds  # the layer must not outlive its dataset
    if kind != "text":
        return {"kind": kind, "burn": None, "names": {}, "layer": name}
    value_of, names = _text_values(class_field, texts, given)
    burn = text_burns(class_field, texts, value_of)
    return {"kind": kind, "burn": burn, "names": names, "layer": name, "numbered": not given}


def name_key(text: str) -> str:
    """How a text class is compared with a class name: case and surrounding spaces ignored."""
    return str(text).strip().lower()


def layer_texts(layer: ogr.Layer, class_field: str) -> set:
    """The distinct texts of ``class_field``; NULL and blank texts are no class (unlabelled)."""
    texts = {str(f.GetField(class_field)) for f in layer if f.GetField(class_field) is not None}
    layer.ResetReading()
    return {t for t in texts if t.strip()}


def text_burns(class_field: str, texts: set, value_of) -> List[Tuple[str, int]]:
    """``[(OGR where clause, class value)]``: one ``gdal.Rasterize`` burn per distinct text."""
    esc = class_field.replace('"', '""')
    return [
        (f"\"{esc}\" = '{t.replace(chr(39), chr(39) * 2)}'", value_of(t)) for t in sorted(texts)
    ]


def _text_values(class_field: str, texts: set, given: Sequence[dict]):
    """(text -> class value, {value: name}) for a text class field: by ``given``'s names, or
    1, 2, ... over the sorted distinct texts (surrounding spaces ignored)."""
    if not given:
        order = {t: i + 1 for i, t in enumerate(sorted({t.strip() for t in texts if t.strip()}))}
        return (lambda t: order[t.strip()]), {v: t for t, v in order.items()}
    by_name = {name_key(c.get("name", "")): int(c["value"]) for c in given}
    missing = sorted(t for t in texts if name_key(t) not in by_name)
    if missing:
        raise MapSegError(
            f"The class field '{class_field}' holds text ({', '.join(missing[:8])}) that "
            f"matches no class name ({', '.join(n for n in by_name if n) or 'none'}). Name "
            "every class in CLASSES, e.g. '1:water, 2:forest', or leave CLASSES empty to "
            "number the texts 1, 2, ... in sorted order (when fine-tuning, the texts must be "
            "the model's class names)."
        )
    return (lambda t: by_name[name_key(t)]), {v: t for t, v in by_name.items()}


def rasterize_polygons(
    path: str,
    class_field: str,
    image: gdal.Dataset,
    ignore_value: float,
    background: float | None,
    plan: dict,
    workdir: str,
) -> LabelLayer:
    """Burn the polygons' classes onto ``image``'s grid (a temporary tiled GeoTIFF).

    Pixels outside every polygon take ``background`` when given, else stay unlabelled.
    """
    info = raster_info(image)
    fd, tmp = tempfile.mkstemp(suffix=".tif", prefix="labels_", dir=workdir)
    os.close(fd)
    ds = scratch_raster(tmp, info, gdal.GDT_Int32, ignore_value, background)
    try:
        if plan["burn"] is None:
            gdal.Rasterize(ds, path, layers=[plan["layer"]], attribute=class_field)
        else:
            for where, value in plan["burn"]:
                gdal.Rasterize(ds, path, layers=[plan["layer"]], where=where, burnValues=[value])
    except RuntimeError as err:
        raise MapSegError(f"Cannot rasterise the label polygons '{path}': {err}") from None
    ds.FlushCache()
    names = dict(plan.get("names", {}))
    if background is not None and "background" not in names.values():
        names.setdefault(int(background), "background")  # ground outside every polygon
    return LabelLayer(ds, [float(ignore_value)], names, {}, path)


def label_values(block: np.ndarray, unlabelled: Sequence[float]) -> np.ndarray:
    """Mask of labelled pixels in a label block (unlabelled values and NaN excluded)."""
    mask = np.ones(block.shape, dtype=bool)
    if block.dtype.kind == "f":
        mask &= np.isfinite(block)
    for v in unlabelled:
        mask &= block != v
    return mask


def point_classes(values: Sequence, text: bool) -> Tuple[List[int], Dict[int, str]]:
    """Class values of labelled points and their names: text classes are numbered 1, 2, ...
    in sorted order; numbers must be integers."""
    if text:
        order = {name: i + 1 for i, name in enumerate(sorted(set(values)))}
        return [order[v] for v in values], {i: name for name, i in order.items()}
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise MapSegError("holds values that are not numbers.") from None
    if any(n != int(n) for n in numbers):
        raise MapSegError(
            "holds non-integer numbers. Classes must be integers, or text (text classes are "
            "numbered 1, 2, ... in sorted order)."
        )
    classes = [int(n) for n in numbers]
    return classes, {v: str(v) for v in set(classes)}

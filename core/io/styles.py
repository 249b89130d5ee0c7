"""QGIS styles (QML) as plain XML text, so outputs open ready to read in QGIS.

No qgis import: the engine writes the XML QGIS 3.22 writes for these renderers (elements it
leaves out take QGIS's defaults). A style reaches QGIS as the output's *default style*: a
``<name>.qml`` beside a GeoTIFF, Shapefile, GeoJSON or FlatGeobuf (QGIS loads it whenever it
opens the file), or a ``layer_styles`` row of a GeoPackage (``core.io.gpkg``). Give it to the
output set so it is published with the data, all or nothing::

    outputs.style(raster, class_raster_style(classes))       # Segment Raster's classes
    outputs.style(raster, ramp_style(0.0, 1.0, "viridis"))   # a probability / confidence
    outputs.style(vector, categorized_style("class", classes))
    outputs.style(vector, outline_style("label"))            # SAM masks

``classes`` is the model's class list ``[{"value": 1, "name": "water", "color": [r, g, b]}]``
(``color`` may also be ``"#rrggbb"`` or have an alpha). For a file written outside an output
set, ``write_class_raster_style(path, classes)`` and ``write_ramp_style(path, lo, hi)`` put the
``.qml`` beside it.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Iterable, List, Sequence, Tuple
from xml.sax.saxutils import quoteattr

RGBA = Tuple[int, int, int, int]

# Colour ramps as stops (position, r, g, b); ColorBrewer / matplotlib values.
RAMPS = {
    "blues": [(0.0, 247, 251, 255), (0.25, 198, 219, 239), (0.5, 107, 174, 214),
              (0.75, 33, 113, 181), (1.0, 8, 48, 107)],
    "viridis": [(0.0, 68, 1, 84), (0.25, 59, 82, 139), (0.5, 33, 145, 140),
                (0.75, 94, 201, 98), (1.0, 253, 231, 37)],
    "terrain": [(0.0, 26, 150, 65), (0.25, 166, 217, 106), (0.5, 255, 255, 191),
                (0.75, 253, 174, 97), (1.0, 215, 25, 28)],
}  # fmt: skip
# ColorBrewer Paired: 12 colours told apart at a glance, for ids whose neighbours must differ.
QUALITATIVE = ["#a6cee3", "#1f78b4", "#b2df8a", "#33a02c", "#fb9a99", "#e31a1c", "#fdbf6f",
               "#ff7f00", "#cab2d6", "#6a3d9a", "#ffff99", "#b15928"]  # fmt: skip
_HEAD = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
_PIPE_TAIL = (
    '  <brightnesscontrast contrast="0" gamma="1" brightness="0"/>\n'
    '  <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" invertColors="0"/>\n'
    '  <rasterresampler maxOversampling="2"/>\n'
    "  <resamplingStage>resamplingFilter</resamplingStage>\n"
    " </pipe>\n <blendMode>0</blendMode>\n</qgis>\n"
)


# -- colours ---------------------------------------------------------------------------------


def rgba(color) -> RGBA:
    """``"#rrggbb"``, ``(r, g, b)`` or ``(r, g, b, a)`` -> (r, g, b, a)."""
    if isinstance(color, str):
        text = color.lstrip("#")
        values = [int(text[i : i + 2], 16) for i in range(0, len(text), 2)]
    else:
        values = [int(c) for c in color]
    return tuple((values + [255])[:4]) if len(values) == 3 else tuple(values[:4])  # type: ignore


def _grey(value: int) -> RGBA:
    """A stable grey for a class without a colour."""
    level = 96 + (int(value) * 37) % 128
    return level, level, level, 255


def ramp_color(ramp: str, t: float) -> RGBA:
    """The colour at ``t`` in [0, 1] along a named ramp (linear between stops)."""
    stops = RAMPS[ramp]
    t = min(max(t, 0.0), 1.0)
    for (p0, *c0), (p1, *c1) in zip(stops, stops[1:]):
        if t <= p1:
            f = 0.0 if p1 == p0 else (t - p0) / (p1 - p0)
            return tuple(round(a + (b - a) * f) for a, b in zip(c0, c1)) + (255,)  # type: ignore
    return tuple(stops[-1][1:]) + (255,)  # type: ignore


def _hex(c: RGBA) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c[:3])


def _csv(c: RGBA) -> str:
    return ",".join(str(int(v)) for v in c)


def _number(x: float) -> str:
    return f"{x:.10g}"


def normalize_classes(classes: Iterable) -> List[Tuple[int, str, RGBA]]:
    """Class list (dicts, or (value, name, colour) tuples) -> sorted (value, name, rgba)."""
    out = []
    for c in classes:
        if isinstance(c, dict):
            value, name, color = c["value"], c.get("name"), c.get("color")
        else:
            value, name, color = (tuple(c) + (None, None))[:3]
        value = int(value)
        out.append((value, str(name or value), rgba(color) if color is not None else _grey(value)))
    return sorted(out)


# -- rasters ---------------------------------------------------------------------------------


def _raster(renderer: str, body: str, transparency: str = "") -> str:
    return (
        f'{_HEAD}<qgis styleCategories="Symbology">\n <pipe>\n'
        f'  <rasterrenderer type="{renderer}" band="1" opacity="1" alphaBand="-1" '
        f'nodataColor=""{body}\n'
        f"   <rasterTransparency>{transparency}</rasterTransparency>\n"
        "  </rasterrenderer>\n" + _PIPE_TAIL
    )


def class_raster_style(classes: Iterable) -> str:
    """A paletted style listing exactly ``classes`` (names and colours): a Byte GeoTIFF's
    256-entry colour table and values without a class stay out of the legend."""
    entries = "".join(
        f"\n    <paletteEntry value={quoteattr(str(v))} color={quoteattr(_hex(c))} "
        f"alpha={quoteattr(str(c[3]))} label={quoteattr(name)}/>"
        for v, name, c in normalize_classes(classes)
    )
    return _raster("paletted", f">\n   <colorPalette>{entries}\n   </colorPalette>")


def ramp_style(lo: float, hi: float, ramp: str = "viridis", transparent_zero: bool = False) -> str:
    """A pseudocolour style interpolated over ``[lo, hi]`` (the data's real range); nodata is
    transparent, and so are cells equal to 0 with ``transparent_zero`` (depth outside sinks)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-6 or 1.0)
    stops = RAMPS[ramp]
    items = "".join(
        f'\n     <item value="{_number(lo + p * (hi - lo))}" color="{_hex(ramp_color(ramp, p))}" '
        f'alpha="255" label="{_number(round(lo + p * (hi - lo), 6))}"/>'
        for p, *_ in stops
    )
    zero = (
        '<singleValuePixelList><pixelListEntry min="0" max="0" percentTransparent="100"/>'
        "</singleValuePixelList>"
        if transparent_zero
        else ""
    )
    body = (
        f' classificationMin="{_number(lo)}" classificationMax="{_number(hi)}">\n'
        "   <rastershader>\n"
        f'    <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" '
        f'minimumValue="{_number(lo)}" maximumValue="{_number(hi)}" labelPrecision="4">'
        f"{_gradient(ramp, '     ')}{items}\n"
        "    </colorrampshader>\n   </rastershader>"
    )
    return _raster("singlebandpseudocolor", body, zero)


def id_style(hi: float, label: str, colors: Sequence[str] = QUALITATIVE) -> str:
    """Ids in ``[1, hi]`` drawn in ``colors`` by equal ranges (DISCRETE): ids spread over the
    range (``core.labels.pseudolabel.scramble_ids``) give neighbours different colours; 0 is
    nodata. The legend shows the colours once, under ``label``."""
    n = len(colors)
    items = "".join(
        f'\n     <item value="{_number(1 + (i + 1) * (hi - 1) / n)}" color="{c}" alpha="255" '
        f"label={quoteattr(label if i == 0 else '')}/>"
        for i, c in enumerate(colors)
    )
    body = (
        f' classificationMin="1" classificationMax="{_number(hi)}">\n'
        "   <rastershader>\n"
        '    <colorrampshader colorRampType="DISCRETE" classificationMode="2" clip="0" '
        f'minimumValue="1" maximumValue="{_number(hi)}" labelPrecision="0">{items}\n'
        "    </colorrampshader>\n   </rastershader>"
    )
    return _raster("singlebandpseudocolor", body)


def _gradient(ramp: str, indent: str) -> str:
    stops = RAMPS[ramp]
    inner = ":".join(f"{p:g};{_csv(ramp_color(ramp, p))}" for p, *_ in stops[1:-1])
    props = {
        "color1": _csv(ramp_color(ramp, 0.0)),
        "color2": _csv(ramp_color(ramp, 1.0)),
        "discrete": "0",
        "rampType": "gradient",
        "stops": inner,
    }
    return (
        f'\n{indent}<colorramp type="gradient" name="[source]">'
        + _options(props, indent)
        + (f"\n{indent}</colorramp>")
    )


# -- vectors ---------------------------------------------------------------------------------


def _options(props: dict, indent: str) -> str:
    """Symbol-layer properties in both forms QGIS reads (Option map, and legacy prop)."""
    opts = "".join(
        f'\n{indent}  <Option type="QString" name="{k}" value={quoteattr(v)}/>'
        for k, v in props.items()
    )
    legacy = "".join(f'\n{indent} <prop k="{k}" v={quoteattr(v)}/>' for k, v in props.items())
    return f'\n{indent} <Option type="Map">{opts}\n{indent} </Option>{legacy}'


def _fill_symbol(name: str, fill: RGBA | None, outline: RGBA | None, width: float = 0.26) -> str:
    props = {
        "color": _csv(fill or (0, 0, 0, 0)),
        "style": "solid" if fill else "no",
        "outline_color": _csv(outline or (35, 35, 35, 255)),
        "outline_style": "solid" if outline else "no",
        "outline_width": _number(width),
        "outline_width_unit": "MM",
        "joinstyle": "bevel",
    }
    return (
        f'\n   <symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">'
        f'\n    <layer class="SimpleFill" enabled="1" locked="0" pass="0">'
        f"{_options(props, '    ')}\n    </layer>\n   </symbol>"
    )


def _vector(renderer: str, labeling: str = "") -> str:
    labels = ' labelsEnabled="1"' if labeling else ""
    return (
        f'{_HEAD}<qgis styleCategories="Symbology|Labeling"{labels}>\n{renderer}{labeling}'
        " <blendMode>0</blendMode>\n <featureBlendMode>0</featureBlendMode>\n</qgis>\n"
    )


def categorized_style(field: str, classes: Iterable, outline: bool = False) -> str:
    """Polygons filled by ``field`` with each class's colour and name as its legend label."""
    rows = normalize_classes(classes)
    cats = "".join(
        f'\n   <category value={quoteattr(str(v))} symbol="{i}" label={quoteattr(name)} '
        'render="true"/>'
        for i, (v, name, _) in enumerate(rows)
    )
    symbols = "".join(
        _fill_symbol(str(i), c, (35, 35, 35, 255) if outline else None)
        for i, (_, _, c) in enumerate(rows)
    )
    return _vector(
        f' <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} forceraster="0" '
        f'symbollevels="0" enableorderby="0">\n  <categories>{cats}\n  </categories>\n'
        f"  <symbols>{symbols}\n  </symbols>\n </renderer-v2>\n"
    )


def graduated_style(field: str, lo: float, hi: float, ramp: str = "blues", n: int = 5) -> str:
    """Polygons coloured by ``field`` in ``n`` equal intervals over ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0 if math.isfinite(lo) else 1.0
        lo = lo if math.isfinite(lo) else 0.0
    edges = [lo + (hi - lo) * k / n for k in range(n + 1)]
    ranges = "".join(
        f'\n   <range lower="{_number(a)}" upper="{_number(b)}" symbol="{k}" '
        f'label="{_number(round(a, 3))} - {_number(round(b, 3))}" render="true"/>'
        for k, (a, b) in enumerate(zip(edges, edges[1:]))
    )
    symbols = "".join(
        _fill_symbol(str(k), ramp_color(ramp, (k + 0.5) / n), (60, 60, 60, 255), 0.2)
        for k in range(n)
    )
    return _vector(
        f' <renderer-v2 type="graduatedSymbol" graduatedMethod="GraduatedColor" '
        f'attr={quoteattr(field)} forceraster="0" symbollevels="0" enableorderby="0">\n'
        f"  <ranges>{ranges}\n  </ranges>\n  <symbols>{symbols}\n  </symbols>\n"
        " </renderer-v2>\n"
    )


def outline_style(label_field: str | None = None, color=(255, 64, 0)) -> str:
    """Outlines only (the image stays visible under the masks), labelled by ``label_field``."""
    renderer = (
        ' <renderer-v2 type="singleSymbol" forceraster="0" symbollevels="0" enableorderby="0">'
        f"\n  <symbols>{_fill_symbol('0', None, rgba(color), 0.6)}\n  </symbols>\n"
        " </renderer-v2>\n"
    )
    labeling = ""
    if label_field:
        labeling = (
            ' <labeling type="simple">\n  <settings calloutType="simple">\n'
            f'   <text-style fieldName={quoteattr(label_field)} isExpression="0" '
            'fontSize="9" fontSizeUnit="Point" textColor="255,255,255,255" textOpacity="1"/>\n'
            '   <text-buffer bufferDraw="1" bufferSize="0.8" bufferSizeUnits="MM" '
            f'bufferColor="{_csv(rgba(color))}" bufferOpacity="1"/>\n'
            '   <placement placement="1" centroidInside="1" centroidWhole="0"/>\n'
            '   <rendering obstacle="1" scaleVisibility="0" fontLimitPixelSize="0"/>\n'
            "  </settings>\n </labeling>\n"
        )
    return _vector(renderer, labeling)


# -- writing beside a file -------------------------------------------------------------------


def write_style(path: str, qml: str) -> str:
    """Write ``qml`` as ``path``'s default style (``x.tif`` -> ``x.qml``), atomically."""
    dest = os.path.splitext(os.path.abspath(path))[0] + ".qml"
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".partial.qml", dir=os.path.dirname(dest))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(qml)
    os.replace(tmp, dest)
    return dest


def write_class_raster_style(path: str, classes: Sequence) -> str:
    return write_style(path, class_raster_style(classes))


def write_ramp_style(path: str, lo: float, hi: float, ramp: str = "viridis") -> str:
    return write_style(path, ramp_style(lo, hi, ramp))

"""Model metadata in ONNX files: MapSeg's own, and the Deepness plugin's keys.

An ONNX file carries string key/value pairs (``metadata_props``; onnxruntime shows them as
``custom_metadata_map``). MapSeg's exports hold the whole MapSeg metadata (the ``meta`` of the
model file, JSON) under ``mapseg``, plus Deepness's keys so that the Deepness QGIS plugin runs
them as they are. Deepness (PUTvision/qgis-plugin-deepness) reads, each value JSON-encoded:

- ``model_type``: ``"Segmentor"`` for segmentation (also Regressor, Detector, ...);
- ``class_names``: ``{"0": "background", "1": "field"}``, output channel -> name, consecutive
  from 0 (older files use ``names``, or a Python dict literal with integer keys);
- ``resolution``: the training pixel size in centimetres per pixel;
- ``tile_size`` (read by its code) / ``tiles_size`` (its documentation): the tile side in px;
- ``tiles_overlap``: the overlap between tiles in percent of the tile;
- ``standardization_mean`` / ``standardization_std``: per channel, applied after the bytes are
  scaled to 0..1: ``x = (byte / 255 - mean) / std``;
- ``seg_thresh`` and ``seg_small_segment``: a confidence threshold and a small-patch filter
  that Deepness applies to the class map. MapSeg applies the threshold as Deepness does
  (probabilities below it are zeroed before the argmax, ``core.model.onnxnet``); the small-patch
  filter is Segment Raster's SMOOTHING.

The network takes (N, C, H, W) float32 (C = the first C bands) and returns (N, K, H, W)
per-class probabilities; a single output channel is the probability of class 1 against 0.
"""

from __future__ import annotations

import ast
import json

from ..errors import MapSegError
from .modelfile import DEFAULTS, check_meta

MAPSEG_KEY = "mapseg"
# Colours for Deepness models' classes (they carry names only): tab10-like, distinct.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def _json(props: dict, key: str, default=None):
    text = props.get(key)
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)  # Deepness accepts Python literals too
        except (ValueError, SyntaxError):
            raise MapSegError(
                f"The ONNX model's metadata '{key}' cannot be read (not JSON): {text[:80]}"
            ) from None


def mapseg_meta(props: dict) -> dict | None:
    """MapSeg's own metadata when the file is a MapSeg export, else None."""
    if MAPSEG_KEY not in props:
        return None
    meta = dict(DEFAULTS)
    meta.update(json.loads(props[MAPSEG_KEY]))
    check_meta(meta)
    return meta


def class_table(props: dict, channels: int) -> list[dict]:
    """MapSeg classes ``{value, name, color}`` from Deepness's ``class_names`` (or ``names``).

    ``channels`` is the network's output channel count (0 when the file leaves it open); one
    channel is the probability of class 1 against class 0.
    """
    names = _json(props, "class_names", None)
    if names is None:
        names = _json(props, "names", None)
    if isinstance(names, list):
        names = dict(enumerate(names))
    names = {int(k): str(v) for k, v in (names or {}).items()}
    if sorted(names) != list(range(len(names))):
        raise MapSegError(
            "The ONNX model's class_names are not numbered 0, 1, 2, ... without gaps "
            f"(got {sorted(names)}); Deepness and MapSeg need consecutive class ids."
        )
    count = max(channels, 2) if channels else len(names)
    if count < 2:
        raise MapSegError(
            "The ONNX model does not say how many classes it has (no fixed output channel "
            "count and no class_names): add Deepness's class_names metadata."
        )
    return [
        {"value": i, "name": names.get(i, f"class {i}"), "color": list(PALETTE[i % len(PALETTE)])}
        for i in range(count)
    ]


def deepness_meta(props: dict, bands: int, channels: int, tile: int | None) -> dict:
    """A MapSeg ``meta`` for a Deepness-format segmentation model."""
    kind = str(_json(props, "model_type", "Segmentor")).capitalize()
    if kind != "Segmentor":
        raise MapSegError(
            f"The ONNX model is a Deepness '{kind}', not a segmentation model (model_type "
            "Segmentor): Segment Raster only runs segmentation models."
        )
    mean = [float(v) for v in _json(props, "standardization_mean", [0.0] * bands)]
    std = [float(v) for v in _json(props, "standardization_std", [1.0] * bands)]
    if len(mean) < bands or len(std) < bands or not all(s > 0 for s in std[:bands]):
        raise MapSegError(
            f"The ONNX model's standardization_mean/std need {bands} values (positive std); "
            f"got {mean} and {std}."
        )
    # Deepness: x = (byte / 255 - mean) / std, i.e. offset 255 * mean and scale 255 * std
    stats = [
        {"low": 0.0, "high": 255.0, "offset": 255.0 * m, "scale": 255.0 * s}
        for m, s in zip(mean[:bands], std[:bands])
    ]
    # a network with a fixed input size takes only that tile
    size = tile or _json(props, "tile_size", None) or _json(props, "tiles_size", None) or 256
    overlap_pct = _json(props, "tiles_overlap", None)
    resolution = _json(props, "resolution", None)
    meta = dict(DEFAULTS)
    meta.update(
        architecture="onnx",
        arch_kwargs={},
        in_bands=bands,
        band_stats=stats,
        classes=class_table(props, channels),
        tile_size=int(size),
        format="deepness",
        pixel_size=[float(resolution) / 100.0] * 2 if resolution else None,
        # Deepness states sizes in centimetres on the ground: metres in any projected CRS
        crs_wkt='LOCAL_CS["metre",UNIT["metre",1]]' if resolution else "",
        single_channel=channels == 1,
    )
    if overlap_pct is not None:
        meta["tiles_overlap"] = float(overlap_pct)
    for key in ("seg_thresh", "seg_small_segment"):
        if key in props:
            meta[key] = _json(props, key)
    check_meta(meta)
    return meta


def export_props(meta: dict, tile: int, overlap: int) -> dict[str, str]:
    """Metadata written into an exported ONNX file: MapSeg's and Deepness's keys."""
    props = {MAPSEG_KEY: json.dumps(meta)}
    if meta.get("mode") != "supervised":
        return props  # label-free: embeddings, not classes; Deepness cannot use it
    stats = meta["band_stats"]
    props.update(
        model_type=json.dumps("Segmentor"),
        class_names=json.dumps(
            {str(i): c.get("name", str(c["value"])) for i, c in enumerate(meta["classes"])}
        ),  # fmt: skip
        tile_size=json.dumps(int(tile)),
        tiles_size=json.dumps(int(tile)),
        tiles_overlap=json.dumps(int(round(100.0 * overlap / tile))),
        # Deepness feeds byte / 255; MapSeg's model wants (clip(x) - offset) / scale. Exact for
        # 8-bit imagery inside the model's clip range.
        standardization_mean=json.dumps([s["offset"] / 255.0 for s in stats]),
        standardization_std=json.dumps([s["scale"] / 255.0 for s in stats]),
    )
    size = meta.get("pixel_size")
    if size and _metres(meta.get("crs_wkt") or ""):
        values = size if isinstance(size, (list, tuple)) else [size]
        props["resolution"] = json.dumps(100.0 * abs(float(values[0])))
    return props


def _metres(wkt: str) -> bool:
    from osgeo import osr

    if not wkt:
        return False
    srs = osr.SpatialReference()
    try:
        srs.ImportFromWkt(wkt)
    except RuntimeError:
        return False
    metric = srs.IsProjected() or srs.IsLocal()
    return bool(metric) and abs(srs.GetLinearUnits() - 1.0) < 1e-9

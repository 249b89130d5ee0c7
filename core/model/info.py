"""Inspect a MapSeg model file outside QGIS.

Usage: ``.venv/bin/python -m mapseg.core.model.info MODEL.pt|MODEL.onnx [--json]``

ONNX models (MapSeg exports, Deepness models) are read with onnxruntime: their metadata as
MapSeg reads it (no parameter count: the weights stay inside the ONNX graph).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MapSegError
from .modelfile import load_model


def summary(meta: dict, state_dict: dict) -> str:
    n_params = sum(int(t.numel()) for t in state_dict.values()) if state_dict else "(in the graph)"
    lines = [
        f"architecture : {meta['architecture']} {json.dumps(meta['arch_kwargs'])}",
        f"mode         : {meta['mode']}",
        f"input bands  : {meta['in_bands']} {meta.get('band_names') or ''}".rstrip(),
        f"tile size    : {meta['tile_size']}",
        f"pixel size   : {meta.get('pixel_size')}",
        f"parameters   : {n_params:,}" if state_dict else f"parameters   : {n_params}",
        f"created      : {meta.get('created', '?')}",
    ]
    for i, s in enumerate(meta["band_stats"], start=1):
        lines.append(f"band {i:<8}: clip {s['low']:.4g}..{s['high']:.4g}")
    if meta["classes"]:
        lines.append("classes      :")
        for c in meta["classes"]:
            lines.append(f"  {c['value']:>4}  {c.get('name', '')}  {c.get('color', '')}")
    for key, value in (meta.get("metrics") or {}).items():
        if not isinstance(value, (dict, list)):
            lines.append(f"metric {key:<6}: {value}")
    if meta.get("history"):
        lines.append(f"epochs       : {len(meta['history'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show what a MapSeg model file holds.")
    parser.add_argument("model")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    args = parser.parse_args(argv)
    try:
        if args.model.lower().endswith(".onnx"):
            from .onnxnet import OnnxModel

            meta, state = OnnxModel(args.model, "cpu").meta, {}
        else:
            meta, state = load_model(args.model)
    except MapSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(meta, indent=2) if args.json else summary(meta, state))
    return 0


if __name__ == "__main__":
    sys.exit(main())

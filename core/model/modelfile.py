"""The MapSeg model file: one file holds everything needed to use a model.

Saved with ``torch.save`` as a dict of tensors and plain types only, and always loaded with
``torch.load(..., weights_only=True)``: a file that carries pickled code is refused instead of
being executed. All metadata travels as one JSON string, so it can be read without torch's
unpickler trusting anything.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import zipfile
from typing import Any

from ..errors import MapSegError

FORMAT = "mapseg-model"
VERSION = 1
REQUIRED = ("architecture", "arch_kwargs", "in_bands", "band_stats", "classes", "tile_size")
DEFAULTS: dict[str, Any] = {
    "mode": "supervised",
    "ignore_value": 255,
    "pixel_size": None,
    "crs_wkt": "",
    "history": [],
    "metrics": {},
    "band_names": [],
    "training": {},
}


def new_meta(**fields: Any) -> dict:
    """Metadata with defaults filled in and required keys checked."""
    meta = dict(DEFAULTS)
    meta.update(fields)
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    check_meta(meta)
    return meta


def check_meta(meta: dict) -> None:
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MapSegError(f"The model metadata lacks {', '.join(missing)}.")
    if meta["mode"] == "supervised" and not meta["classes"]:
        raise MapSegError("A supervised model needs at least one class.")
    if len(meta["band_stats"]) != int(meta["in_bands"]):
        raise MapSegError("The model's band statistics do not match its band count.")


def save_model(path: str, meta: dict, state_dict: dict) -> str:
    """Write atomically: a cancel or crash never leaves a truncated model at ``path``."""
    import torch

    check_meta(meta)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": json.dumps(meta),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.partial-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_model(path: str, map_location: str = "cpu") -> tuple[dict, dict]:
    """(meta, state_dict) from a MapSeg model file, refusing anything but plain data."""
    import torch

    if not path or not os.path.isfile(path):
        raise MapSegError(f"The model file '{path}' does not exist. Choose a MapSeg model (.pt).")
    if not zipfile.is_zipfile(path):
        raise MapSegError(
            f"'{path}' is not a MapSeg model file (not a PyTorch archive). Train one with "
            "Train Model, or choose the .pt file it wrote."
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise MapSegError(
            f"Refusing to load '{path}': it carries pickled Python objects or code, which a "
            "MapSeg model file never does, and loading it could run that code. Only use "
            f"model files from sources you trust. ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise MapSegError(f"Cannot read the model file '{path}': {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MapSegError(
            f"'{path}' is a PyTorch file but not a MapSeg model (no '{FORMAT}' header). "
            "Plain weights must be trained or fine-tuned into a MapSeg model first."
        )
    if int(payload.get("version", 0)) > VERSION:
        raise MapSegError(
            f"'{path}' was written by a newer MapSeg (model format {payload['version']}); "
            f"this one reads format {VERSION}. Update the plugin."
        )
    meta = dict(DEFAULTS)
    meta.update(json.loads(payload["meta"]))
    check_meta(meta)
    return meta, payload["state_dict"]


def build_model(meta: dict, state_dict: dict | None = None, checkpoint: str = ""):
    """The torch module described by ``meta``, with weights loaded when given.

    ``checkpoint``: the file holding a model's frozen weights when its own file does not (a
    fine-tuned SAM: its Segment Anything checkpoint, checked against ``checkpoint_id``)."""
    from ...nets import build_network

    num_out = (
        len(meta["classes"])
        if meta["mode"] == "supervised"
        else meta["arch_kwargs"].get("out_channels", meta.get("embedding_dim", 16))
    )
    kwargs = {k: v for k, v in meta["arch_kwargs"].items() if k != "out_channels"}
    if kwargs.get("checkpoint_id"):
        kwargs["checkpoint"] = checkpoint  # never the path recorded on the training machine
    elif checkpoint:
        raise MapSegError(
            f"CHECKPOINT is only for SAM models fine-tuned from a Segment Anything checkpoint; "
            f"this model ({meta['architecture']}) holds all its weights: leave CHECKPOINT empty."
        )
    net = build_network(meta["architecture"], int(meta["in_bands"]), int(num_out), **kwargs)
    if state_dict is not None:
        try:
            net.load_state_dict(state_dict)
        except RuntimeError as err:
            raise MapSegError(
                "The model file's weights do not fit its architecture "
                f"({meta['architecture']}): {str(err).splitlines()[0]}"
            ) from None
    if meta["mode"] == "unsupervised" and meta.get("embedding_norm") == "l2":
        net = _l2_embedding(net)
    return net


def _l2_embedding(net):
    """Wrap a label-free network so its per-pixel embedding has unit length (parameter-free:
    k-means over unit vectors compares directions, which segments better than raw logits)."""
    import torch

    class L2Embedding(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.mapseg_arch = getattr(inner, "mapseg_arch", None)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.inner(x), dim=1)

    return L2Embedding(net)


def class_values(meta: dict) -> list[int]:
    return [int(c["value"]) for c in meta["classes"]]


def class_colors(meta: dict) -> dict[int, tuple]:
    return {int(c["value"]): tuple(c["color"]) for c in meta["classes"] if c.get("color")}


def class_names(meta: dict) -> dict[int, str]:
    return {int(c["value"]): str(c["name"]) for c in meta["classes"] if c.get("name")}

"""MapSeg model file (.pt) -> ONNX: Export Model, and the cache that lets Segment Raster run .pt
models through ONNX Runtime on the CPU.

The exported network takes the normalised (N, bands, T, T) batch and returns what Segment Raster
blends: class probabilities (softmax inside the graph, as Deepness expects) for a model with
classes, unit-length embeddings for a label-free model. The batch axis is dynamic; the tile side
is fixed (Deepness reads it from the input shape) unless ``dynamic_size``. The legacy TorchScript
exporter (``dynamo=False``) is used: it needs the ``onnx`` package but not ``onnxscript``.

The cache (``cache_dir()``: ``$MAPSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/mapseg`` or
``~/.cache/mapseg``) keys exports by the model file's SHA-256 and the tile size, and keeps the
model's metadata beside them, so a cached model is segmented without importing PyTorch.
"""

from __future__ import annotations

import io
import json
import os
import warnings

import numpy as np

from ..errors import MapSegError
from .modelfile import DEFAULTS, build_model
from .onnxmeta import export_props

OPSET = 17
EXPORT_VERSION = 1  # bump when the exported graph changes: old cache entries are then ignored


def cache_dir() -> str:
    """MapSeg's cache folder for ONNX exports."""
    root = os.environ.get("MAPSEG_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "mapseg")
    return os.path.join(root, "onnx")


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _export_module(meta: dict, state: dict):
    """The torch module to export: the network, with softmax for a model with classes."""
    import torch

    net = build_model(meta, state).eval()
    if meta["mode"] != "supervised":
        return net

    class Probabilities(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x), dim=1)

    return Probabilities(net).eval()


def onnx_bytes(meta: dict, state: dict, tile: int, overlap: int, dynamic_size=False) -> bytes:
    """The serialised ONNX model with MapSeg's and Deepness's metadata."""
    try:
        import onnx
        import torch
    except ImportError as err:
        raise MapSegError(
            f"Exporting to ONNX needs PyTorch and the onnx package ({err.name} is missing): "
            "python3 -m pip install torch onnx"
        ) from None
    if meta["architecture"] == "sam":
        raise MapSegError("SAM models are not exported to ONNX; they run with PyTorch.")
    module = _export_module(meta, state)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    dummy = torch.zeros(1, int(meta["in_bands"]), tile, tile)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, dummy, buf, dynamo=False, input_names=["input"], output_names=["output"],
            dynamic_axes={"input": axes, "output": axes}, opset_version=OPSET,
            do_constant_folding=True,
        )  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in export_props(meta, tile, overlap).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "MapSeg"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(meta, state, path, tile: int, overlap: int, dynamic_size=False) -> str:
    """Write the ONNX model to ``path`` atomically (a failure leaves no file)."""
    _atomic_write(path, onnx_bytes(meta, state, tile, overlap, dynamic_size))
    return path


def compare_outputs(meta: dict, state: dict, onnx_path: str, tile: int, seed: int = 0) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's outputs on a batch of
    two random tiles in the normalised range (probabilities, or embeddings)."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).random((2, int(meta["in_bands"]), tile, tile), np.float32)
    with torch.inference_mode():
        ref = _export_module(meta, state)(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.abs(out - ref).max())


def cached_meta(sha: str) -> dict | None:
    """The metadata of a model already in the cache (no PyTorch needed), else None."""
    path = os.path.join(cache_dir(), f"{sha}.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = dict(DEFAULTS)
            meta.update(json.load(f))
            return meta
    except (OSError, ValueError):
        return None


def cached_onnx_path(sha: str, tile: int) -> str:
    return os.path.join(cache_dir(), f"{sha}-t{tile}-v{EXPORT_VERSION}.onnx")


def cache_export(meta: dict, state: dict, sha: str, tile: int, overlap: int) -> str:
    """Export into the cache (metadata first, then the model) and return the model's path."""
    path = cached_onnx_path(sha, tile)
    if not os.path.isfile(path):
        export_onnx(meta, state, path, tile, overlap)
    _atomic_write(os.path.join(cache_dir(), f"{sha}.json"), json.dumps(meta).encode())
    return path


MAX_DIFFERENCE = 1e-3  # probabilities / unit embeddings; float32 kernels differ by ~1e-6


def export_model(model_path: str, dest: str, tile: int = 0, reporter=None) -> dict:
    """Export Model's engine: ``model_path`` (.pt) -> ``dest`` (.onnx), checked.

    The ONNX file is written beside ``dest``, loaded with onnxruntime and compared with the
    PyTorch model on random tiles; only then is it moved to ``dest``.
    """
    from ..io.tiling import check_tiling
    from ..progress import Reporter
    from .modelfile import load_model

    reporter = reporter or Reporter()
    if not str(dest).lower().endswith(".onnx"):
        raise MapSegError(f"The exported model must be an .onnx file (got '{dest}').")
    meta, state = load_model(model_path)
    tile = int(tile or meta.get("tile_size") or 256)
    check_tiling(tile, tile // 8)
    folder = os.path.dirname(os.path.abspath(dest))
    tmp = os.path.join(folder, f".{os.path.basename(dest)}.partial-{os.getpid()}.onnx")
    try:
        reporter.fraction(0.1)
        export_onnx(meta, state, tmp, tile, tile // 8)
        reporter.fraction(0.6)
        diff = compare_outputs(meta, state, tmp, tile)
        if not diff <= MAX_DIFFERENCE:
            raise MapSegError(
                f"The exported model differs from the PyTorch model by up to {diff:.3g} (more "
                f"than {MAX_DIFFERENCE}): the export is not faithful; nothing was written."
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    reporter.fraction(1.0)
    reporter.info(
        f"Exported {meta['architecture']} ({meta['mode']}, tiles of {tile} px) to {dest}; "
        f"largest difference from PyTorch on random tiles: {diff:.2g}."
    )
    return {"output": dest, "tile_size": tile, "max_difference": diff, "mode": meta["mode"]}

"""Which runtime runs the model: ONNX Runtime or PyTorch.

- ``.onnx`` files (MapSeg exports, Deepness segmentation models) always run through ONNX
  Runtime, on its CUDA provider when present and asked for, else the CPU: no PyTorch needed.
- ``.pt`` MapSeg model files run through ONNX Runtime when it is installed and the device is
  the CPU (about twice PyTorch's speed on a CPU): the model is exported once into MapSeg's cache
  (``core.model.export``), keyed by the file's SHA-256 and the tile size, so later runs do not
  even import PyTorch. CUDA keeps PyTorch (mixed precision, OOM retry), and so do models that do
  not export (SAM), with a log line saying why.

``MAPSEG_RUNTIME`` (or ``Options.runtime``) = ``torch`` or ``onnx`` forces one (benchmarks and
comparisons); ``auto`` (the default) chooses as above. The log says which runtime ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import MapSegError
from ..model.device import device_name, resolve_device
from ..model.network import default_batch
from ..model.onnxnet import OnnxModel, onnxruntime_available
from ..progress import Reporter

RUNTIMES = ("auto", "onnx", "torch")


def runtime_choice(option: str | None) -> str:
    choice = (option or os.environ.get("MAPSEG_RUNTIME") or "auto").strip().lower()
    if choice not in RUNTIMES:
        raise MapSegError(f"Unknown runtime '{choice}'. Choose {', '.join(RUNTIMES)}.")
    return choice


def is_onnx_file(path: str) -> bool:
    return str(path).lower().endswith(".onnx")


def _needs_torch(what: str):
    return MapSegError(
        f"{what} needs PyTorch, which is not installed here. Install it (python3 -m pip install "
        "torch torchvision), or use an .onnx model (Export Model writes one from a .pt file on a "
        "machine with PyTorch); .onnx models need only onnxruntime."
    )


@dataclass
class ModelHandle:
    """A model opened for Segment Raster: its metadata, and what runs it."""

    path: str
    meta: dict
    state: dict | None = None  # PyTorch weights, when loaded
    onnx: OnnxModel | None = None  # the ONNX Runtime session, when opened
    sha256: str | None = None  # .pt files that may run through the cache


def open_model(path: str, device: str, runtime: str) -> ModelHandle:
    """Read the model's metadata (and open its ONNX session when it is an ONNX file)."""
    if is_onnx_file(path):
        if not onnxruntime_available():
            raise MapSegError(
                f"'{path}' is an ONNX model, which needs onnxruntime: python3 -m pip install "
                "onnxruntime (or onnxruntime-gpu for CUDA)."
            )
        if runtime == "torch":
            raise MapSegError(f"'{path}' is an ONNX model: it runs with ONNX Runtime only.")
        model = OnnxModel(path, device)
        return ModelHandle(path, model.meta, onnx=model)
    if runtime != "torch" and onnxruntime_available() and os.path.isfile(path):
        from ..io.checksum import file_sha256
        from ..model.export import cached_meta

        sha = file_sha256(path)
        meta = cached_meta(sha)
        if meta is not None:  # already exported once: no PyTorch needed to read it
            return ModelHandle(path, meta, sha256=sha)
    else:
        sha = None
    try:
        from ..model.modelfile import load_model

        meta, state = load_model(path)
    except ImportError:
        raise _needs_torch(f"The model '{path}' is a PyTorch model file: it") from None
    return ModelHandle(path, meta, state=state, sha256=sha)


@dataclass
class Runtime:
    """The chosen runtime on its device; ``network(weights)`` is what the pipeline calls."""

    name: str
    device: str
    batch: int
    model: object  # OnnxModel, or the torch module
    reporter: Reporter
    softmax: bool
    tta: bool = False  # each tile under the 8 flips/rotations, outputs averaged (core.infer.tta)

    def network(self, weights: np.ndarray):
        if self.tta:
            from .tta import Augmented

            return Augmented(self._network(weights), weights)
        return self._network(weights)

    def _network(self, weights: np.ndarray):
        if isinstance(self.model, OnnxModel):
            return self.model.network(weights, self.batch, self.reporter)
        from ..model.network import Network

        return Network(
            self.model, self.device, weights, self.batch, self.reporter, softmax=self.softmax
        )


def open_runtime(handle: ModelHandle, opts, tile: int, overlap: int, rep: Reporter) -> Runtime:
    """ONNX Runtime or PyTorch for ``handle``, as the module docstring says; logs the choice."""
    labelfree = handle.meta["mode"] == "unsupervised"
    if handle.onnx is not None:
        model = handle.onnx
        device = model.device
    else:
        choice = runtime_choice(opts.runtime)
        # ONNX runs .pt models on the CPU, so with RUNTIME onnx "auto" means the CPU, even where
        # PyTorch sees a GPU
        auto = device_name(opts.device) == "auto"
        device = "cpu" if choice == "onnx" and auto else resolve_device(opts.device)
        model = _cached_onnx(handle, device, choice, tile, overlap, rep)
        if model is None:
            model = _torch_model(handle, device, getattr(opts, "checkpoint", ""))
    batch = int(opts.batch_size or default_batch(tile, device))
    if isinstance(model, OnnxModel):
        name = model.runtime
    else:
        import torch

        name = f"PyTorch {torch.__version__} on {device}"
    tta = bool(opts.tta)
    rep.info(f"Runtime: {name}." + (" Test-time augmentation: 8 views per tile." if tta else ""))
    return Runtime(name, device, batch, model, rep, softmax=not labelfree, tta=tta)


def _torch_model(handle: ModelHandle, device: str, checkpoint: str = ""):
    try:
        from ..model.modelfile import build_model, load_model

        if handle.state is None:
            handle.meta, handle.state = load_model(handle.path)
        # checkpoint: the frozen SAM encoders of a fine-tuned SAM model (core.model.modelfile)
        return build_model(handle.meta, handle.state, checkpoint).eval().to(device)
    except ImportError:
        raise _needs_torch(f"Running '{handle.path}' on {device}") from None


def _cached_onnx(handle: ModelHandle, device, choice, tile, overlap, rep) -> OnnxModel | None:
    """The .pt model as a cached ONNX export on the CPU, or None to run it with PyTorch."""
    if choice == "torch" or handle.sha256 is None or device != "cpu":
        if choice == "onnx" and device != "cpu":
            raise MapSegError(
                f"RUNTIME onnx runs .pt models on the CPU only, and DEVICE is {device}. Set DEVICE "
                "to cpu or auto for ONNX Runtime, or RUNTIME to torch (or auto) for the GPU."
            )
        return None
    from ..model.export import cache_export, cached_onnx_path

    path = cached_onnx_path(handle.sha256, tile)
    if not os.path.isfile(path):
        try:
            if handle.state is None:
                from ..model.modelfile import load_model

                handle.meta, handle.state = load_model(handle.path)
            path = cache_export(handle.meta, handle.state, handle.sha256, tile, overlap)
            rep.info(f"Exported the model to ONNX once for the CPU (cached in {path}).")
        except Exception as err:  # torch.onnx raises many types; PyTorch still runs the model
            if choice == "onnx":
                raise
            rep.info(f"Running with PyTorch: the model does not export to ONNX ({err}).")
            return None
    return OnnxModel(path, "cpu")

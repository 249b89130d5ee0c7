"""ONNX Runtime inference: an ONNX segmentation model opened for throughput, and the network
wrapper the tile pipeline calls (same interface as ``core.model.network.Network``).

Needs only onnxruntime and numpy: no PyTorch. The session is tuned for throughput on the CPU:
every graph optimisation, one inter-op thread and all cores for the operators (the tile
pipeline's reader and writer threads mostly wait on GDAL and release the GIL), and the memory
arena and memory patterns kept so batches of one shape reuse their buffers.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import MapSegError
from ..progress import Reporter
from .device import device_name
from .onnxmeta import deepness_meta, mapseg_meta

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _threads() -> int:
    """Operator threads: OMP_NUM_THREADS when set (as PyTorch does), else every core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def _providers(device: str):
    """(providers, resolved device) for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    import onnxruntime as ort

    name = device_name(device)
    has_cuda = CUDA in ort.get_available_providers()
    if name == "auto":
        name = "cuda" if has_cuda else "cpu"
    if name == "cpu":
        return [CPU], "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise MapSegError(f"Unknown device '{name}'. Choose auto, cpu, cuda or cuda:N.")
    if not has_cuda:
        raise MapSegError(
            f"DEVICE is {name} but this onnxruntime ({ort.__version__}) has no CUDA provider. "
            "Choose auto or cpu, or install onnxruntime-gpu instead of onnxruntime."
        )
    return [(CUDA, {"device_id": int(match.group(1) or 0)}), CPU], name


def session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = _threads()
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    so.log_severity_level = 3  # errors only: no warnings about unused initializers
    # Idle operator threads sleep instead of spinning: the pipeline's reader and writer threads
    # (and QGIS) then get the cores between batches. Measured on the shared 2-core machine:
    # faster raw forward passes and a pipeline closer to them than with spinning.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxModel:
    """An ONNX segmentation model: its session, input, and MapSeg metadata."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        import onnxruntime as ort

        if not path or not os.path.isfile(path):
            raise MapSegError(f"The model file '{path}' does not exist. Choose a model file.")
        providers, self.device = _providers(device)
        try:
            self.session = ort.InferenceSession(
                path, sess_options=session_options(), providers=providers
            )
        except Exception as err:  # onnxruntime raises its own types for every bad file
            raise MapSegError(
                f"'{path}' is not a usable ONNX model: onnxruntime cannot load it "
                f"({str(err).splitlines()[0][:200]}). Choose an .onnx file exported by MapSeg's "
                "Export Model or a Deepness segmentation model."
            ) from None
        self.path = path
        self.provider = self.session.get_providers()[0]
        self.runtime = f"ONNX Runtime {ort.__version__} ({self.provider})"
        self.input_name, self.input_shape, out_shape = self._check_io()
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        bands, channels = self.input_shape[1], out_shape[1]
        fixed = self.fixed_tile
        self.meta = mapseg_meta(props) or deepness_meta(props, bands, channels, fixed)
        self.single_channel = bool(self.meta.get("single_channel")) or channels == 1
        # Deepness's seg_thresh: probabilities below it count as 0 before the argmax (so a pixel
        # where no class reaches it is class 0), as Deepness does for each tile
        self.threshold = float(self.meta.get("seg_thresh") or 0.0)
        self._check_counts(bands, channels)

    def _check_io(self):
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        in_shape = inputs[0].shape if len(inputs) == 1 else []
        out_shape = outputs[0].shape if len(outputs) == 1 else []
        if len(in_shape) != 4 or len(out_shape) != 4 or not isinstance(in_shape[1], int):
            raise MapSegError(
                f"'{self.path}' is not a segmentation model: it needs one input (batch, bands, "
                f"height, width) and one output (batch, classes, height, width); it has inputs "
                f"{[i.shape for i in inputs]} and outputs {[o.shape for o in outputs]}."
            )
        if not isinstance(out_shape[1], int):
            out_shape = list(out_shape)
            out_shape[1] = 0  # unknown channel count: taken from the metadata
        return inputs[0].name, list(in_shape), list(out_shape)

    def _check_counts(self, bands: int, channels: int) -> None:
        meta = self.meta
        if int(meta["in_bands"]) != bands:
            raise MapSegError(
                f"'{self.path}' takes {bands} bands but its metadata says {meta['in_bands']}."
            )
        if meta["mode"] == "supervised" and channels not in (0, 1, len(meta["classes"])):
            raise MapSegError(
                f"'{self.path}' has {channels} output channels but {len(meta['classes'])} "
                "classes in its metadata: the class table does not fit the network."
            )

    @property
    def fixed_tile(self) -> int | None:
        """The tile side when the network takes one fixed square size, else None."""
        h, w = self.input_shape[2:]
        return h if isinstance(h, int) and h == w else None

    def network(self, weights: np.ndarray, batch: int, reporter: Reporter) -> OnnxNetwork:
        tile = weights.shape[-1]
        fixed = self.fixed_tile
        if fixed and fixed != tile:
            raise MapSegError(
                f"The ONNX model '{self.path}' takes tiles of {fixed} x {fixed} pixels only; "
                f"set TILE_SIZE to {fixed} (or 0), or export the model again with tiles of {tile}."
            )
        return OnnxNetwork(self, weights, batch, reporter)


class OnnxNetwork:
    """Normalised batch -> the network's probabilities (or embeddings) * blend window."""

    def __init__(self, model: OnnxModel, weights: np.ndarray, batch: int, reporter: Reporter):
        self.model, self.batch, self.reporter = model, batch, reporter
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.device = model.device
        self.cuda = model.device.startswith("cuda")
        self._run = model.session.run
        self._feed = model.input_name

    def with_weights(self, weights: np.ndarray) -> OnnxNetwork:
        return OnnxNetwork(self.model, weights, self.batch, self.reporter)

    def alloc(self, shape) -> np.ndarray:
        return np.empty(shape, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._run(None, {self._feed: x})[0]
        if out.dtype != np.float32:
            out = out.astype(np.float32)
        if self.model.single_channel and out.shape[1] == 1:
            out = np.concatenate([1.0 - out, out], axis=1)  # p(class 1) -> (p0, p1)
        if self.model.threshold:
            out[out < self.model.threshold] = 0.0
        out *= self.weights
        return out

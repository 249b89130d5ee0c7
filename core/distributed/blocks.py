"""One block of a Segment Raster run, segmented wherever a Dask worker runs it.

The client (``core.distributed.dask_segment``) cuts the output window into large blocks; a
worker segments one block exactly as the local run segments those pixels:

- Tiles: the tile grid is anchored to the raster's origin and the blend sums are done in the
  same order for any window (``core.io.tiling``), so a block reads its window plus the halo its
  tiles need and blends the same tiles into the same numbers.
- Batches: CPU kernels give a tile slightly different numbers (about 1e-7) in a batch of
  another size (oneDNN and ONNX Runtime pick kernels by shape), which could flip a class where
  two are tied. So each tile goes through the network in a batch of the size the local run gives
  it (``ShapedForward``): ``batch`` tiles, except the run's last batch, which holds the rest.
  Which other tiles share a batch does not change a tile's numbers (tests/test_dask.py checks
  the whole output against the local run).
- The model arrives as bytes the client sent once (a task's result that workers copy from each
  other, computed again if every holder dies); each worker process opens it once
  (``worker_runtime``, keyed by its SHA-256 and the runtime options) and keeps it for every
  later block.

The same torch / ONNX Runtime thread count as the local run is needed for bit-identical
numbers (Dask's nanny sets ``OMP_NUM_THREADS=1`` in each worker; so do the tests' local runs).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import zlib
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from ..errors import MapSegError
from ..infer.pipeline import run_pipeline
from ..infer.plan import PROB_NODATA, Plan
from ..infer.runtime import Runtime, open_model, open_runtime
from ..infer.segments import finalizer, fit_segments
from ..io.gdal_errors import engine_call
from ..io.tiling import TileGrid, Window, blend_window
from ..model.clustering import Segmenter
from ..progress import Reporter

OUTPUT_TILE = 256  # the output GeoTIFF's tile side (core.io.raster): blocks are multiples of it


@dataclass
class BlockJob:
    """What every block of one run shares; plain values, pickled with each task (small)."""

    plan: Plan  # the whole run's plan; ``plan.source.path`` must open on every worker
    options: object  # core.infer.segment.Options: device, runtime, batch size, checkpoint
    model_sha: str
    model_suffix: str  # ".pt" or ".onnx": the runtime chooses by it
    with_prob: bool
    segmenter: Segmenter | None = None  # label-free: the k-means fitted once for the run


@dataclass
class BlockResult:
    """A finished block; its arrays travel zlib-compressed (class maps shrink many-fold, so
    the network and the client's receive buffers carry little)."""

    window: Window  # in the plan's source pixels
    packed: list  # (zlib bytes, dtype, shape) per output: classes, then probabilities
    tiles: int
    runtime: str

    @staticmethod
    def pack(array: np.ndarray) -> tuple:
        return zlib.compress(np.ascontiguousarray(array).tobytes(), 1), array.dtype.str, array.shape

    def arrays(self) -> list[np.ndarray]:
        return [
            np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype)).reshape(shape)
            for data, dtype, shape in self.packed
        ]


def block_windows(window: Window, size: int) -> list[Window]:
    """The output ``window`` cut into blocks of ``size`` pixels (rounded to whole output tiles).

    Block edges lie every ``size`` pixels from the window's corner, a multiple of the output
    GeoTIFF's tile side, so blocks written in any order never share a compressed tile (each
    tile written once). Results do not depend on the cut (see the module docstring).
    """
    size = max(OUTPUT_TILE, int(round(size / OUTPUT_TILE)) * OUTPUT_TILE)
    x0, y0, w, h = window
    return [
        (x0 + bx, y0 + by, min(size, w - bx), min(size, h - by))
        for by in range(0, h, size)
        for bx in range(0, w, size)
    ]


def batch_sizes(grid: TileGrid, window: Window, block: Window, batch: int) -> list[int]:
    """For each tile of ``block`` (row-major, as the pipeline reads them): the size of the
    batch that holds it when the whole ``window`` is segmented in batches of ``batch``."""
    (i0, _), (j0, j1) = grid.tile_ranges(window)
    total = grid.count(window)
    full = total // batch * batch  # tiles in full batches; the rest make the last batch
    cols = j1 - j0 + 1
    sizes = []
    for i, j in grid.tiles(block):
        index = (i - i0) * cols + (j - j0)
        sizes.append(batch if index < full else total - full)
    return sizes


class ShapedForward:
    """The network, fed each tile in a batch of the size the local run gives it."""

    def __init__(self, net, sizes: list[int]):
        self.net, self.sizes, self.cursor = net, sizes, 0
        self.cuda, self.alloc, self.batch = net.cuda, net.alloc, net.batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        sizes = np.asarray(self.sizes[self.cursor : self.cursor + n])
        self.cursor += n
        if len(sizes) != n:
            raise MapSegError("Internal error: the block's tiles and batches disagree.")
        if (sizes == n).all():
            return self.net(x)
        out = None
        for size in np.unique(sizes):
            rows = np.flatnonzero(sizes == size)
            for start in range(0, len(rows), size):
                part = rows[start : start + size]
                batch = np.zeros((size,) + x.shape[1:], x.dtype)
                batch[: len(part)] = x[part]  # zero tiles fill the batch; never written
                y = self.net(batch)
                if out is None:
                    out = np.empty((n,) + y.shape[1:], y.dtype)
                out[part] = y[: len(part)]
        return out


class MemoryOutput:
    """A block's output in memory, written by the tile pipeline like an ``OutputRaster``."""

    def __init__(self, width: int, height: int, gdal_type: int):
        self.ds = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal_type)

    def band(self, i: int = 1) -> gdal.Band:
        return self.ds.GetRasterBand(i)

    def write(self, array: np.ndarray, xoff: int, yoff: int, band: int = 1) -> None:
        self.ds.GetRasterBand(band).WriteArray(array, xoff, yoff)

    def array(self) -> np.ndarray:
        return self.ds.GetRasterBand(1).ReadAsArray()


_RUNTIMES: dict = {}
_LOCK = threading.Lock()


def worker_runtime(job: BlockJob, model_bytes: bytes) -> Runtime:
    """The model opened on this worker's device, once per process and model/options."""
    opts, plan = job.options, job.plan
    key = (
        job.model_sha, opts.device, opts.runtime, opts.batch_size, opts.checkpoint, opts.tta,
        plan.tile, plan.overlap,
    )  # fmt: skip
    with _LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None:
            path = _model_file(job, model_bytes)
            handle = open_model(path, opts.device, opts.runtime)
            runtime = open_runtime(handle, opts, plan.tile, plan.overlap, Reporter())
            _RUNTIMES[key] = runtime
    return runtime


def _model_file(job: BlockJob, model_bytes: bytes) -> str:
    """The model's bytes as a file on this worker (written once, atomically)."""
    folder = os.path.join(tempfile.gettempdir(), "mapseg-dask-models")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, job.model_sha + job.model_suffix)
    if not os.path.isfile(path):
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".partial")
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        os.replace(tmp, path)
    return path


def _check_source(plan: Plan) -> None:
    try:
        ds = gdal.Open(plan.source.path)
    except RuntimeError as err:
        ds, reason = None, str(err)
    else:
        reason = "GDAL cannot open it"
    if ds is None:
        raise MapSegError(
            f"A Dask worker ({_worker_name()}) cannot open the input raster ({reason}). Every "
            "worker must reach the input at the same path: a shared file system, /vsicurl/ or "
            "/vsis3/ path."
        )


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "not in a worker"


@engine_call
def fit_on_worker(job: BlockJob, model_bytes: bytes) -> Segmenter:
    """Label-free runs: the k-means fitted once on tiles sampled across the whole window,
    exactly as the local run fits it (same sample tiles, batches and network)."""
    _check_source(job.plan)
    runtime = worker_runtime(job, model_bytes)
    plan = dataclasses.replace(job.plan, batch=runtime.batch)
    net = runtime.network(blend_window(plan.tile, plan.overlap))
    sampler = net.with_weights(np.ones((plan.tile, plan.tile), np.float32))
    return fit_segments(
        plan.source.path, plan.grid(), plan.window, plan.band_stats, sampler,
        plan.segments, plan.batch, Reporter(),
    )  # fmt: skip


@engine_call
def segment_block(job: BlockJob, model_bytes: bytes, block: Window) -> BlockResult:
    """Segment ``block`` of the run's window: its classes (and probabilities when asked)."""
    _check_source(job.plan)
    runtime = worker_runtime(job, model_bytes)
    plan = dataclasses.replace(job.plan, batch=runtime.batch)
    net = runtime.network(blend_window(plan.tile, plan.overlap))
    forward = ShapedForward(net, batch_sizes(plan.grid(), plan.window, block, plan.batch))
    finalize = None
    if job.segmenter is not None:
        finalize = finalizer(job.segmenter, plan.nodata, PROB_NODATA)
    outs = [MemoryOutput(block[2], block[3], plan.gdal_type)]
    if job.with_prob:
        outs.append(MemoryOutput(block[2], block[3], gdal.GDT_Float32))
    tiles = run_pipeline(
        plan.job(block, finalize), outs, forward, Reporter(), alloc=net.alloc,
        read_ahead=4 if net.cuda else 2,
    )  # fmt: skip
    packed = [BlockResult.pack(out.array()) for out in outs]
    return BlockResult(block, packed, tiles, runtime.name)

"""Segment Raster's engine: model file + raster -> georeferenced class raster.

``segment_raster`` reads as its outline: open the inputs (model, raster, bands, tiling,
destinations, pixel size) -> plan the tiles (``core.infer.plan``) -> run the threaded tile
pipeline with the network on the chosen device -> write the class raster (and optionally the
winning class's probability) on the input's grid. A cancel or an error leaves no file at the
destination (``OutputRaster``).

Label-free models (``mode == "unsupervised"``) divide the raster into NUM_SEGMENTS segments
(``core.infer.segments``: a k-means pass over sampled embeddings, then the same pipeline
assigning blended embeddings to those centroids). SMOOTHING sieves the class output, RESOLUTION
processes and writes a 2x / 4x coarser grid, BANDS picks the input bands.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.raster import RasterInfo, check_destination, open_raster, raster_info
from ..io.resolution import check_pixel_size
from ..io.tiling import Window, blend_window, check_tiling, extent_window
from ..model.network import Network, default_batch
from ..progress import Reporter
from .band_plan import choose_bands
from .inputs import check_options, resolve_model
from .plan import (
    PROB_NODATA,
    Plan,
    output_type,
    plan_tiles,
    processed_source,
    segment_resampled,
    segment_window,
)
from .runtime import ModelHandle, open_model, open_runtime, runtime_choice
from .segments import finalizer, fit_segments

__all__ = ["Network", "Options", "Result", "default_batch", "output_type", "segment_raster"]


@dataclass
class Options:
    """Tuning knobs; 0 means "the default for this model and device"."""

    tile_size: int = 0
    overlap: int = 0
    batch_size: int = 0
    device: str = "auto"
    resample_to_model: bool = False
    num_segments: int = 6  # label-free models only
    smoothing: int = 0  # minimum mapping unit in pixels; 0: none
    resolution: str = "full"  # full, medium (2x coarser) or low (4x coarser)
    checkpoint: str = ""  # fine-tuned SAM models: the Segment Anything checkpoint they need
    bands: Sequence[int] | None = None  # 1-based input bands fed to the model; None: default
    runtime: str = ""  # auto, onnx or torch; empty: $MAPSEG_RUNTIME, else auto
    tta: bool = False  # test-time augmentation: 8 flipped/rotated views per tile, averaged


@dataclass
class Result:
    output: str
    probability: str | None
    tiles: int
    tile_size: int
    overlap: int
    batch_size: int
    device: str
    seconds: float
    window: tuple
    warnings: list = field(default_factory=list)
    segments: int = 0  # label-free: the number of segments; 0 for a model with classes
    bands: list = field(default_factory=list)
    runtime: str = ""  # e.g. "ONNX Runtime 1.x (CPUExecutionProvider)" or "PyTorch 2.x on cpu"


@dataclass
class Inputs:
    """The checked request: the model, the raster, the bands, the tiling and the outputs."""

    path: str
    model: ModelHandle
    info: RasterInfo
    bands: list
    factor: int
    tile: int
    overlap: int
    extent: tuple | None
    window: Window
    dest: str
    prob_dest: str | None
    sizes: tuple | None
    resample: bool
    warnings: list

    @property
    def meta(self) -> dict:
        return self.model.meta

    @property
    def labelfree(self) -> bool:
        return self.meta["mode"] == "unsupervised"


@engine_call
def segment_raster(
    input_path: str,
    model_path: str | None,
    output: str,
    probability: str | None = None,
    extent=None,
    options: Options | None = None,
    reporter: Reporter | None = None,
) -> Result:
    """Segment ``input_path`` (within map ``extent`` = (xmin, ymin, xmax, ymax) if given).

    An empty ``model_path`` uses the shipped default model.
    """
    opts = options or Options()
    reporter = reporter or Reporter()
    started = time.perf_counter()
    inp = open_inputs(input_path, model_path, output, probability, extent, opts, reporter)
    runtime = open_runtime(inp.model, opts, inp.tile, inp.overlap, reporter)
    tmp = tempfile.mkdtemp(prefix="mapseg-segment-")
    try:
        source = processed_source(
            input_path, inp.info.count, inp.bands, opts.resolution, inp.factor, tmp, reporter
        )
        k = int(opts.num_segments) if inp.labelfree else 0
        plan = plan_tiles(inp, source, inp.tile, inp.overlap, runtime.batch, k)
        plan.smoothing = int(opts.smoothing)
        net = runtime.network(blend_window(plan.tile, plan.overlap))
        reporter.info(
            f"Segmenting {plan.window[2]} x {plan.window[3]} pixels with "
            f"{inp.meta['architecture']} on {runtime.device}: tiles of {plan.tile} px, overlap "
            f"{plan.overlap}, {plan.batch} tiles per batch."
            + (f" Dividing into {k} segments." if k else "")
        )
        tiles = run_plan(plan, inp, net, reporter, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Result(
        output=inp.dest,
        probability=inp.prob_dest,
        tiles=tiles,
        tile_size=plan.tile,
        overlap=plan.overlap,
        batch_size=net.batch,
        device=runtime.device,
        seconds=time.perf_counter() - started,
        window=plan.window,
        warnings=inp.warnings,
        segments=k,
        bands=inp.bands,
        runtime=runtime.name,
    )


def run_plan(plan: Plan, inp: Inputs, net, reporter: Reporter, tmp: str) -> int:
    """Run the pipeline over the plan into the destinations; returns the tiles processed.

    Label-free plans first fit the segments on tiles sampled across the window by the same
    network, unblended (weights of one).
    """
    finalize, main = None, reporter
    if plan.segments:
        sampler = net.with_weights(np.ones((plan.tile, plan.tile), np.float32))
        segmenter = fit_segments(
            plan.source.path, plan.grid(), plan.window, plan.band_stats, sampler,
            plan.segments, plan.batch, reporter.sub(0.0, 0.15),
        )  # fmt: skip
        finalize = finalizer(segmenter, plan.nodata, PROB_NODATA)
        main = reporter.sub(0.15, 1.0)
    if not inp.resample:
        return segment_window(plan, net, finalize, inp.dest, inp.prob_dest, main)
    return segment_resampled(plan, net, finalize, inp, inp.dest, inp.prob_dest, main, tmp)


def open_inputs(
    input_path: str, model_path, output, probability, extent, opts: Options, reporter: Reporter
) -> Inputs:
    """Check everything before any work: model, raster, bands, tiling, destinations, sizes."""
    runtime = runtime_choice(opts.runtime)
    model_path = resolve_model(model_path, opts.device, runtime)
    model = open_model(model_path, opts.device, runtime)
    meta = model.meta
    factor = check_options(opts, meta["mode"] == "unsupervised")
    info = raster_info(open_raster(input_path))
    bands = choose_bands(meta, model_path, input_path, opts.bands, reporter)
    warnings: list = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        reporter.warn(msg)

    if not info.georeferenced:
        warn(
            f"'{input_path}' has no georeferencing (no CRS, no geotransform): the output uses "
            "pixel coordinates, and the pixel size cannot be compared with the model's."
        )
    tile, overlap = tiling(opts, meta)
    window = request_window(info, extent)
    dest, prob_dest = destinations(output, probability, input_path)
    sizes = check_pixel_size(info, meta, warn) if info.georeferenced else None
    resample = wants_resample(opts, sizes, reporter)
    return Inputs(
        input_path, model, info, bands, factor, tile, overlap, extent,
        window, dest, prob_dest, sizes, resample, warnings,
    )  # fmt: skip


def tiling(opts: Options, meta: dict) -> tuple[int, int]:
    """(tile, overlap): the options', else the model's tile and an eighth of it (a quarter
    for a label-free model: k-means splits its embeddings by distance, which the padding at
    a tile's edge shifts; at 64 px a quarter gained NC 0.02 ARI and cost Dubai nothing)."""
    tile = int(opts.tile_size or meta.get("tile_size") or 256)
    pct = meta.get("tiles_overlap")  # Deepness models: percent of the tile
    share = 4 if meta.get("mode") == "unsupervised" else 8
    overlap = int(opts.overlap or (round(tile * pct / 100.0) if pct else tile // share))
    check_tiling(tile, overlap)
    if opts.batch_size < 0:
        raise MapSegError(f"BATCH_SIZE cannot be negative (got {opts.batch_size}).")
    return tile, overlap


def request_window(info: RasterInfo, extent) -> Window:
    """The pixel window of ``extent`` (the whole raster when None)."""
    if extent is not None and not info.georeferenced:
        raise MapSegError("EXTENT needs a georeferenced input; leave it empty for this raster.")
    if extent is None:
        return (0, 0, info.width, info.height)
    return extent_window(info.geotransform, info.width, info.height, extent)


def destinations(output: str, probability: str | None, input_path: str) -> tuple:
    """(class destination, probability destination or None), checked and distinct."""
    dest = check_destination(output, [input_path])
    prob_dest = check_destination(probability, [input_path, dest]) if probability else None
    if prob_dest == dest:
        raise MapSegError("OUTPUT and OUTPUT_PROBABILITY must be different files.")
    return dest, prob_dest


def wants_resample(opts: Options, sizes, reporter: Reporter) -> bool:
    """Whether RESAMPLE_TO_MODEL applies (it is a no-op, said in the log, when sizes match)."""
    resample = bool(opts.resample_to_model and sizes and abs(sizes[0] - 1.0) > 0.01)
    if opts.resample_to_model and not resample:
        reporter.info(
            "RESAMPLE_TO_MODEL: not resampling: "
            + (
                "the input's pixel size already matches the model's."
                if sizes
                else "the model's pixel size or CRS units are unknown or differ in kind "
                "(metres vs degrees) from the input's."
            )
        )
    return resample

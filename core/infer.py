"""Segment Raster's engine: model file + raster -> georeferenced class raster.

``segment_raster`` checks the inputs, picks the device, runs the threaded tile pipeline
(``core.pipeline``) with the network on the chosen device, and writes the class raster (and
optionally the winning class's probability) on the input's grid. A cancel or an error leaves no
file at the destination (``OutputRaster``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from .errors import MapSegError
from .modelfile import build_model, class_colors, class_names, class_values, load_model
from .pipeline import Job, run_pipeline
from .progress import Reporter
from .raster import (
    OutputRaster,
    check_destination,
    open_raster,
    raster_info,
    smallest_int_type,
)
from .resolution import check_pixel_size, mask_nodata, warp_back, warp_to_model
from .tiling import TileGrid, blend_window, check_tiling, extent_window, window_geotransform

PROB_NODATA = -1.0
TYPE_MAX = {
    gdal.GDT_Byte: 255,
    gdal.GDT_UInt16: 65535,
    gdal.GDT_UInt32: 2**32 - 1,
    gdal.GDT_Int16: 32767,
    gdal.GDT_Int32: 2**31 - 1,
}


@dataclass
class Options:
    """Tuning knobs; 0 means "the default for this model and device"."""

    tile_size: int = 0
    overlap: int = 0
    batch_size: int = 0
    device: str = "auto"
    resample_to_model: bool = False


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


def output_type(values: list[int]) -> tuple[int, int]:
    """(GDAL type, nodata): the smallest integer type holding every class and a free value."""
    lo, hi = min(values), max(values)
    gdal_type = smallest_int_type(hi, lo)
    if TYPE_MAX[gdal_type] not in values:
        return gdal_type, TYPE_MAX[gdal_type]
    gdal_type = smallest_int_type(hi + 1, lo)  # the type's maximum is a class: one type up
    return gdal_type, hi + 1


def choose_device(name: str) -> str:
    import torch

    name = (name or "auto").strip().lower()
    if name not in ("auto", "cpu", "cuda"):
        raise MapSegError(f"Unknown device '{name}'. Choose auto, cpu or cuda.")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MapSegError(
            f"DEVICE is cuda but PyTorch {torch.__version__} sees no CUDA GPU (built for CUDA "
            f"{torch.version.cuda or 'none'}). Choose auto or cpu, or install a CUDA build of "
            "PyTorch and an NVIDIA driver."
        )
    return name


def default_batch(tile: int, device: str) -> int:
    # about 0.25 M pixels per batch on CPU (enough to amortise per-call overhead), 2 M on CUDA
    pixels = (8 if device == "cuda" else 1) * 512 * 512
    return max(1, pixels // (tile * tile))


def check_model(meta: dict, path: str, bands: int) -> None:
    if meta["mode"] == "unsupervised":
        # Seam for label-free models: they will need NUM_SEGMENTS and a clustering step.
        raise MapSegError(
            f"'{path}' is a label-free (unsupervised) model; Segment Raster does not support "
            "those yet. Choose a model trained with labels (Train Model)."
        )
    if int(meta["in_bands"]) != bands:
        raise MapSegError(
            f"The input raster has {bands} band{'s' if bands != 1 else ''} but the model "
            f"'{path}' expects {meta['in_bands']}. Choose a raster with the bands the model "
            "was trained on (same bands, same order), e.g. with Build Virtual Raster."
        )


class Network:
    """The model on its device: normalised batch -> softmax * blend window, OOM-safe on CUDA."""

    def __init__(self, model, device: str, weights: np.ndarray, batch: int, reporter: Reporter):
        import torch

        self.torch, self.model, self.device = torch, model, device
        self.cuda = device == "cuda"
        self.weights = torch.from_numpy(weights).to(device)
        self.batch = batch
        self.reporter = reporter

    def alloc(self, shape) -> np.ndarray:
        """Input batch buffers; pinned on CUDA so host->device copies run asynchronously."""
        return self.torch.empty(shape, dtype=self.torch.float32, pin_memory=self.cuda).numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        n, parts, k = x.shape[0], [], 0
        while k < n:
            b = min(self.batch, n - k)
            try:
                parts.append(self._forward(torch.from_numpy(x[k : k + b])))
            except getattr(torch, "OutOfMemoryError", RuntimeError) as err:
                if not self.cuda or "out of memory" not in str(err).lower():
                    raise
                self._out_of_memory(b)
                continue
            k += b
        if not self.cuda:  # already in host memory: no copy
            return (parts[0] if len(parts) == 1 else torch.cat(parts)).numpy()
        out = torch.empty((n,) + tuple(parts[0].shape[1:]), pin_memory=True)
        k = 0
        for part in parts:
            out[k : k + len(part)].copy_(part, non_blocking=True)
            k += len(part)
        torch.cuda.current_stream().synchronize()
        return out.numpy()

    def _forward(self, x):
        torch = self.torch
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=self.cuda)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
                logits = self.model(x)
            probs = torch.softmax(logits.float(), dim=1)
            probs *= self.weights
        return probs

    def _out_of_memory(self, b: int) -> None:
        self.torch.cuda.empty_cache()
        if b <= 1:
            raise MapSegError(
                "The GPU ran out of memory even with one tile per batch. Lower TILE_SIZE "
                "(e.g. to half), close other programs using the GPU, or set DEVICE to cpu."
            )
        self.batch = max(1, b // 2)
        self.reporter.warn(
            f"The GPU ran out of memory with {b} tiles per batch; retrying with {self.batch}. "
            f"Set BATCH_SIZE to {self.batch} (or lower TILE_SIZE) to avoid the retry."
        )


def segment_raster(
    input_path: str,
    model_path: str,
    output: str,
    probability: str | None = None,
    extent=None,
    options: Options | None = None,
    reporter: Reporter | None = None,
) -> Result:
    """Segment ``input_path`` (within map ``extent`` = (xmin, ymin, xmax, ymax) if given)."""
    opts = options or Options()
    reporter = reporter or Reporter()
    started = time.perf_counter()
    meta, state = load_model(model_path)
    ds = open_raster(input_path)
    info = raster_info(ds)
    check_model(meta, model_path, info.count)
    warnings: list = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        reporter.warn(msg)

    if not info.georeferenced:
        warn(
            f"'{input_path}' has no georeferencing (no CRS, no geotransform): the output uses "
            "pixel coordinates, and the pixel size cannot be compared with the model's."
        )
    tile = int(opts.tile_size or meta.get("tile_size") or 256)
    overlap = int(opts.overlap or max(tile // 8, 0))
    check_tiling(tile, overlap)
    if opts.batch_size < 0:
        raise MapSegError(f"BATCH_SIZE cannot be negative (got {opts.batch_size}).")
    if extent is not None and not info.georeferenced:
        raise MapSegError("EXTENT needs a georeferenced input; leave it empty for this raster.")
    window = (
        extent_window(info.geotransform, info.width, info.height, extent)
        if extent is not None
        else (0, 0, info.width, info.height)
    )
    dest = check_destination(output, [input_path])
    prob_dest = check_destination(probability, [input_path, dest]) if probability else None
    if prob_dest == dest:
        raise MapSegError("OUTPUT and OUTPUT_PROBABILITY must be different files.")
    sizes = check_pixel_size(info, meta, warn) if info.georeferenced else None
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

    device = choose_device(opts.device)
    batch = int(opts.batch_size or default_batch(tile, device))
    model = build_model(meta, state).eval().to(device)
    values = class_values(meta)
    gdal_type, nodata = output_type(values)
    classes = {
        "color_table": class_colors(meta) or None,
        "category_names": class_names(meta) or None,
    }
    net = Network(model, device, blend_window(tile, overlap), batch, reporter)
    reporter.info(
        f"Segmenting {window[2]} x {window[3]} pixels with {meta['architecture']} on {device}: "
        f"tiles of {tile} px, overlap {overlap}, {batch} tiles per batch."
    )

    def run(path, width, height, win, dst, pdst, gt, proj, rep: Reporter) -> int:
        """Segment window ``win`` of the raster at ``path`` into ``dst`` (and ``pdst``)."""
        grid = TileGrid(width, height, tile, overlap)
        job = Job(
            path=path,
            grid=grid,
            window=win,
            band_stats=meta["band_stats"],
            batch=batch,
            class_values=np.asarray(values, dtype=np.int64),
            nodata=nodata,
            prob_nodata=PROB_NODATA,
        )
        geo = dict(geotransform=window_geotransform(gt, win), projection=proj)
        with OutputRaster(dst, win[2], win[3], gdal_type, nodata=nodata, **classes, **geo) as out:
            outs = [out]
            prob_out = None
            if pdst:
                prob_out = OutputRaster(
                    pdst,
                    win[2],
                    win[3],
                    gdal.GDT_Float32,
                    nodata=PROB_NODATA,
                    **geo,
                    descriptions=["probability of the winning class"],
                )
                outs.append(prob_out)
            try:
                n = run_pipeline(
                    job, outs, net, rep, alloc=net.alloc, read_ahead=4 if net.cuda else 2
                )
                if prob_out is not None:
                    prob_out.commit()
                out.commit()
            finally:
                if prob_out is not None:
                    prob_out.__exit__(None, None, None)
        return n

    if not resample:
        tiles = run(
            input_path,
            info.width,
            info.height,
            window,
            dest,
            prob_dest,
            info.geotransform,
            info.projection,
            reporter,
        )
    else:
        tiles = _run_resampled(
            run,
            ds,
            info,
            window,
            sizes[1],
            dest,
            prob_dest,
            gdal_type,
            nodata,
            classes,
            reporter,
        )
    return Result(
        output=dest,
        probability=prob_dest,
        tiles=tiles,
        tile_size=tile,
        overlap=overlap,
        batch_size=net.batch,
        device=device,
        seconds=time.perf_counter() - started,
        window=window,
        warnings=warnings,
    )


def _run_resampled(
    run, ds, info, window, target, dest, prob_dest, gdal_type, nodata, classes, reporter
) -> int:
    """Segment at the model's pixel size, then bring the result back onto the input grid.

    The input is warped into a VRT (nothing is copied) covering the whole raster, so the tile
    grid stays anchored to the raster's corner; the window is segmented into temporary
    GeoTIFFs and warped back by nearest neighbour (classes stay classes), then pixels where
    the input is nodata are set to nodata exactly.
    """
    tmp = tempfile.mkdtemp(prefix="mapseg-segment-")
    try:
        vrt_path, vrt_window = warp_to_model(ds, info, window, target, tmp)
        vds = gdal.Open(vrt_path)
        reporter.info(
            f"Processing at the model's pixel size: {vds.RasterXSize} x {vds.RasterYSize} "
            "pixels (resampled input)."
        )
        tmp_cls = f"{tmp}/classes.tif"
        tmp_prob = f"{tmp}/probability.tif" if prob_dest else None
        tiles = run(
            vrt_path,
            vds.RasterXSize,
            vds.RasterYSize,
            vrt_window,
            tmp_cls,
            tmp_prob,
            vds.GetGeoTransform(),
            vds.GetProjection(),
            reporter.sub(0.0, 0.9),
        )
        vds = None
        geo = dict(
            geotransform=window_geotransform(info.geotransform, window),
            projection=info.projection,
        )
        pairs = [(tmp_cls, dest, gdal_type, nodata, classes)]
        if prob_dest:
            pairs.append((tmp_prob, prob_dest, gdal.GDT_Float32, PROB_NODATA, {}))
        outs = []
        try:
            for src, dst, dtype, nd, extra in pairs:
                out = OutputRaster(dst, window[2], window[3], dtype, nodata=nd, **extra, **geo)
                outs.append(out)
                warp_back(src, out.ds, nd)
                mask_nodata(ds, window, out, nd, reporter)
            for out in outs:
                out.commit()
        finally:
            for out in outs:
                out.__exit__(None, None, None)
        return tiles
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

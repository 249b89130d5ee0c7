"""Segment Raster's engine: model file + raster -> georeferenced class raster.

``segment_raster`` checks the inputs, picks the device, runs the threaded tile pipeline
(``core.infer.pipeline``) with the network on the chosen device, and writes the class raster (and
optionally the winning class's probability) on the input's grid. A cancel or an error leaves no
file at the destination (``OutputRaster``).

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
from osgeo import gdal

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.normalize import band_stats
from ..io.raster import (
    OutputRaster,
    check_destination,
    open_raster,
    raster_info,
    smallest_int_type,
)
from ..io.resolution import (
    check_pixel_size,
    coarsen,
    mask_nodata,
    select_bands,
    warp_back,
    warp_to_model,
)
from ..io.tiling import TileGrid, blend_window, check_tiling, extent_window, window_geotransform
from ..model.device import resolve_device
from ..model.modelfile import build_model, class_colors, class_names, class_values, load_model
from ..model.network import Network, default_batch
from ..progress import Reporter
from .inputs import check_options, model_bands, resolve_model
from .pipeline import Job, run_pipeline
from .segments import finalizer, fit_segments, segment_palette, sieve

__all__ = ["Network", "Options", "Result", "default_batch", "segment_raster"]

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
    num_segments: int = 6  # label-free models only
    smoothing: int = 0  # minimum mapping unit in pixels; 0: none
    resolution: str = "full"  # full, medium (2x coarser) or low (4x coarser)
    bands: Sequence[int] | None = None  # 1-based input bands fed to the model; None: default


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


def output_type(values: list[int]) -> tuple[int, int]:
    """(GDAL type, nodata): the smallest integer type holding every class and a free value."""
    lo, hi = min(values), max(values)
    gdal_type = smallest_int_type(hi, lo)
    if TYPE_MAX[gdal_type] not in values:
        return gdal_type, TYPE_MAX[gdal_type]
    gdal_type = smallest_int_type(hi + 1, lo)  # the type's maximum is a class: one type up
    return gdal_type, hi + 1


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
    model_path = resolve_model(model_path)
    meta, state = load_model(model_path)
    labelfree = meta["mode"] == "unsupervised"
    factor = check_options(opts, labelfree)
    ds = open_raster(input_path)
    info = raster_info(ds)
    bands = model_bands(meta, model_path, info.count, opts.bands, reporter)
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

    device = resolve_device(opts.device)
    batch = int(opts.batch_size or default_batch(tile, device))
    model = build_model(meta, state).eval().to(device)
    tmp = tempfile.mkdtemp(prefix="mapseg-segment-")
    try:
        # The processed raster: the chosen bands, then coarser pixels; both are VRTs over the
        # whole input, so the tile grid stays anchored to the raster's corner.
        src = input_path
        if bands != list(range(1, info.count + 1)):
            src = select_bands(input_path, bands, tmp)
        if factor > 1:
            src = coarsen(src, factor, tmp)
            cds = gdal.Open(src)
            cw, chh, cgt = cds.RasterXSize, cds.RasterYSize, cds.GetGeoTransform()
            cds = None
            window = extent_window(cgt, cw, chh, extent) if extent is not None else (0, 0, cw, chh)
            reporter.info(
                f"RESOLUTION {opts.resolution}: processing and writing {cw} x {chh} pixels "
                f"({factor}x coarser than the input)."
            )
        src_ds = gdal.Open(src)
        if labelfree and meta.get("normalization") == "per-input":
            stats = band_stats([src_ds])  # measured on this raster: any bit depth works
        else:
            stats = meta["band_stats"]
        if labelfree:
            k = int(opts.num_segments)
            values = list(range(1, k + 1))
            colors, names = segment_palette(k)
        else:
            k, values = 0, class_values(meta)
            colors, names = class_colors(meta), class_names(meta)
        gdal_type, nodata = output_type(values)
        classes = {"color_table": colors or None, "category_names": names or None}
        net = Network(
            model, device, blend_window(tile, overlap), batch, reporter, softmax=not labelfree
        )
        reporter.info(
            f"Segmenting {window[2]} x {window[3]} pixels with {meta['architecture']} on "
            f"{device}: tiles of {tile} px, overlap {overlap}, {batch} tiles per batch."
            + (f" Dividing into {k} segments." if labelfree else "")
        )
        finalize = None
        main = reporter
        if labelfree:
            sampler = Network(
                model, device, np.ones((tile, tile), np.float32), batch, reporter, softmax=False
            )
            grid = TileGrid(src_ds.RasterXSize, src_ds.RasterYSize, tile, overlap)
            segmenter = fit_segments(
                src, grid, window, stats, sampler, k, batch, reporter.sub(0.0, 0.15)
            )
            finalize = finalizer(segmenter, nodata, PROB_NODATA)
            main = reporter.sub(0.15, 1.0)
        mmu = int(opts.smoothing)

        def run(path, width, height, win, dst, pdst, gt, proj, rep: Reporter, smooth) -> int:
            """Segment window ``win`` of the raster at ``path`` into ``dst`` (and ``pdst``)."""
            job = Job(
                path=path,
                grid=TileGrid(width, height, tile, overlap),
                window=win,
                band_stats=stats,
                batch=batch,
                class_values=np.asarray(values, dtype=np.int64),
                nodata=nodata,
                prob_nodata=PROB_NODATA,
                channels=net_channels(meta) if labelfree else 0,
                finalize=finalize,
            )
            geo = dict(geotransform=window_geotransform(gt, win), projection=proj)
            prob_desc = (
                "segment assignment confidence" if labelfree else "probability of the winning class"
            )
            with OutputRaster(
                dst, win[2], win[3], gdal_type, nodata=nodata, **classes, **geo
            ) as out:
                prob_out = None
                if pdst:
                    prob_out = OutputRaster(
                        pdst,
                        win[2],
                        win[3],
                        gdal.GDT_Float32,
                        nodata=PROB_NODATA,
                        **geo,
                        descriptions=[prob_desc],
                    )
                try:
                    outs = [out] + ([prob_out] if prob_out else [])
                    sub = rep.sub(0.0, 0.9) if smooth and mmu else rep
                    n = run_pipeline(
                        job, outs, net, sub, alloc=net.alloc, read_ahead=4 if net.cuda else 2
                    )
                    if smooth and mmu:
                        sieve(out, mmu, rep.sub(0.9, 1.0))
                    if prob_out is not None:
                        prob_out.commit()
                    out.commit()
                finally:
                    if prob_out is not None:
                        prob_out.__exit__(None, None, None)
            return n

        if not resample:
            tiles = run(
                src,
                src_ds.RasterXSize,
                src_ds.RasterYSize,
                window,
                dest,
                prob_dest,
                src_ds.GetGeoTransform(),
                src_ds.GetProjection(),
                main,
                True,
            )
        else:
            tiles = _run_resampled(
                run,
                src_ds,
                info,
                window,
                sizes[1],
                dest,
                prob_dest,
                gdal_type,
                nodata,
                classes,
                mmu,
                main,
                tmp,
            )
        src_ds = None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
        segments=k,
        bands=bands,
    )


def net_channels(meta: dict) -> int:
    """Output channels of a label-free model (its embedding size)."""
    return int(meta["arch_kwargs"].get("out_channels", meta.get("embedding_dim", 16)))


def _run_resampled(
    run, ds, info, window, target, dest, prob_dest, gdal_type, nodata, classes, mmu, rep, tmp
) -> int:
    """Segment at the model's pixel size, then bring the result back onto the input grid.

    The input is warped into a VRT (nothing is copied) covering the whole raster, so the tile
    grid stays anchored to the raster's corner; the window is segmented into temporary
    GeoTIFFs and warped back by nearest neighbour (classes stay classes), then pixels where
    the input is nodata are set to nodata exactly, and SMOOTHING sieves the final grid.
    """
    vrt_path, vrt_window = warp_to_model(ds, info, window, target, tmp)
    vds = gdal.Open(vrt_path)
    rep.info(
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
        rep.sub(0.0, 0.85),
        False,
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
            mask_nodata(ds, window, out, nd, rep)
        if mmu:
            sieve(outs[0], mmu, rep.sub(0.85, 1.0))
        for out in outs:
            out.commit()
    finally:
        for out in outs:
            out.__exit__(None, None, None)
    return tiles

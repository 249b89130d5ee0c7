"""Segment Raster's tile plan and the one step that segments a window into its outputs.

``Plan`` holds plain values only (paths, sizes, band statistics, class values): with the network
it is all a worker needs to segment one window of the output (``segment_window``), so a block of
a large raster can later run anywhere the raster's path can be opened. ``plan_tiles`` builds the
processed raster (band selection and coarser pixels as VRTs over the whole input, so the tile
grid stays anchored to the raster's corner) and the output's type, classes and styling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
from osgeo import gdal

from ..io.normalize import band_stats
from ..io.raster import OutputRaster, smallest_int_type
from ..io.resolution import coarsen, mask_nodata, select_bands, warp_back, warp_to_model
from ..io.styled_outputs import publish_classes
from ..io.tiling import TileGrid, Window, extent_window, window_geotransform
from ..model.modelfile import class_colors, class_names, class_values
from ..progress import Reporter
from .pipeline import Job, run_pipeline
from .segments import segment_palette, sieve

PROB_NODATA = -1.0
TYPE_MAX = {
    gdal.GDT_Byte: 255,
    gdal.GDT_UInt16: 65535,
    gdal.GDT_UInt32: 2**32 - 1,
    gdal.GDT_Int16: 32767,
    gdal.GDT_Int32: 2**31 - 1,
}


def output_type(values: list[int]) -> tuple[int, int]:
    """(GDAL type, nodata): the smallest integer type holding every class and a free value."""
    lo, hi = min(values), max(values)
    gdal_type = smallest_int_type(hi, lo)
    if TYPE_MAX[gdal_type] not in values:
        return gdal_type, TYPE_MAX[gdal_type]
    gdal_type = smallest_int_type(hi + 1, lo)  # the type's maximum is a class: one type up
    return gdal_type, hi + 1


@dataclass
class Source:
    """A raster the tiles are read from, with its size and georeferencing."""

    path: str
    width: int
    height: int
    geotransform: tuple
    projection: str

    @classmethod
    def open(cls, path: str) -> Source:
        ds = gdal.Open(path)
        return cls(path, ds.RasterXSize, ds.RasterYSize, ds.GetGeoTransform(), ds.GetProjection())


@dataclass
class Plan:
    """What every window of one Segment Raster run shares: plain values only."""

    source: Source
    window: Window
    tile: int
    overlap: int
    batch: int
    band_stats: list
    values: list
    nodata: int
    gdal_type: int
    color_table: dict | None
    category_names: dict | None
    segments: int = 0  # label-free: the number of segments; 0 for a model with classes
    channels: int = 0  # label-free: the embedding size
    smoothing: int = 0

    def grid(self) -> TileGrid:
        return TileGrid(self.source.width, self.source.height, self.tile, self.overlap)

    def job(self, window: Window, finalize: Callable | None) -> Job:
        return Job(
            path=self.source.path,
            grid=self.grid(),
            window=window,
            band_stats=self.band_stats,
            batch=self.batch,
            class_values=np.asarray(self.values, dtype=np.int64),
            nodata=self.nodata,
            prob_nodata=PROB_NODATA,
            channels=self.channels,
            finalize=finalize,
        )


def processed_source(
    path: str, count: int, bands: list[int], resolution: str, factor: int, folder: str, rep
) -> Source:
    """The raster the network reads: the chosen bands, then coarser pixels (VRTs)."""
    src = path
    if bands != list(range(1, count + 1)):
        src = select_bands(path, bands, folder)
    if factor > 1:
        src = coarsen(src, factor, folder)
    source = Source.open(src)
    if factor > 1:
        rep.info(
            f"RESOLUTION {resolution}: processing and writing"
            f" {source.width} x {source.height} pixels ({factor}x coarser than the input)."
        )
    return source


def output_classes(meta: dict, segments: int) -> tuple[list, dict, dict]:
    """(values, colours, names) of the output: the model's classes, or segments 1..N."""
    if segments:
        colors, names = segment_palette(segments)
        return list(range(1, segments + 1)), colors, names
    return class_values(meta), class_colors(meta), class_names(meta)


def plan_tiles(inp, source: Source, tile: int, overlap: int, batch: int, segments: int) -> Plan:
    """The tile plan for the checked request ``inp`` (``core.infer.segment.Inputs``)."""
    window = inp.window
    if inp.factor > 1:
        window = (
            extent_window(source.geotransform, source.width, source.height, inp.extent)
            if inp.extent is not None
            else (0, 0, source.width, source.height)
        )
    meta = inp.meta
    if segments and meta.get("normalization") == "per-input":
        stats = band_stats([gdal.Open(source.path)])  # measured on this raster: any bit depth
    else:
        stats = meta["band_stats"]
    values, colors, names = output_classes(meta, segments)
    gdal_type, nodata = output_type(values)
    return Plan(
        source=source,
        window=window,
        tile=tile,
        overlap=overlap,
        batch=batch,
        band_stats=stats,
        values=values,
        nodata=nodata,
        gdal_type=gdal_type,
        color_table=colors or None,
        category_names=names or None,
        segments=segments,
        channels=net_channels(meta) if segments else 0,
    )


def net_channels(meta: dict) -> int:
    """Output channels of a label-free model (its embedding size)."""
    return int(meta["arch_kwargs"].get("out_channels", meta.get("embedding_dim", 16)))


def _class_output(plan: Plan, dst: str, win: Window, geo: dict) -> OutputRaster:
    return OutputRaster(
        dst,
        win[2],
        win[3],
        plan.gdal_type,
        nodata=plan.nodata,
        color_table=plan.color_table,
        category_names=plan.category_names,
        **geo,
    )


def _probability_output(plan: Plan, dst: str, win: Window, geo: dict) -> OutputRaster:
    desc = "segment assignment confidence" if plan.segments else "probability of the winning class"
    return OutputRaster(
        dst, win[2], win[3], gdal.GDT_Float32, nodata=PROB_NODATA, **geo, descriptions=[desc]
    )


def segment_window(
    plan: Plan,
    forward,
    finalize: Callable | None,
    dst: str,
    pdst: str | None,
    rep: Reporter,
    smooth: bool = True,
) -> int:
    """Segment ``plan.window`` of ``plan.source`` into ``dst`` (and ``pdst``); tiles processed.

    ``forward`` is the network (``core.model.network.Network`` or the ONNX Runtime one). Both
    files are written beside their destinations and committed only when all went well.
    """
    win = plan.window
    geo = dict(
        geotransform=window_geotransform(plan.source.geotransform, win),
        projection=plan.source.projection,
    )
    sieving = smooth and plan.smoothing
    with _class_output(plan, dst, win, geo) as out:
        prob_out = _probability_output(plan, pdst, win, geo) if pdst else None
        try:
            outs = [out] + ([prob_out] if prob_out else [])
            sub = rep.sub(0.0, 0.9) if sieving else rep
            read_ahead = 4 if forward.cuda else 2
            n = run_pipeline(
                plan.job(win, finalize), outs, forward, sub, alloc=forward.alloc,
                read_ahead=read_ahead,
            )  # fmt: skip
            if sieving:
                sieve(out, plan.smoothing, rep.sub(0.9, 1.0))
            # styled (legend of exactly the classes, confidence ramp) and published together
            publish_classes(out, plan.values, plan.color_table, plan.category_names, prob_out)
        finally:
            if prob_out is not None:
                prob_out.__exit__(None, None, None)
    return n


def segment_resampled(
    plan: Plan, forward, finalize, inp, dest: str, prob_dest: str | None, rep: Reporter, tmp: str
) -> int:
    """Segment at the model's pixel size, then bring the result back onto the input grid.

    The input is warped into a VRT (nothing is copied) covering the whole raster, so the tile
    grid stays anchored to the raster's corner; the window is segmented into temporary
    GeoTIFFs and warped back by nearest neighbour (classes stay classes), then pixels where
    the input is nodata are set to nodata exactly, and SMOOTHING sieves the final grid.
    """
    ds, info, window = gdal.Open(plan.source.path), inp.info, inp.window
    vrt_path, vrt_window = warp_to_model(ds, info, window, inp.sizes[1], tmp)
    warped = dataclasses.replace(plan, source=Source.open(vrt_path), window=vrt_window)
    rep.info(
        f"Processing at the model's pixel size: {warped.source.width} x "
        f"{warped.source.height} pixels (resampled input)."
    )
    tmp_cls = f"{tmp}/classes.tif"
    tmp_prob = f"{tmp}/probability.tif" if prob_dest else None
    tiles = segment_window(
        warped, forward, finalize, tmp_cls, tmp_prob, rep.sub(0.0, 0.85), smooth=False
    )
    geo = dict(
        geotransform=window_geotransform(info.geotransform, window), projection=info.projection
    )
    pairs = [(tmp_cls, dest, _class_output, plan.nodata)]
    if prob_dest:
        pairs.append((tmp_prob, prob_dest, _probability_output, PROB_NODATA))
    outs = []
    try:
        for src, dst, make, nodata in pairs:
            out = make(plan, dst, window, geo)
            outs.append(out)
            warp_back(src, out.ds, nodata)
            mask_nodata(ds, window, out, nodata, rep)
        if plan.smoothing:
            sieve(outs[0], plan.smoothing, rep.sub(0.85, 1.0))
        publish_classes(outs[0], plan.values, plan.color_table, plan.category_names, *outs[1:])
    finally:
        for out in outs:
            out.__exit__(None, None, None)
    return tiles

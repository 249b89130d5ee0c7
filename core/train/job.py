"""Train Model end to end: labels -> tiles -> split -> network -> fit -> model file.

``train_model`` is what the Processing algorithm calls; it is plain Python (no QGIS) so tests,
benchmarks and scripts run exactly the same pipeline.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from typing import List, Sequence

import numpy as np

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.normalize import band_stats
from ..io.raster import check_destination, raster_info
from ..labels import classes as lab
from ..model.device import resolve_device
from ..model.modelfile import build_model, load_model, new_meta, save_model
from ..progress import Reporter
from .dataset import TileReader, TileSet, class_counts, fits_in_memory, scan_tiles, spatial_split
from .defaults import device_defaults
from .inputs import check_sam, class_table, label_layers, one_against_rest, open_images
from .loop import FitConfig, FitResult, fit
from .losses import class_weights
from .schedule import seed_everything
from .windows import RandomWindows, steps_per_epoch

# A device-default tile size is halved until the labelled area holds this many grid tiles.
MIN_LABELLED_TILES = 32
SMALLEST_AUTO_TILE = 32


@dataclass
class TrainJob:
    images: Sequence[str]
    output: str
    label_rasters: Sequence[str] = ()
    polygons: str = ""
    polygon_layer: str = ""  # layer name inside ``polygons`` (first layer when empty)
    class_field: str = ""
    background: float | None = None
    classes: str = ""  # "1:water:#1f78b4, 2:forest"
    ignore_value: float = 255
    architecture: str = "unet"
    arch_kwargs: dict = field(default_factory=dict)
    init_model: str = ""
    tile_size: int = 0  # 0: chosen for the device (core.train.defaults)
    val_fraction: float = 0.2
    weighted: bool = True  # class-weighted cross-entropy
    memory_budget_mb: float = 1024.0
    fit: FitConfig = field(default_factory=FitConfig)
    object_class: int | None = None  # this label value becomes class 1, every other one 0
    encoder_weights: str = ""  # torchvision .pth state dict for the backbone (nets.pretrained)
    notes: list = field(default_factory=list)  # what the device defaults chose, for the record


@dataclass
class TrainData:
    """The training and validation tiles, and what the model file records about them."""

    train: TileSet | RandomWindows
    val: TileSet
    counts: np.ndarray  # labelled training pixels per class
    labelled: np.ndarray  # labelled pixels per class over all tiles
    preload: bool


def _load_init(job: TrainJob, bands: int) -> tuple:
    """(metadata, state dict) of INIT_MODEL, checked against the inputs; (None, None) without."""
    if not job.init_model:
        return None, None
    init_meta, init_state = load_model(job.init_model)
    if init_meta["mode"] != "supervised":
        raise MapSegError("INIT_MODEL is not a supervised model; it cannot be fine-tuned.")
    if int(init_meta["in_bands"]) != bands:
        raise MapSegError(
            f"The model to fine-tune reads {init_meta['in_bands']} band(s) but the input "
            f"rasters have {bands}. Give rasters with the bands it was trained on."
        )
    return init_meta, init_state


def _labelled_tiles(job, tiles, layers, given, init_meta, reporter) -> tuple:
    """(the scanned ``tiles`` holding a labelled pixel of a model class, the class table)."""
    if not tiles:
        raise MapSegError(
            "No labelled pixel falls on the input rasters (labels are all nodata or the "
            f"ignore value {job.ignore_value:g}, or outside the rasters). Check the labels' "
            "extent, CRS and nodata value."
        )
    found = sorted({v for t in tiles for v in t.values})
    if job.object_class is not None:
        found, given = one_against_rest(job, tiles, found, given, layers)
    classes = class_table(job, layers, found, given, init_meta, reporter)
    if job.architecture == "sam" and init_meta is None and len(classes) != 2:
        raise MapSegError(
            f"SAM segments one class against the rest (2 classes), but the labels hold "
            f"{len(classes)} classes ({[c['value'] for c in classes]}). Set OBJECT_CLASS to "
            "the class to segment: its pixels become class 1, every other labelled pixel "
            "class 0."
        )
    values = [c["value"] for c in classes]
    tiles = [t for t in tiles if any(v in values for v in t.values)]
    if not tiles:
        raise MapSegError(
            f"No labelled pixel holds one of the classes {values}: check CLASSES against "
            f"the label values ({found[:10]})."
        )
    return tiles, classes


def _normalisation(job: TrainJob, images: list, init_meta, reporter) -> list:
    """Band statistics: the fine-tuned model's (kept consistent), else measured on the inputs."""
    small = [
        os.path.basename(p)
        for p, ds in zip(job.images, images)
        if min(ds.RasterXSize, ds.RasterYSize) < job.tile_size
    ]
    if small:
        reporter.info(
            f"{', '.join(small)} is smaller than the tile size {job.tile_size}: its tiles "
            "are padded (padding carries no label)."
        )
    if init_meta is None:
        return band_stats(images)
    reporter.info(
        f"Fine-tuning {os.path.basename(job.init_model)} ({init_meta['architecture']}): "
        "its classes and band normalisation are kept so the model stays consistent."
    )
    return init_meta["band_stats"]


def _tile_sets(job, images, layers, tiles, classes, stats, reporter) -> TrainData:
    """Split the tiles spatially and load them (in memory when they fit the budget)."""
    values = [c["value"] for c in classes]
    train_idx, val_idx = spatial_split(tiles, job.val_fraction, job.fit.seed)
    if job.val_fraction > 0 and not val_idx:
        reporter.warn(
            "Too few labelled tiles to set validation tiles apart; metrics are measured on "
            "the training tiles and are optimistic. Label more ground or use smaller tiles."
        )
    counts = class_counts([tiles[i] for i in train_idx], values)
    reporter.info(
        f"{len(train_idx)} training and {len(val_idx)} validation tiles of "
        f"{job.tile_size} px; labelled pixels per class: "
        + ", ".join(f"{c['name']} {n}" for c, n in zip(classes, counts))
    )
    reader = TileReader(images, layers, values, stats, job.tile_size, job.object_class)
    bands = images[0].RasterCount
    train_tiles, val_tiles = [tiles[i] for i in train_idx], [tiles[i] for i in val_idx]
    load = reporter.sub(0.05, 0.15)
    if job.fit.balanced:  # SAM: whole grid tiles, with and without the object equally often
        preload = fits_in_memory(len(tiles), bands, job.tile_size, job.memory_budget_mb)
        train_set = TileSet(reader, train_tiles, preload, load.sub(0, 0.8))
    else:
        pixels = sum(ds.RasterXSize * ds.RasterYSize for ds in images) / job.tile_size**2
        preload = fits_in_memory(math.ceil(pixels), bands, job.tile_size, job.memory_budget_mb)
        bs = job.fit.batch_size or 8
        steps = steps_per_epoch(len(train_tiles), len(val_tiles), bs)
        train_set = RandomWindows(reader, train_tiles, val_tiles, preload, steps, load.sub(0, 0.8))
        reporter.info(
            f"Training on random {job.tile_size}-px windows (class-balanced), {steps} steps of "
            f"{bs} per epoch; validation on {len(val_tiles)} whole tiles no window touches."
        )
    val_set = TileSet(reader, val_tiles, preload, load.sub(0.8, 1))
    if not preload:
        reporter.info("Rasters do not fit the memory budget: they are read as training goes.")
    return TrainData(train_set, val_set, counts, class_counts(tiles, values), preload)


def _network(job: TrainJob, init_meta, init_state, bands: int, num_classes: int, reporter):
    seed_everything(job.fit.seed)  # the network's initial weights depend on the seed too
    if init_meta is not None and job.encoder_weights:
        raise MapSegError(
            "ENCODER_WEIGHTS starts a new network from pretrained weights; it cannot be "
            "combined with INIT_MODEL (a model to fine-tune)."
        )
    if init_meta is not None:  # a fine-tuned SAM takes its frozen encoders from CHECKPOINT
        return build_model(init_meta, init_state, str(job.arch_kwargs.get("checkpoint") or ""))
    from ...nets import build_network

    net = build_network(job.architecture, bands, num_classes, **job.arch_kwargs)
    if job.encoder_weights:
        from ...nets.pretrained import load_encoder_weights

        reporter.info(load_encoder_weights(net, job.encoder_weights))
    return net


def _training_record(job, result: FitResult, data: TrainData, weights) -> dict:
    """What the model file says about how it was trained."""
    return {
        "device": result.device,
        "mixed_precision": result.amp,
        "seconds": round(result.seconds, 2),
        "epochs_run": result.epochs_run,
        "kept_epoch": result.extra.get("kept_epoch", 0),
        "epochs": job.fit.epochs,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "skipped_steps": result.extra.get("skipped_steps", 0),
        "batch_size": job.fit.batch_size,
        "learning_rate": job.fit.learning_rate,
        "loss": job.fit.loss,
        "class_weights": None if weights is None else [float(w) for w in weights],
        "augment": job.fit.augment,
        "balanced_sampling": job.fit.balanced,
        "object_class": job.object_class,
        "seed": job.fit.seed,
        "validation_fraction": job.val_fraction,
        "train_tiles": len(data.train),
        "sampling": "grid tiles, balanced" if job.fit.balanced else "random windows, balanced",
        "steps_per_epoch": data.train.epoch_steps(job.fit.batch_size or 8),
        "defaults": job.notes,
        "encoder_weights": os.path.basename(job.encoder_weights),
        "val_tiles": len(data.val),
        "train_pixels": [int(n) for n in data.counts],
        "labelled_pixels": [int(n) for n in data.labelled],
        "tiles_in_memory": data.preload,
        "init_model": os.path.basename(job.init_model) if job.init_model else "",
        "inputs": [os.path.basename(p) for p in job.images],
    }


def _model_meta(job, images: list, net, stats, classes: List[dict], training: dict, result):
    bands = images[0].RasterCount
    info = raster_info(images[0])
    arch = net.mapseg_arch
    return new_meta(
        architecture=arch["name"],
        arch_kwargs=arch["kwargs"],
        in_bands=bands,
        band_stats=stats,
        band_names=[images[0].GetRasterBand(i + 1).GetDescription() for i in range(bands)],
        classes=classes,
        ignore_value=job.ignore_value,
        tile_size=job.tile_size,
        pixel_size=list(info.pixel_size) if info.georeferenced else None,
        crs_wkt=info.projection,
        mode="supervised",
        history=result.history,
        metrics=result.metrics,
        training=training,
    )


def _with_device_defaults(job: TrainJob, reporter: Reporter) -> TrainJob:
    """The job with its tile size, batch size and U-Net width chosen for the device when
    left unset; the log says what was chosen and why."""
    arch = "" if job.init_model else job.architecture  # a fine-tuned model keeps its network
    device = resolve_device(job.fit.device)
    chosen = device_defaults(device, arch, job.tile_size, job.fit.batch_size, job.arch_kwargs)
    if chosen.tile_size < 16:
        raise MapSegError(
            f"TILE_SIZE {chosen.tile_size} is too small: give 0 (chosen for the device) or at "
            "least 16 pixels."
        )
    for note in chosen.notes:
        reporter.info(note)
    fit_cfg = replace(job.fit, batch_size=chosen.batch_size)
    return replace(job, tile_size=chosen.tile_size, arch_kwargs=chosen.arch_kwargs, fit=fit_cfg,
                   notes=chosen.notes)  # fmt: skip


def _scan_labels(job: TrainJob, images, layers, shrink: bool, reporter) -> tuple:
    """(job, grid tiles holding a label) at the job's tile size; with ``shrink`` (a device
    default), the tile size is first halved, down to ``SMALLEST_AUTO_TILE``, while the labelled
    area holds fewer than ``MIN_LABELLED_TILES`` tiles.

    A small labelled area cut into a few large tiles leaves one or two validation tiles, drops
    the training tiles that touch them and gives random windows few distinct positions. On the
    North Carolina benchmark (244 x 443 labelled px, 8 tiles of 128 px) 128-px windows scored
    0.141 mIoU on the unseen half, 64-px 0.214 and 32-px 0.221."""
    tile, probe = job.tile_size, 0
    # each probe gets the first half of what is left of the bar, so it never moves back
    tiles = scan_tiles(images, layers, tile, reporter.sub(0.0, 0.5))
    while shrink and len(tiles) < MIN_LABELLED_TILES and tile // 2 >= SMALLEST_AUTO_TILE:
        tile, probe = tile // 2, probe + 1
        tiles = scan_tiles(
            images, layers, tile, reporter.sub(1 - 0.5**probe, 1 - 0.5 ** (probe + 1))
        )
    if tile == job.tile_size:
        return job, tiles
    note = (
        f"Tile size {tile} px: the labelled area holds too few {job.tile_size}-px tiles for "
        "spatial validation blocks and varied random windows (set TILE_SIZE to override)."
    )
    reporter.info(note)
    return replace(job, tile_size=tile, notes=[*job.notes, note]), tiles


@engine_call
def train_model(job: TrainJob, reporter: Reporter) -> dict:
    """Train, save the model file at ``job.output`` and return its metadata."""
    output = check_destination(job.output, list(job.images))
    images = open_images(job.images)
    auto_tile = not job.tile_size and job.architecture != "sam"
    job = _with_device_defaults(job, reporter)
    if not job.label_rasters and not job.polygons:  # no labels: label-free (self-supervised)
        from .labelfree import train_from_job

        return train_from_job(job, output, reporter)
    bands = images[0].RasterCount
    check_sam(job, bands)
    init_meta, init_state = _load_init(job, bands)
    given = lab.parse_classes(job.classes)
    workdir = tempfile.mkdtemp(prefix="mapseg_train_")
    layers: list = []
    try:
        # text polygon classes are matched on CLASSES' names, else on the fine-tuned model's
        named = given or (init_meta["classes"] if init_meta else [])
        layers = label_layers(job, images, named, workdir, reporter)
        job, tiles = _scan_labels(job, images, layers, auto_tile, reporter.sub(0.0, 0.05))
        tiles, classes = _labelled_tiles(job, tiles, layers, given, init_meta, reporter)
        stats = _normalisation(job, images, init_meta, reporter)
        data = _tile_sets(job, images, layers, tiles, classes, stats, reporter)
        net = _network(job, init_meta, init_state, bands, len(classes), reporter)
        weights = class_weights(data.counts) if job.weighted else None
        names = [c["name"] for c in classes]
        result = fit(
            net, data.train, data.val, len(classes), weights, job.fit, reporter.sub(0.15, 0.98),
            names,
        )  # fmt: skip
        training = _training_record(job, result, data, weights)
        meta = _model_meta(job, images, net, stats, classes, training, result)
        save_model(output, meta, result.state_dict)
        return meta
    finally:
        for layer in layers:
            layer.dataset = None
        layers.clear()
        shutil.rmtree(workdir, ignore_errors=True)

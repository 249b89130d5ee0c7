"""Train Model end to end: labels -> tiles -> split -> network -> fit -> model file.

``train_model`` is what the Processing algorithm calls; it is plain Python (no QGIS) so tests,
benchmarks and scripts run exactly the same pipeline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import List, Sequence

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.normalize import band_stats
from ..io.raster import check_destination, open_raster, raster_info
from ..labels import classes as lab
from ..model.modelfile import build_model, load_model, new_meta, save_model
from ..progress import Reporter
from .dataset import TileReader, TileSet, class_counts, fits_in_memory, scan_tiles, spatial_split
from .loop import FitConfig, class_weights, fit, seed_everything


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
    tile_size: int = 256
    val_fraction: float = 0.2
    weighted: bool = True  # class-weighted cross-entropy
    memory_budget_mb: float = 1024.0
    fit: FitConfig = field(default_factory=FitConfig)
    object_class: int | None = None  # this label value becomes class 1, every other one 0


def _open_images(paths: Sequence[str]) -> list:
    if not paths:
        raise MapSegError("No input raster was given. Choose one or more rasters to train on.")
    images = [open_raster(p) for p in paths]
    counts = [ds.RasterCount for ds in images]
    if len(set(counts)) != 1:
        listing = ", ".join(f"{os.path.basename(p)}: {c}" for p, c in zip(paths, counts))
        raise MapSegError(
            f"The input rasters have different band counts ({listing}). A model reads a fixed "
            "set of bands: give rasters with the same bands in the same order."
        )
    return images


def _label_layers(job: TrainJob, images: list, given: list, workdir: str, reporter) -> list:
    if job.label_rasters and job.polygons:
        raise MapSegError("Give either label rasters (LABELS) or label polygons, not both.")
    if job.label_rasters:
        if len(job.label_rasters) != len(images):
            raise MapSegError(
                f"{len(job.label_rasters)} label raster(s) for {len(images)} input raster(s): "
                "give one label raster per input raster, in the same order."
            )
        return [
            lab.label_raster(p, ds, job.ignore_value, reporter)
            for p, ds in zip(job.label_rasters, images)
        ]
    if job.polygons:
        plan = lab.polygon_classes(job.polygons, job.class_field, given, job.polygon_layer)
        return [
            lab.rasterize_polygons(
                job.polygons,
                job.class_field,
                ds,
                job.ignore_value,
                job.background,
                plan,
                workdir,
            )
            for ds in images
        ]
    raise MapSegError(
        "No labels were given: choose one label raster per input (LABELS) or a polygon layer "
        "with a class field (LABEL_POLYGONS, CLASS_FIELD)."
    )


def _classes(job, layers, found: List[int], given: list, init_meta, reporter) -> list:
    if init_meta is not None:
        known = [int(c["value"]) for c in init_meta["classes"]]
        extra = sorted(set(found) - set(known))
        if extra:
            raise MapSegError(
                f"The labels hold class value(s) {extra} that the model to fine-tune does not "
                f"know (its classes are {known}). Fine-tuning keeps the model's classes: "
                "relabel those pixels, or train a new model without INIT_MODEL."
            )
        return [dict(c) for c in init_meta["classes"]]
    if given:
        values = [int(c["value"]) for c in given]
        if job.ignore_value in values:
            raise MapSegError(
                f"The ignore value {job.ignore_value:g} is also a class in CLASSES; choose "
                "another IGNORE_VALUE."
            )
        extra = sorted(set(found) - set(values))
        if extra:
            reporter.warn(
                f"The labels hold value(s) {extra} that are not in CLASSES; those pixels are "
                "treated as unlabelled."
            )
    else:
        values = found
    names, colors = {}, {}
    for layer in layers:
        names.update(layer.names)
        colors.update(layer.colors)
    table = lab.build_classes(values, given, names, colors)
    if len(table) < 2:
        raise MapSegError(
            f"Only one class ({values}) is labelled; a model needs at least two classes. Label "
            "some background too, or set BACKGROUND_VALUE so unlabelled ground becomes a class."
        )
    return table


def _check_sam(job: TrainJob, bands: int) -> None:
    """Fail before any label is read when SAM cannot be fine-tuned on these inputs."""
    if job.architecture != "sam" or job.init_model:
        return
    checkpoint = str(job.arch_kwargs.get("checkpoint") or "")
    if not checkpoint:
        raise MapSegError(
            "ARCHITECTURE sam fine-tunes a Segment Anything model: choose its checkpoint "
            "(CHECKPOINT, a .pth file such as sam_vit_b_01ec64.pth)."
        )
    if bands != 3:
        raise MapSegError(
            f"SAM reads exactly 3 bands (RGB) but the input rasters have {bands}. Pick 3 bands: "
            "build a 3-band VRT (Raster > Miscellaneous > Build Virtual Raster, or "
            "gdal_translate -of VRT -b 1 -b 2 -b 3 in.tif rgb.vrt) and train on it."
        )
    from ..sam.checkpoint import config_from_state_dict, read_checkpoint

    config_from_state_dict(read_checkpoint(checkpoint))  # not a SAM checkpoint: clear error


def _one_against_rest(job: TrainJob, tiles: list, found: List[int], given: list, layers: list):
    """(found, given) once ``job.object_class`` is class 1 and every other label class 0;
    the tiles' label counts are remapped in place."""
    obj = int(job.object_class)
    if obj not in found:
        raise MapSegError(
            f"OBJECT_CLASS {obj} is not among the label values ({found[:10]}): choose one of them."
        )
    for t in tiles:
        n_obj = t.values.get(obj, 0)
        n_rest = sum(t.values.values()) - n_obj
        t.values = {v: n for v, n in ((0, n_rest), (1, n_obj)) if n}
    names, colors = {}, {}
    for layer in layers:
        names.update(layer.names)
        colors.update(layer.colors)
    named = {int(c["value"]): c for c in given}.get(obj, {})
    name = named.get("name") or names.get(obj) or f"class {obj}"
    color = named.get("color") or (list(colors[obj][:3]) if obj in colors else [230, 60, 40])
    table = [
        {"value": 0, "name": f"not {name}", "color": [200, 200, 200]},
        {"value": 1, "name": name, "color": [int(x) for x in color]},
    ]
    found = sorted({v for t in tiles for v in t.values})
    return found, [c for c in table if c["value"] in found]


@engine_call
def train_model(job: TrainJob, reporter: Reporter) -> dict:
    """Train, save the model file at ``job.output`` and return its metadata."""
    output = check_destination(job.output, list(job.images))
    images = _open_images(job.images)
    if not job.label_rasters and not job.polygons:  # no labels: label-free (self-supervised)
        from .labelfree import train_from_job

        return train_from_job(job, output, reporter)
    bands = images[0].RasterCount
    _check_sam(job, bands)
    init_meta = init_state = None
    if job.init_model:
        init_meta, init_state = load_model(job.init_model)
        if init_meta["mode"] != "supervised":
            raise MapSegError("INIT_MODEL is not a supervised model; it cannot be fine-tuned.")
        if int(init_meta["in_bands"]) != bands:
            raise MapSegError(
                f"The model to fine-tune reads {init_meta['in_bands']} band(s) but the input "
                f"rasters have {bands}. Give rasters with the bands it was trained on."
            )
    given = lab.parse_classes(job.classes)
    workdir = tempfile.mkdtemp(prefix="mapseg_train_")
    layers: list = []
    try:
        layers = _label_layers(job, images, given, workdir, reporter)
        tiles = scan_tiles(images, layers, job.tile_size, reporter.sub(0.0, 0.05))
        if not tiles:
            raise MapSegError(
                "No labelled pixel falls on the input rasters (labels are all nodata or the "
                f"ignore value {job.ignore_value:g}, or outside the rasters). Check the labels' "
                "extent, CRS and nodata value."
            )
        found = sorted({v for t in tiles for v in t.values})
        if job.object_class is not None:
            found, given = _one_against_rest(job, tiles, found, given, layers)
        classes = _classes(job, layers, found, given, init_meta, reporter)
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
        if init_meta is not None:
            stats = init_meta["band_stats"]
            reporter.info(
                f"Fine-tuning {os.path.basename(job.init_model)} ({init_meta['architecture']}): "
                "its classes and band normalisation are kept so the model stays consistent."
            )
        else:
            stats = band_stats(images)
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
        preload = fits_in_memory(len(tiles), bands, job.tile_size, job.memory_budget_mb)
        load = reporter.sub(0.05, 0.15)
        train_set = TileSet(reader, [tiles[i] for i in train_idx], preload, load.sub(0, 0.8))
        val_set = TileSet(reader, [tiles[i] for i in val_idx], preload, load.sub(0.8, 1))
        if not preload:
            reporter.info("Tiles do not fit the memory budget: they are read as training goes.")
        seed_everything(job.fit.seed)  # the network's initial weights depend on the seed too
        if init_meta is not None:
            net = build_model(init_meta, init_state)
        else:
            from ...nets import build_network

            net = build_network(job.architecture, bands, len(classes), **job.arch_kwargs)
        weights = class_weights(counts) if job.weighted else None
        names = [c["name"] for c in classes]
        result = fit(
            net, train_set, val_set, len(classes), weights, job.fit, reporter.sub(0.15, 0.98), names
        )
        info = raster_info(images[0])
        arch = net.mapseg_arch
        meta = new_meta(
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
            training={
                "device": result.device,
                "mixed_precision": result.amp,
                "seconds": round(result.seconds, 2),
                "epochs_run": result.epochs_run,
                "epochs": job.fit.epochs,
                "stopped_early": result.stopped_early,
                "stop_reason": result.stop_reason,
                "batch_size": job.fit.batch_size,
                "learning_rate": job.fit.learning_rate,
                "loss": job.fit.loss,
                "class_weights": None if weights is None else [float(w) for w in weights],
                "augment": job.fit.augment,
                "balanced_sampling": job.fit.balanced,
                "object_class": job.object_class,
                "seed": job.fit.seed,
                "validation_fraction": job.val_fraction,
                "train_tiles": len(train_idx),
                "val_tiles": len(val_idx),
                "train_pixels": [int(n) for n in counts],
                "labelled_pixels": [int(n) for n in class_counts(tiles, values)],
                "tiles_in_memory": preload,
                "init_model": os.path.basename(job.init_model) if job.init_model else "",
                "inputs": [os.path.basename(p) for p in job.images],
            },
        )
        save_model(output, meta, result.state_dict)
        return meta
    finally:
        for layer in layers:
            layer.dataset = None
        layers.clear()
        shutil.rmtree(workdir, ignore_errors=True)

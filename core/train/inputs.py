"""Train Model's inputs: rasters, labels (rasters or polygons), the class table, SAM checks.

Everything here runs before a tile is read, so a bad input fails fast and writes nothing.
"""

from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np

from ..errors import MapSegError
from ..io.raster import open_raster
from ..labels import classes as lab


def open_images(paths: Sequence[str]) -> list:
    """The input rasters, opened; they must share a band count."""
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


def label_layers(job, images: list, given: list, workdir: str, reporter) -> list:
    """One label layer per image: label rasters on the image's grid, or burnt polygons."""
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
        return _polygon_layers(job, images, given, workdir, reporter)
    raise MapSegError(
        "No labels were given: choose one label raster per input (LABELS) or a polygon layer "
        "with a class field (LABEL_POLYGONS, CLASS_FIELD)."
    )


def _polygon_layers(job, images: list, given: list, workdir: str, reporter) -> list:
    """The label polygons burnt onto each image's grid; text classes numbered if need be."""
    plan = lab.polygon_classes(job.polygons, job.class_field, given, job.polygon_layer)
    if plan.get("numbered"):
        listed = ", ".join(f"{v} {n}" for v, n in sorted(plan["names"].items()))
        reporter.info(
            f"The class field '{job.class_field}' holds text; its classes are numbered in "
            f"sorted order: {listed} (give CLASSES to choose the values)."
        )
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


def class_table(job, layers, found: List[int], given: list, init_meta, reporter) -> list:
    """The model's classes: the fine-tuned model's, or ``CLASSES`` / the labels' values with
    names and colours from the label layers."""
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
    if job.polygons and not given:
        _warn_empty_classes(names, found, reporter)
    table = lab.build_classes(values, given, names, colors)
    if len(table) < 2:
        raise MapSegError(
            f"Only one class ({values}) is labelled; a model needs at least two classes. Label "
            "some background too, or set BACKGROUND_VALUE so unlabelled ground becomes a class."
        )
    return table


def _warn_empty_classes(names: dict, found: List[int], reporter) -> None:
    """Say which of the polygons' text classes left no labelled pixel, rather than drop them
    silently."""
    empty = [f"{n} ({v})" for v, n in sorted(names.items()) if v not in found]
    if empty:
        reporter.warn(
            f"No labelled pixel of class(es) {', '.join(empty)} falls where the input rasters "
            "hold data (their polygons lie outside the rasters, over nodata, or cover no pixel "
            "centre), so the model leaves them out."
        )


def check_sam(job, bands: int) -> None:
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


def one_against_rest(job, tiles: list, found: List[int], given: list, layers: list):
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
        rest = [p for v, p in t.points.items() if v != obj]
        points = {0: np.concatenate(rest) if rest else None, 1: t.points.get(obj)}
        t.points = {v: p for v, p in points.items() if p is not None and len(p)}
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

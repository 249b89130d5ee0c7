"""Accuracy of a class raster against a reference raster or reference polygons.

Pixel scores come from a confusion matrix accumulated window by window
(``core.evaluate.metrics.ConfusionMatrix``), so any raster size streams in bounded memory, on
the prediction's grid: ``core.evaluate.reference`` puts the reference raster or polygons there.

Object scores (``core.evaluate.objects``) stream too: memory grows with the number of objects,
never with the pixel count.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.raster import (
    block_size,
    check_band,
    open_raster,
    raster_info,
    read_classes,
    read_window,
    valid_mask,
    windows,
)
from ..progress import Reporter
from .metrics import ConfusionMatrix, scores
from .objects import ObjectCounter, match_objects
from .reference import open_reference


@dataclass
class Evaluation:
    """Scores of one evaluation; ``objects`` is None unless an object class was scored."""

    values: List[int]
    scores: dict
    objects: dict | None = None
    notes: List[str] = field(default_factory=list)


def parse_ignore(text: str | None) -> List[int]:
    """``"0, 255"`` -> ``[0, 255]``."""
    out = []
    for part in re.split(r"[,;\s]+", (text or "").strip()):
        if not part:
            continue
        try:
            value = float(part)
            if not value.is_integer():
                raise ValueError
            out.append(int(value))
        except ValueError:
            raise MapSegError(
                f"Cannot read '{part}' in IGNORE_VALUES: give whole class values separated by "
                "commas, e.g. '0, 255'."
            ) from None
    return sorted(set(out))


def _as_classes(values: np.ndarray, what: str) -> np.ndarray:
    """Class values as int64; floats must hold whole numbers (a probability raster does not)."""
    if values.dtype.kind == "f":
        frac = values != np.floor(values)
        if frac.any():
            raise MapSegError(
                f"The {what} holds values that are not whole class values (e.g. "
                f"{values[frac][0]:g}). Give a class raster (one integer class value per pixel), "
                "not an image or a probability raster."
            )
    return values.astype(np.int64, copy=False)


class _Classes:
    """Class values met so far, in order of appearance, each with its confusion-matrix index."""

    def __init__(self) -> None:
        self.values: List[int] = []
        self.cm = ConfusionMatrix(0)

    def indices(self, values: np.ndarray) -> np.ndarray:
        new = np.setdiff1d(np.unique(values), np.asarray(self.values, dtype=np.int64))
        if new.size:
            k = len(self.values)
            self.values += [int(v) for v in new]
            grown = ConfusionMatrix(len(self.values))
            grown.matrix[:k, :k] = self.cm.matrix
            self.cm = grown
        known = np.asarray(self.values, dtype=np.int64)
        order = np.argsort(known)
        return order[np.searchsorted(known[order], values)]


def _object_state(object_class: int, width: int) -> tuple:
    """(class, predicted objects, reference objects, overlap counts) for one read."""
    return int(object_class), ObjectCounter(width), ObjectCounter(width), []


def _pass(
    pred_band, ref_band, pred_nodata, ref_nodata, ignore, wins, reporter, classes, objects
) -> int:
    """One read of both rasters: confusion matrix (``classes``) and/or objects."""
    pixels = 0
    for i, win in enumerate(wins):
        p = read_window(pred_band, win)
        r = read_window(ref_band, win)
        valid = valid_mask(p, pred_nodata) & valid_mask(r, ref_nodata)
        if ignore:
            valid &= ~np.isin(p, ignore) & ~np.isin(r, ignore)
        pv = _as_classes(p[valid], "prediction")
        rv = _as_classes(r[valid], "reference")
        pixels += pv.size
        if classes is not None and pv.size:
            both = classes.indices(np.concatenate([rv, pv]))
            classes.cm.update(both[: rv.size], both[rv.size :])
        if objects is not None:
            cls, pc, rc, overlaps = objects
            pid = pc.add(valid & (p == cls), win)
            rid = rc.add(valid & (r == cls), win)
            keep = (pid > 0) & (rid > 0)
            if keep.any():
                pairs, counts = np.unique(
                    np.stack([pid[keep], rid[keep]], axis=1), axis=0, return_counts=True
                )
                overlaps.append(np.column_stack([pairs, counts]))
        reporter.fraction((i + 1) / len(wins))
    return pixels


def _check_arguments(reference, polygons, object_iou: float) -> None:
    if bool(reference) == bool(polygons):
        raise MapSegError(
            "Give exactly one reference: a reference raster (REFERENCE) or reference polygons "
            "(REFERENCE_POLYGONS with CLASS_FIELD)" + (", not both." if reference else ".")
        )
    if not 0.0 < object_iou <= 1.0:
        raise MapSegError(f"OBJECT_IOU_THRESHOLD must be in (0, 1]; got {object_iou}.")


def _score_pixels(read, wins, object_class, width, ignore, reporter):
    """The first read: the confusion matrix, and objects when ``object_class`` is given."""
    classes = _Classes()
    objects = _object_state(object_class, width) if object_class is not None else None
    first = reporter.sub(0.0, 1.0 if object_class is not None else 0.5)
    pixels = _pass(*read, ignore, wins, first, classes, objects)
    if pixels == 0:
        raise MapSegError(
            "No pixel has data in both the prediction and the reference (after nodata and "
            f"IGNORE_VALUES {ignore or '(none)'}): there is nothing to evaluate. Check that "
            "the reference covers the prediction and that not every class is ignored."
        )
    return classes, objects


def _score_objects_of_two_classes(read, wins, values, width, ignore, reporter, notes):
    """Objects of the larger class of a two-class map (a second read), else None."""
    if len(values) != 2:
        notes.append(
            f"{len(values)} classes: no object scores (set OBJECT_CLASS to score objects)."
        )
        return None
    notes.append(f"Two classes {values}: objects are regions of class {values[1]}.")
    objects = _object_state(values[1], width)
    _pass(*read, ignore, wins, reporter.sub(0.5, 1.0), None, objects)
    return objects


def _result(classes: _Classes, objects, names, object_iou: float, notes) -> Evaluation:
    values = sorted(classes.values)
    order = np.argsort(classes.values)
    matrix = classes.cm.matrix[np.ix_(order, order)]
    labels = [names.get(v) or f"class {v}" for v in values]
    result = Evaluation(values, scores(matrix, labels), notes=notes)
    if objects is not None:
        result.objects = match_objects(objects[1], objects[2], objects[3], object_iou)
        result.objects["class"] = int(objects[0])
        result.objects["iou_threshold"] = float(object_iou)
    return result


@engine_call
def evaluate_segmentation(
    prediction: str,
    reference: str | None = None,
    polygons: str | None = None,
    polygon_layer: str | None = None,
    class_field: str | None = None,
    prediction_band: int = 1,
    reference_band: int = 1,
    ignore: Sequence[int] = (),
    object_class: int | None = None,
    object_iou: float = 0.5,
    reporter: Reporter | None = None,
    block: Tuple[int, int] | None = None,
) -> Evaluation:
    """Score ``prediction`` against a reference raster or polygons on the prediction's grid.

    Without ``object_class``, object scores are computed (in a second read) only for two-class
    maps, with the larger class value as the object class.
    """
    reporter = reporter or Reporter()
    _check_arguments(reference, polygons, object_iou)
    pred = open_raster(prediction)
    pred_band = check_band(pred, prediction_band, "prediction raster")
    pinfo = raster_info(pred)
    names = read_classes(pred_band)[1]
    ignore = list(ignore)
    notes: List[str] = []
    with tempfile.TemporaryDirectory(prefix="mapseg_eval_") as workdir:
        ref, rb, ref_names = open_reference(
            reference, reference_band, polygons, polygon_layer, class_field, pred, workdir,
            reporter, pred_band,
        )  # fmt: skip
        names = {**ref_names, **names}
        ref_band = ref.GetRasterBand(rb)
        wins = list(windows(pinfo.width, pinfo.height, *(block or block_size(pred))))
        read = (pred_band, ref_band, pinfo.nodata[prediction_band - 1], ref_band.GetNoDataValue())
        classes, objects = _score_pixels(read, wins, object_class, pinfo.width, ignore, reporter)
        if object_class is None:
            values = sorted(classes.values)
            objects = _score_objects_of_two_classes(
                read, wins, values, pinfo.width, ignore, reporter, notes
            )
        reporter.fraction(1.0)
    return _result(classes, objects, names, object_iou, notes)


TABLE_FIELDS = (
    "class_value",
    "class_name",
    "iou",
    "precision",
    "recall",
    "f1",
    "reference_pixels",
    "predicted_pixels",
)


def table_rows(result: Evaluation) -> List[dict]:
    """One row per class (the OUTPUT_TABLE), in class value order."""
    predicted = np.asarray(result.scores["confusion"], dtype=np.int64).sum(axis=0)
    return [
        {
            "class_value": int(value),
            "class_name": c["name"],
            "iou": c["iou"],
            "precision": c["precision"],
            "recall": c["recall"],
            "f1": c["f1"],
            "reference_pixels": c["support"],
            "predicted_pixels": int(predicted[i]),
        }
        for i, (value, c) in enumerate(zip(result.values, result.scores["per_class"]))
    ]

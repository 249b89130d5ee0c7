"""Accuracy of a class raster against a reference raster or reference polygons.

Pixel scores come from a confusion matrix accumulated window by window
(``core.evaluate.metrics.ConfusionMatrix``), so any raster size streams in bounded memory. The
reference is first put on the prediction's grid: a raster on another grid is resampled with
nearest neighbour into an in-memory warped VRT (read lazily, window by window), polygons are
burnt with ``gdal.Rasterize`` into a temporary tiled GeoTIFF (GDAL reprojects them from their
own CRS).

Object scores (``core.evaluate.objects``) stream too: memory grows with the number of objects,
never with the pixel count.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr, osr

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.raster import (
    block_size,
    check_band,
    open_raster,
    raster_info,
    read_classes,
    read_window,
    same_grid,
    scratch_raster,
    valid_mask,
    windows,
)
from ..progress import Reporter
from .metrics import ConfusionMatrix, scores
from .objects import ObjectCounter, match_objects

NO_CLASS = -(2**31)  # burnt where no polygon lies: never a class value


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


def _extent(info) -> Tuple[float, float, float, float]:
    gt, w, h = info.geotransform, info.width, info.height
    xs = [gt[0] + gt[1] * c + gt[2] * r for c, r in ((0, 0), (w, 0), (0, h), (w, h))]
    ys = [gt[3] + gt[4] * c + gt[5] * r for c, r in ((0, 0), (w, 0), (0, h), (w, h))]
    return min(xs), min(ys), max(xs), max(ys)


def _to_srs(bounds, src: osr.SpatialReference | None, dst: osr.SpatialReference | None):
    if src is None or dst is None or src.IsSame(dst):
        return bounds
    ct = osr.CoordinateTransformation(src, dst)
    return ct.TransformBounds(*bounds, 21)


def _check_overlap(ref_bounds, pred_info, what: str) -> None:
    px = _extent(pred_info)
    if ref_bounds[0] >= px[2] or ref_bounds[2] <= px[0]:
        overlap = False
    else:
        overlap = not (ref_bounds[1] >= px[3] or ref_bounds[3] <= px[1])
    if not overlap:
        b = ", ".join(f"{v:.6g}" for v in ref_bounds)
        p = ", ".join(f"{v:.6g}" for v in px)
        raise MapSegError(
            f"The {what} does not overlap the prediction: its extent ({b}) and the prediction's "
            f"({p}, in the prediction's CRS) share no area. Check that both cover the same place "
            "and that their CRSs are set correctly."
        )


def align_reference(
    ref: gdal.Dataset, band: int, pred: gdal.Dataset, reporter: Reporter
) -> Tuple[gdal.Dataset, int]:
    """``(dataset, band)`` holding the reference band on the prediction's grid."""
    ri, pi = raster_info(ref), raster_info(pred)
    if same_grid(ri, pi):
        return ref, band
    if not ri.georeferenced or not pi.georeferenced:
        raise MapSegError(
            f"The reference ({ri.width} x {ri.height}) and the prediction ({pi.width} x "
            f"{pi.height}) differ in size and one has no georeferencing, so they cannot be "
            "aligned. Give rasters of the same size, or georeferenced ones."
        )
    srs_r, srs_p = ri.srs(), pi.srs()
    _check_overlap(_to_srs(_extent(ri), srs_r, srs_p), pi, "reference raster")
    x0, y0, x1, y1 = _extent(pi)
    nodata = ri.nodata[band - 1]
    if (srs_r is None) != (srs_p is None):
        reporter.warn(
            "Only one of the prediction and the reference has a CRS: their coordinates are "
            "taken to be in the same CRS."
        )
    # GDAL 3.6's Warp has no band selection: a one-band VRT view first.
    one_band = gdal.Translate("", ref, format="VRT", bandList=[band])
    # Nearest neighbour only (averaging would invent classes); Float64 so NaN can mark "no
    # reference here" whatever the class values are.
    warped = gdal.Warp(
        "",
        one_band,
        format="VRT",
        dstSRS=pi.projection if (srs_r is not None and srs_p is not None) else None,
        outputBounds=(x0, y0, x1, y1),
        width=pi.width,
        height=pi.height,
        resampleAlg="near",
        srcNodata=nodata,
        dstNodata=float("nan"),
        outputType=gdal.GDT_Float64,
    )
    reporter.info(
        f"The reference ({ri.width} x {ri.height} pixels of {ri.pixel_size[0]:g} x "
        f"{ri.pixel_size[1]:g}) is not on the prediction's grid ({pi.width} x {pi.height} of "
        f"{pi.pixel_size[0]:g} x {pi.pixel_size[1]:g}): it was resampled onto the prediction's "
        "grid with nearest neighbour; prediction pixels it does not cover are not evaluated."
    )
    return warped, 1


def _check_class_field(layer: ogr.Layer, class_field: str) -> None:
    defn = layer.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if not class_field:
        raise MapSegError(
            "Reference polygons need CLASS_FIELD, the field holding each polygon's class value. "
            f"The layer's fields are: {', '.join(names) or '(none)'}."
        )
    if class_field not in names:
        raise MapSegError(
            f"The reference polygons have no field '{class_field}'. "
            f"Their fields are: {', '.join(names) or '(none)'}."
        )
    kind = defn.GetFieldDefn(names.index(class_field)).GetType()
    numeric = kind in (ogr.OFTInteger, ogr.OFTInteger64, ogr.OFTReal)
    layer.SetIgnoredFields([n for n in names if n != class_field] + ["OGR_GEOMETRY"])
    bad = []
    for feat in layer:
        value = feat.GetField(class_field)
        if value is None:
            continue
        try:
            ok = float(value).is_integer() and abs(float(value)) < 2**31 - 1
        except ValueError:
            ok = False
        if not ok and str(value) not in bad:
            bad.append(str(value))
            if len(bad) >= 5:
                break
    layer.SetIgnoredFields([])
    layer.ResetReading()
    if bad:
        what = "numbers that are not whole class values" if numeric else "text"
        raise MapSegError(
            f"The class field '{class_field}' holds {what} ({', '.join(bad)}), not class "
            "values. Choose a field of whole-number class values that match the prediction's "
            "values."
        )


def rasterize_reference(
    path: str, layer_name: str | None, class_field: str, pred: gdal.Dataset, workdir: str
) -> gdal.Dataset:
    """Burn the polygons' ``class_field`` onto the prediction's grid (temporary GeoTIFF)."""
    try:
        vds = gdal.OpenEx(path, gdal.OF_VECTOR)
    except RuntimeError as err:
        raise MapSegError(f"OGR cannot open the reference polygons '{path}': {err}") from None
    layer = vds.GetLayerByName(layer_name) if layer_name else vds.GetLayer(0)
    if layer is None:
        raise MapSegError(f"The reference polygons '{path}' have no layer '{layer_name}'.")
    _check_class_field(layer, class_field)
    pi = raster_info(pred)
    extent = layer.GetExtent()  # (minx, maxx, miny, maxy)
    bounds = (extent[0], extent[2], extent[1], extent[3])
    srs = layer.GetSpatialRef()
    if srs is not None:
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if layer.GetFeatureCount() == 0:
        raise MapSegError(f"The reference polygon layer '{path}' has no features.")
    _check_overlap(_to_srs(bounds, srs, pi.srs()), pi, "reference polygon layer")
    tmp = os.path.join(workdir, "reference.tif")
    ds = scratch_raster(tmp, pi, gdal.GDT_Int32, NO_CLASS)
    esc = class_field.replace('"', '""')
    try:
        gdal.Rasterize(
            ds, vds, layers=[layer.GetName()], attribute=class_field, where=f'"{esc}" IS NOT NULL'
        )
    except RuntimeError as err:
        raise MapSegError(f"Cannot rasterise the reference polygons '{path}': {err}") from None
    ds.FlushCache()
    return ds


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
    if bool(reference) == bool(polygons):
        raise MapSegError(
            "Give exactly one reference: a reference raster (REFERENCE) or reference polygons "
            "(REFERENCE_POLYGONS with CLASS_FIELD)" + (", not both." if reference else ".")
        )
    if not 0.0 < object_iou <= 1.0:
        raise MapSegError(f"OBJECT_IOU_THRESHOLD must be in (0, 1]; got {object_iou}.")
    pred = open_raster(prediction)
    pred_band = check_band(pred, prediction_band, "prediction raster")
    pinfo = raster_info(pred)
    names = read_classes(pred_band)[1]
    ignore = list(ignore)
    with tempfile.TemporaryDirectory(prefix="mapseg_eval_") as workdir:
        if reference:
            ref = open_raster(reference)
            check_band(ref, reference_band, "reference raster")
            names = {**read_classes(ref.GetRasterBand(reference_band))[1], **names}
            ref, rb = align_reference(ref, reference_band, pred, reporter)
        else:
            ref = rasterize_reference(polygons, polygon_layer, class_field, pred, workdir)
            rb = 1
        ref_band = ref.GetRasterBand(rb)
        bw, bh = block or block_size(pred)
        wins = list(windows(pinfo.width, pinfo.height, bw, bh))
        args = (pred_band, ref_band, pinfo.nodata[prediction_band - 1], ref_band.GetNoDataValue())
        classes = _Classes()
        objects = None
        if object_class is not None:
            objects = _object_state(object_class, pinfo.width)
        first = reporter.sub(0.0, 1.0 if object_class is not None else 0.5)
        pixels = _pass(*args, ignore, wins, first, classes, objects)
        if pixels == 0:
            raise MapSegError(
                "No pixel has data in both the prediction and the reference (after nodata and "
                f"IGNORE_VALUES {ignore or '(none)'}): there is nothing to evaluate. Check that "
                "the reference covers the prediction and that not every class is ignored."
            )
        values = sorted(classes.values)
        notes = []
        if object_class is None and len(values) == 2:
            object_class = values[1]
            notes.append(f"Two classes {values}: objects are regions of class {object_class}.")
            objects = _object_state(object_class, pinfo.width)
            _pass(*args, ignore, wins, reporter.sub(0.5, 1.0), None, objects)
        elif object_class is None:
            notes.append(
                f"{len(values)} classes: no object scores (set OBJECT_CLASS to score objects)."
            )
        reporter.fraction(1.0)
    order = np.argsort(classes.values)
    matrix = classes.cm.matrix[np.ix_(order, order)]
    labels = [names.get(v) or f"class {v}" for v in values]
    result = Evaluation(values, scores(matrix, labels), notes=notes)
    if objects is not None:
        result.objects = match_objects(objects[1], objects[2], objects[3], object_iou)
        result.objects["class"] = int(objects[0])
        result.objects["iou_threshold"] = float(object_iou)
    return result


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

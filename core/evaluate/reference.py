"""The reference on the prediction's grid: a reference raster aligned, or polygons burnt.

A raster on another grid is resampled with nearest neighbour into an in-memory warped VRT (read
lazily, window by window); polygons are burnt with ``gdal.Rasterize`` into a temporary tiled
GeoTIFF (GDAL reprojects them from their own CRS). Either way the evaluation reads the reference
window by window on the prediction's pixels, and a reference that does not overlap the
prediction is refused with both extents in the message.
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

from osgeo import gdal, ogr, osr

from ..errors import MapSegError
from ..io.raster import (
    check_band,
    open_raster,
    raster_info,
    read_classes,
    same_grid,
    scratch_raster,
)
from ..labels.classes import layer_texts, name_key, text_burns
from ..progress import Reporter

NO_CLASS = -(2**31)  # burnt where no polygon lies: never a class value


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


def _check_class_field(layer: ogr.Layer, class_field: str) -> bool:
    """The field exists and holds whole class values (False) or text (True)."""
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
    if kind not in (ogr.OFTInteger, ogr.OFTInteger64, ogr.OFTReal):
        return True
    layer.SetIgnoredFields([n for n in names if n != class_field] + ["OGR_GEOMETRY"])
    bad = []
    for feat in layer:
        value = feat.GetField(class_field)
        whole = value is None or (float(value).is_integer() and abs(value) < 2**31 - 1)
        if not whole and str(value) not in bad:
            bad.append(str(value))
            if len(bad) >= 5:
                break
    layer.SetIgnoredFields([])
    layer.ResetReading()
    if bad:
        raise MapSegError(
            f"The class field '{class_field}' holds numbers that are not whole class values "
            f"({', '.join(bad)}), not class values. Choose a field of whole-number class values "
            "that match the prediction's values."
        )
    return False


def _text_burns(layer: ogr.Layer, class_field: str, pred_band, reporter: Reporter):
    """(burns, {value: text}) for a text class field: each text takes the value of the
    prediction's class of that name (ignoring case and surrounding spaces); a text naming no
    class gets a value above every prediction value, so it is scored as a class never
    predicted. Blank texts are no class."""
    texts = layer_texts(layer, class_field)
    names = read_classes(pred_band)[1] if pred_band is not None else {}
    by_name = {name_key(n): v for v, n in names.items() if n.strip()}
    missing = {name_key(t): t.strip() for t in sorted(texts) if name_key(t) not in by_name}
    if missing and len(missing) == len({name_key(t) for t in texts}):
        known = ", ".join(f"{v} {n}" for v, n in sorted(names.items())) or "none"
        raise MapSegError(
            f"The class field '{class_field}' holds text ({', '.join(list(missing.values())[:5])}) "
            f"that matches none of the prediction's class names ({known}). Name the polygons' "
            "classes as the prediction does (Segment Raster writes the model's class names), or "
            "choose a field of whole-number class values."
        )
    if missing:
        try:
            top = max([*names, int(pred_band.ComputeRasterMinMax(False)[1])])
        except RuntimeError:  # every pixel nodata: nothing will be scored anyway
            top = max(names)
        extra = {k: top + 1 + i for i, k in enumerate(sorted(missing))}
        reporter.warn(
            f"The reference class(es) {', '.join(missing.values())} are none of the "
            "prediction's class names: scored as classes the prediction never predicts (values "
            f"{', '.join(str(v) for v in extra.values())}). Check their spelling if they are "
            "meant to be one of the prediction's classes."
        )
        by_name.update(extra)

    def value_of(text: str) -> int:
        return by_name[name_key(text)]

    return text_burns(class_field, texts, value_of), {value_of(t): t.strip() for t in texts}


def rasterize_reference(
    path: str,
    layer_name: str | None,
    class_field: str,
    pred: gdal.Dataset,
    workdir: str,
    pred_band: gdal.Band | None = None,
    reporter: Reporter | None = None,
) -> Tuple[gdal.Dataset, Dict[int, str]]:
    """Burn the polygons' ``class_field`` onto the prediction's grid (temporary GeoTIFF); a
    text field's texts take the values of ``pred_band``'s class names. Returns the dataset and
    the names of the burnt text classes."""
    try:
        vds = gdal.OpenEx(path, gdal.OF_VECTOR)
    except RuntimeError as err:
        raise MapSegError(f"OGR cannot open the reference polygons '{path}': {err}") from None
    layer = vds.GetLayerByName(layer_name) if layer_name else vds.GetLayer(0)
    if layer is None:
        raise MapSegError(f"The reference polygons '{path}' have no layer '{layer_name}'.")
    text = _check_class_field(layer, class_field)
    burns, names = (
        _text_burns(layer, class_field, pred_band, reporter or Reporter()) if text else (None, {})
    )
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
        if burns is None:
            where = f'"{esc}" IS NOT NULL'
            gdal.Rasterize(ds, vds, layers=[layer.GetName()], attribute=class_field, where=where)
        for where, value in burns or ():
            gdal.Rasterize(ds, vds, layers=[layer.GetName()], where=where, burnValues=[value])
    except RuntimeError as err:
        raise MapSegError(f"Cannot rasterise the reference polygons '{path}': {err}") from None
    ds.FlushCache()
    return ds, names


def open_reference(
    reference: str | None,
    reference_band: int,
    polygons: str | None,
    polygon_layer: str | None,
    class_field: str | None,
    pred: gdal.Dataset,
    workdir: str,
    reporter: Reporter,
    pred_band: gdal.Band | None = None,
) -> Tuple[gdal.Dataset, int, Dict[int, str]]:
    """(dataset, band) of the reference on the prediction's grid, and the reference's class
    names; polygons are burnt into ``workdir`` (text classes by ``pred_band``'s names)."""
    if not reference:
        ds, names = rasterize_reference(
            polygons, polygon_layer, class_field, pred, workdir, pred_band, reporter
        )
        return ds, 1, names
    ref = open_raster(reference)
    check_band(ref, reference_band, "reference raster")
    names = read_classes(ref.GetRasterBand(reference_band))[1]
    return (*align_reference(ref, reference_band, pred, reporter), names)

"""Pseudo-label From Points: a few clicked points per class -> a partial label raster."""

from __future__ import annotations

import json

from qgis.core import (
    QgsCoordinateTransform,
    QgsCsException,
    QgsProcessingException,
)
from qgis.PyQt.QtCore import QVariant

from ..core.errors import MapSegError
from ..core.labels.classes import point_classes
from . import params as P
from .base import MapSegAlgorithm

METHODS = ["slic", "felzenszwalb", "watershed"]  # watershed: compact watershed
COUNTS = {
    "POINTS_USED": "Points used",
    "POINTS_OUTSIDE": "Points outside the raster",
    "POINTS_ON_NODATA": "Points on nodata pixels",
    "CONFLICTING_SUPERPIXELS": "Superpixels with conflicting points",
    "LABELLED_FRACTION": "Fraction of the raster labelled",
}


def _is_null(value) -> bool:
    return value is None or (isinstance(value, QVariant) and value.isNull())


class PseudolabelFromPoints(MapSegAlgorithm):
    NAME = "pseudolabelfrompoints"
    DISPLAY = "Pseudo-label From Points"
    GROUP = "Deep learning"
    REQUIRES = ("skimage",)

    INPUT = "INPUT"
    POINTS = "POINTS"
    CLASS_FIELD = "CLASS_FIELD"
    METHOD = "METHOD"
    SUPERPIXEL_SIZE = "SUPERPIXEL_SIZE"
    COMPACTNESS = "COMPACTNESS"
    OUTPUT = "OUTPUT"
    OUTPUT_SUPERPIXELS = "OUTPUT_SUPERPIXELS"

    def parameters(self) -> list:
        return [
            P.raster(self.INPUT, "Input raster"),
            P.features(self.POINTS, "Labelled points", P.POINTS),
            P.field(
                self.CLASS_FIELD,
                "Class field (integer classes, or text classes numbered 1, 2, ...)",
                self.POINTS,
                optional=False,
            ),
            P.choice(self.METHOD, "Superpixel method", METHODS),
            P.integer(self.SUPERPIXEL_SIZE, "Superpixel size (pixels across)", 20, minimum=2),
            P.advanced(
                P.double(
                    self.COMPACTNESS,
                    "Compactness (SLIC, watershed: higher = more regular superpixels)",
                    0.3,
                    minimum=0.001,
                )
            ),
            P.raster_out(self.OUTPUT, "Pseudo-labels"),
            P.raster_out(self.OUTPUT_SUPERPIXELS, "Superpixels", optional=True),
            *[P.number_out(name, label) for name, label in COUNTS.items()],
            P.string_out("CLASS_SUMMARY", "Per-class summary (JSON)"),
        ]

    # -- reading the points ----------------------------------------------------------------

    def _points(self, parameters, context, feedback, raster_crs):
        source = self.parameterAsSource(parameters, self.POINTS, context)
        if source is None:
            raise QgsProcessingException("The points layer (POINTS) could not be loaded.")
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        index = source.fields().lookupField(field)
        if index < 0:
            names = ", ".join(source.fields().names()) or "(none)"
            raise QgsProcessingException(
                f"The points layer has no field '{field}'. Choose CLASS_FIELD among: {names}."
            )
        text = source.fields().at(index).type() == QVariant.String
        src_crs = source.sourceCrs()
        if not src_crs.isValid() or not raster_crs.isValid():
            which = "points layer" if not src_crs.isValid() else "input raster"
            raise QgsProcessingException(
                f"The {which} has no coordinate reference system, so the points cannot be "
                "placed on the raster. Set its CRS (Layer Properties > Source) and run again."
            )
        xform = QgsCoordinateTransform(src_crs, raster_crs, context.transformContext())
        xs, ys, values = [], [], []
        no_class = failed = 0
        for feature in source.getFeatures():
            if feedback is not None and feedback.isCanceled():
                break
            value = feature.attribute(index)
            geom = feature.geometry()
            if _is_null(value) or (text and not str(value).strip()):
                no_class += 1
                continue
            if geom is None or geom.isEmpty():
                continue
            for vertex in geom.vertices():
                try:
                    pt = xform.transform(vertex.x(), vertex.y())
                except QgsCsException:
                    failed += 1  # cannot be placed on the raster: counted as outside
                    continue
                xs.append(pt.x())
                ys.append(pt.y())
                values.append(str(value).strip() if text else value)
        if not values and failed:
            raise QgsProcessingException(
                f"None of the {failed} points could be reprojected from the points layer's CRS "
                f"({src_crs.authid() or src_crs.description()}) to the raster's CRS "
                f"({raster_crs.authid() or raster_crs.description()}). Check that the points "
                "layer has the right CRS (a layer saved without one gets a default)."
            )
        if not values:
            raise QgsProcessingException(
                f"The class field '{field}' holds no values on any point ({no_class} points "
                "have none). Fill in a class for each point."
            )
        try:
            classes, names = point_classes(values, text)
        except MapSegError as err:
            raise QgsProcessingException(f"The class field '{field}' {err}") from None
        return xs, ys, classes, names, no_class, failed

    def process(self, parameters, context, feedback):
        from ..core.io.raster import check_destination
        from ..core.labels.classes import palette
        from ..core.labels.pseudolabel import class_summary, pseudo_label

        size = self.parameterAsInt(parameters, self.SUPERPIXEL_SIZE, context)
        compactness = self.parameterAsDouble(parameters, self.COMPACTNESS, context)
        method = self.choice(parameters, self.METHOD, context)
        if size < 2:
            raise QgsProcessingException(f"SUPERPIXEL_SIZE must be at least 2 pixels (got {size}).")
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        src = self.raster_source(parameters, self.INPUT, context)
        xs, ys, classes, names, no_class, failed = self._points(
            parameters, context, feedback, layer.crs()
        )
        dest = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        sp_dest = self.parameterAsOutputLayer(parameters, self.OUTPUT_SUPERPIXELS, context)
        dest = check_destination(dest, [src])
        sp_dest = check_destination(sp_dest, [src, dest]) if sp_dest else None
        if no_class:
            feedback.pushInfo(f"{no_class} point(s) without a class value were skipped.")
        values = sorted(names)
        colors = dict(zip(values, palette(len(values))))
        result = pseudo_label(
            src,
            xs,
            ys,
            classes,
            dest,
            method=method,
            size=size,
            compactness=compactness,
            class_names=names,
            colors=colors,
            superpixels_dest=sp_dest,
            reporter=self.reporter(feedback),
        )
        outside = result["points_outside"] + failed
        summary = class_summary(result, names)
        self._log(feedback, result, summary, outside)
        return {
            self.OUTPUT: dest,
            self.OUTPUT_SUPERPIXELS: sp_dest,
            "POINTS_USED": result["points_used"],
            "POINTS_OUTSIDE": outside,
            "POINTS_ON_NODATA": result["points_on_nodata"],
            "CONFLICTING_SUPERPIXELS": result["conflicting_superpixels"],
            "LABELLED_FRACTION": result["labelled_fraction"],
            "CLASS_SUMMARY": json.dumps(summary),
        }

    @staticmethod
    def _log(feedback, result: dict, summary: list, outside: int) -> None:
        for c in summary:
            feedback.pushInfo(
                f"Class {c['value']} '{c['name']}': {c['points']} points, {c['pixels']} pixels "
                f"({100 * c['fraction_of_raster']:.3g}% of the raster, "
                f"{100 * c['fraction_of_labels']:.3g}% of the labelled pixels)."
            )
        feedback.pushInfo(
            f"Points used: {result['points_used']}; outside the raster: {outside}; on nodata: "
            f"{result['points_on_nodata']}; superpixels with conflicting points: "
            f"{result['conflicting_superpixels']}. Labelled: "
            f"{100 * result['labelled_fraction']:.3g}% of the raster (nodata "
            f"{result['nodata']} = unlabelled); {result['pixels_segmented']} pixels segmented "
            f"in {result['windows']} window(s)."
        )

"""Segment With SAM: Segment Anything prompted by points or boxes from a vector layer."""

from __future__ import annotations

from qgis.core import (
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeatureRequest,
    QgsProcessingException,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from . import params as P
from .sam_base import SamAlgorithm


def ogr_type(field) -> int:
    from osgeo import ogr

    if field.type() in (QVariant.Int, QVariant.UInt, QVariant.Bool):
        return ogr.OFTInteger
    if field.type() in (QVariant.LongLong, QVariant.ULongLong):
        return ogr.OFTInteger64
    if field.type() == QVariant.Double:
        return ogr.OFTReal
    return ogr.OFTString


def plain(value, kind: int):
    """A QGIS attribute as a value OGR takes (NULL -> None)."""
    from osgeo import ogr

    if value is None or (isinstance(value, QVariant) and value.isNull()):
        return None
    if kind in (ogr.OFTInteger, ogr.OFTInteger64):
        return int(value)
    if kind == ogr.OFTReal:
        return float(value)
    return str(value)


def _prompt_geometry(feature, transform, feedback):
    """The feature's geometry in the raster's CRS, or None (skipped, with a warning)."""
    geom = feature.geometry()
    if geom is None or geom.isEmpty():
        feedback.pushWarning(f"Feature {feature.id()} has no geometry and was skipped.")
        return None
    if transform is not None:
        try:
            geom.transform(transform)
        except QgsCsException as err:
            feedback.pushWarning(
                f"Feature {feature.id()} cannot be reprojected to the raster's CRS ({err}) and "
                "was skipped."
            )
            return None
    return geom


def _add_points(prompts: list, groups: dict, key, value, geom, label: int) -> None:
    """The points of ``geom`` join the prompt of group ``key`` (a new prompt without one)."""
    from ..core.sam.prompts import Prompt

    prompt = groups.get(key) if key is not None else None
    if prompt is None:
        prompt = Prompt(len(prompts) + 1, value=value, group=key)
        prompts.append(prompt)
        if key is not None:
            groups[key] = prompt
    points = [(p.x(), p.y()) for p in geom.vertices()]
    prompt.points += points
    prompt.labels += [label] * len(points)


class SegmentWithSam(SamAlgorithm):
    NAME = "segmentwithsam"
    DISPLAY = "Segment With SAM"

    PROMPTS = "PROMPTS"
    LABEL_FIELD = "LABEL_FIELD"
    GROUP_FIELD = "GROUP_FIELD"
    CLASS_FIELD = "CLASS_FIELD"
    MODEL = "MODEL"
    OUTPUT_RASTER = "OUTPUT_RASTER"

    def parameters(self) -> list:
        return [
            P.raster(self.INPUT, "Input raster"),
            P.features(
                self.PROMPTS, "Prompts (points, or polygons as boxes)", P.POINTS + P.POLYGONS
            ),
            P.field(
                self.LABEL_FIELD, "Label field (1 foreground, 0 background)", self.PROMPTS, True
            ),
            P.field(self.GROUP_FIELD, "Group field (one prompt per value)", self.PROMPTS),
            P.field(self.CLASS_FIELD, "Class field (copied to the output)", self.PROMPTS),
            *self.sam_inputs(),
            P.file_in(
                self.MODEL,
                "Fine-tuned SAM model (.pt from Train Model; empty: the checkpoint's decoder)",
                "MapSeg model (*.pt)",
            ),
            self.processing_pixel_size(),
            P.polygons_out(self.OUTPUT, "SAM masks"),
            P.raster_out(
                self.OUTPUT_RASTER, "Mask raster (prompt ids on the input grid)", optional=True
            ),
        ]

    def prompts(self, parameters, context, feedback, raster_crs):
        """Prompts in the raster's CRS: one per point feature or group, one box per polygon."""
        from osgeo import ogr

        from ..core.sam.prompts import Prompt

        source = self.parameterAsSource(parameters, self.PROMPTS, context)
        if source is None:
            raise QgsProcessingException("The prompt layer could not be loaded.")
        names = {
            key: self.parameterAsString(parameters, key, context) or ""
            for key in (self.LABEL_FIELD, self.GROUP_FIELD, self.CLASS_FIELD)
        }
        fields = source.fields()
        class_type = None
        if names[self.CLASS_FIELD]:
            class_type = ogr_type(fields.field(fields.indexOf(names[self.CLASS_FIELD])))
        transform = None
        crs = source.sourceCrs()
        if crs.isValid() and raster_crs.isValid() and crs != raster_crs:
            transform = QgsCoordinateTransform(crs, raster_crs, context.transformContext())
            feedback.pushInfo(f"Prompts reprojected from {crs.authid()} to {raster_crs.authid()}.")
        is_point = QgsWkbTypes.geometryType(source.wkbType()) == QgsWkbTypes.PointGeometry
        prompts, groups = [], {}
        for feature in source.getFeatures(QgsFeatureRequest()):
            geom = _prompt_geometry(feature, transform, feedback)
            if geom is None:
                continue
            value = None
            if class_type is not None:
                value = plain(feature[names[self.CLASS_FIELD]], class_type)
            if not is_point:
                box = geom.boundingBox()
                box = (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum())
                prompts.append(Prompt(len(prompts) + 1, box=box, value=value))
                continue
            label = 1
            if names[self.LABEL_FIELD]:
                raw = plain(feature[names[self.LABEL_FIELD]], ogr.OFTReal)
                label = 1 if raw is None else int(raw != 0)
            group = names[self.GROUP_FIELD]
            key = plain(feature[group], ogr.OFTString) if group else None
            _add_points(prompts, groups, key, value, geom, label)
        return prompts, class_type, bool(names[self.GROUP_FIELD])

    def process(self, parameters, context, feedback):
        from ..core.io.vector import split_destination
        from ..core.sam.prompts import segment_with_prompts

        source = self.raster_source(parameters, self.INPUT, context)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        prompts, class_type, grouped = self.prompts(parameters, context, feedback, layer.crs())
        if not prompts:
            raise QgsProcessingException("The prompt layer has no feature to segment.")
        sam, _ = self.load_sam(parameters, context, feedback, self.MODEL)
        output, layer_name = split_destination(
            self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        )
        raster = self.optional_output(parameters, self.OUTPUT_RASTER, context)
        pixel = self.parameterAsDouble(parameters, self.PROCESSING_PIXEL_SIZE, context)
        stats = segment_with_prompts(
            source,
            prompts,
            sam,
            output,
            raster,
            bands=self.parameterAsInts(parameters, self.BANDS, context) or None,
            pixel_size=pixel or None,
            class_type=class_type,
            with_group=grouped,
            layer_name=layer_name,
            reporter=self.reporter(feedback),
        )
        feedback.pushInfo(
            f"{stats['features']} mask(s) from {stats['prompts']} prompt(s) "
            f"({stats['skipped']} skipped), {stats['windows']} image embedding(s)."
        )
        return {self.OUTPUT: output, self.OUTPUT_RASTER: raster}

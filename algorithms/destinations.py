"""Vector destinations as QGIS's own algorithms treat them, and styles applied on load.

The engine writes files (``core.io.outputs``): a file path, a GeoPackage layer given as
``ogr:dbname='x.gpkg' table="name"`` or ``x.gpkg|layername=name``. Processing may also pass
``memory:`` (a script asking for a memory layer); the engine then writes a temporary GeoPackage
and the result becomes a memory layer in the context's temporary layer store, as QGIS's native
algorithms return it.

Every output carries its default style (a ``.qml`` beside the file, or the GeoPackage's
``layer_styles``), which QGIS applies whenever it opens the file. ``load_default_style`` makes
the layer the dialog loads on completion apply it too.
"""

from __future__ import annotations

import contextlib

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFeatureRequest,
    QgsMapLayer,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingUtils,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant

_INTEGER_TYPES = (QVariant.Int, QVariant.LongLong, QVariant.UInt, QVariant.ULongLong)
# Post-processors must outlive processAlgorithm (QGIS holds no Python reference to them).
_POST_PROCESSORS: dict = {}


def is_memory(dest: str | None) -> bool:
    return bool(dest) and dest.startswith("memory:")


def vector_destination(alg, parameters, name: str, context) -> tuple:
    """(destination Processing gave, destination the engine writes) for vector output
    ``name``, (None, None) when not asked for; ``memory:`` becomes a temporary GeoPackage."""
    requested = alg.parameterAsOutputLayer(parameters, name, context) or None
    if is_memory(requested):
        return requested, QgsProcessingUtils.generateTempFilename(f"{name.lower()}.gpkg")
    return requested, requested


def output_value(context, requested: str | None, written: str | None, label: str = "output"):
    """The value of an output written to ``written`` (a file or ``x.gpkg|layername=name``):
    the layer the dialog loads gets the file's default style; a ``memory:`` request becomes
    a styled memory layer in the context's temporary layer store (its id is the value)."""
    if not requested or not written:
        return written
    if is_memory(requested):
        return _memory_copy(context, written, requested[len("memory:") :] or label)
    if written != requested and context.willLoadLayerOnCompletion(requested):
        # QGIS loads what the key says: make it the written layer, not the ogr: request.
        layers = context.layersToLoadOnCompletion()
        layers[written] = layers.pop(requested)
        context.setLayersToLoadOnCompletion(layers)
    if context.willLoadLayerOnCompletion(written):
        styler = DefaultStyle()
        _POST_PROCESSORS[written] = styler
        context.layerToLoadOnCompletionDetails(written).setPostProcessor(styler)
    return written


def load_default_styles(context, results: dict) -> dict:
    """Every output the dialog loads on completion applies its file's default style (rasters
    too: Processing loads layers without it); ``output_value`` did it for some already."""
    for value in (results or {}).values():
        if not isinstance(value, str) or not context.willLoadLayerOnCompletion(value):
            continue
        details = context.layerToLoadOnCompletionDetails(value)
        if details.postProcessor() is None:
            styler = DefaultStyle()
            _POST_PROCESSORS[value] = styler
            details.setPostProcessor(styler)
    return results


def _memory_copy(context, uri: str, name: str) -> str:
    layer = QgsVectorLayer(uri, name, "ogr")
    memory = layer.materialize(QgsFeatureRequest())
    memory.setName(name)
    if layer.renderer() is not None:
        memory.setRenderer(layer.renderer().clone())
    context.temporaryLayerStore().addMapLayer(memory)
    return memory.id()


class DefaultStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies the file's default style (what a fresh QGIS session shows) to the loaded layer."""

    def postProcessLayer(self, layer, context, feedback):
        if isinstance(layer, QgsMapLayer):
            _, ok = layer.loadDefaultStyle()
            if ok:
                if isinstance(layer, QgsVectorLayer):
                    _typed_categories(layer)
                layer.triggerRepaint()


def _typed_categories(layer: QgsVectorLayer) -> None:
    """A style file stores category values as text; give them the field's numeric type, so
    the renderer holds what the attribute table shows (1, not '1')."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsCategorizedSymbolRenderer):
        return
    index = layer.fields().indexOf(renderer.classAttribute())
    if index < 0 or not layer.fields().at(index).isNumeric():
        return
    kind = int if layer.fields().at(index).type() in _INTEGER_TYPES else float
    for i, category in enumerate(renderer.categories()):
        # a category such as the empty "all other values" stays as it is
        with contextlib.suppress(TypeError, ValueError):
            renderer.updateCategoryValue(i, kind(category.value()))

"""Startup script for QGIS desktop (``qgis --code``), run by tests/test_desktop.py.

Inside a real QGIS window with the plugin installed, it runs each step of the plan that the test
wrote (``$MAPSEG_DESKTOP_PLAN``: algorithm or Modeler model, parameters) the way the Processing
dialog does (``processing.runAndLoadResults``: outputs loaded into the project, layer
post-processors applied), then opens every written file again as a fresh layer (what the
browser, drag and drop or a later session gives), records renderer types and legend entries of
both, and saves a screenshot of the main window per step under ``$MAPSEG_SCREENSHOTS``. It also
records the MapSeg part of the Processing Toolbox tree. Everything lands in
``$MAPSEG_DESKTOP_RESULT`` (JSON), then QGIS exits. No assertion here: the test judges.
"""

from __future__ import annotations

import json
import os
import traceback

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayer,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, QTimer
from qgis.utils import iface, plugins

PLAN = os.environ["MAPSEG_DESKTOP_PLAN"]
RESULT = os.environ["MAPSEG_DESKTOP_RESULT"]
SCREENSHOTS = os.environ["MAPSEG_SCREENSHOTS"]


def log(message: str) -> None:
    """Progress beside the result, so a crash of QGIS itself shows where it happened."""
    with open(RESULT + ".log", "a", encoding="utf-8") as f:
        f.write(message + "\n")


def raster_style(layer: QgsRasterLayer) -> dict:
    renderer = layer.renderer()
    info = {"kind": "raster", "valid": layer.isValid(), "renderer": renderer.type()}
    info["legend"] = [label for label, _ in renderer.legendSymbologyItems()]
    if renderer.type() == "paletted":
        info["classes"] = [[c.value, c.label] for c in renderer.classes()]
    if renderer.type() == "singlebandpseudocolor":
        shader = renderer.shader().rasterShaderFunction()
        info["ramp"] = [renderer.classificationMin(), renderer.classificationMax()]
        info["ramp_items"] = len(shader.colorRampItemList())
    stats = layer.dataProvider().bandStatistics(1)
    info["data_range"] = [stats.minimumValue, stats.maximumValue]
    return info


def vector_style(layer: QgsVectorLayer) -> dict:
    renderer = layer.renderer()
    info = {"kind": "vector", "valid": layer.isValid(), "features": layer.featureCount()}
    if renderer is None:  # a table without geometry
        return dict(info, renderer=None, legend=[])
    info["renderer"] = renderer.type()
    info["legend"] = [item.label() for item in renderer.legendSymbolItems()]
    if renderer.type() in ("categorizedSymbol", "graduatedSymbol"):
        info["field"] = renderer.classAttribute()
    if renderer.type() == "categorizedSymbol":
        info["categories"] = [[str(c.value()), c.label()] for c in renderer.categories()]
    if renderer.type() == "singleSymbol":
        symbol = renderer.symbol()
        info["fill_alpha"] = symbol.color().alpha() if symbol is not None else None
    labeling = layer.labeling()
    info["labels"] = bool(layer.labelsEnabled() and labeling is not None)
    if info["labels"]:
        info["label_field"] = labeling.settings().fieldName
    return info


def style_of(layer: QgsMapLayer) -> dict:
    if isinstance(layer, QgsRasterLayer):
        return raster_style(layer)
    return vector_style(layer)


def fresh_layer(uri: str, name: str) -> QgsMapLayer:
    """The written file opened as a new layer: its default style comes from the file."""
    base = uri.split("|")[0]
    if base.lower().endswith((".tif", ".tiff", ".vrt")):
        return QgsRasterLayer(uri, name)
    return QgsVectorLayer(uri, name, "ogr")


def layer_outputs(alg, results: dict) -> dict:
    """{output name: path} of the raster and vector outputs written by the run."""
    kinds = ("outputRaster", "outputVector", "outputLayer")
    out = {}
    for definition in alg.outputDefinitions():
        value = results.get(definition.name())
        if definition.type() in kinds and isinstance(value, str) and value:
            out[definition.name()] = value
    # a Modeler model reports its children's outputs as "child:output name"
    for key, value in results.items():
        if (
            ":" in key
            and isinstance(value, str)
            and value.split("|")[0].endswith((".tif", ".gpkg", ".shp", ".geojson", ".fgb"))
        ):
            out[key] = value
    return out


def wait_for_canvas() -> None:
    canvas = iface.mapCanvas()
    canvas.refreshAllLayers()
    for _ in range(3):
        QCoreApplication.processEvents()
        canvas.waitWhileRendering()
    QCoreApplication.processEvents()


def screenshot(name: str, layers: list) -> str:
    """Zoom to the step's layers and save the main window as desktop_<name>.png."""
    project = QgsProject.instance()
    spatial = [lyr for lyr in layers if lyr.isSpatial() and lyr.isValid()]
    if spatial:
        project.setCrs(spatial[0].crs())
        extent = spatial[0].extent()
        for lyr in spatial[1:]:
            extent.combineExtentWith(lyr.extent())
        extent.scale(1.05)
        iface.mapCanvas().setExtent(extent)
    root = project.layerTreeRoot()
    for node in root.findLayers():
        node.setExpanded(True)
    iface.layerTreeView().expandAll()  # every legend visible, vector categories too
    wait_for_canvas()
    path = os.path.join(SCREENSHOTS, f"desktop_{name}.png")
    iface.mainWindow().grab().save(path)
    return path


def run_step(step: dict) -> dict:
    import processing

    project = QgsProject.instance()
    project.removeAllMapLayers()
    registry = QgsApplication.processingRegistry()
    alg = registry.algorithmById(step["alg"])
    record = {"alg": step["alg"], "loaded": {}, "fresh": {}}
    if alg is None:
        return dict(record, error=f"no algorithm {step['alg']}")
    feedback = QgsProcessingFeedback()
    try:
        results = processing.runAndLoadResults(step["alg"], step["params"], feedback=feedback)
    except Exception as err:  # recorded for the test, which shows it
        return dict(record, error=f"{type(err).__name__}: {err}")
    log(f"ran {step['name']}")
    record["results"] = {k: v for k, v in results.items() if isinstance(v, (str, int, float))}
    for layer in project.mapLayers().values():
        record["loaded"][layer.name()] = dict(style_of(layer), source=layer.source())
    fresh = []
    for key, uri in layer_outputs(alg, results).items():
        layer = fresh_layer(uri, f"{key} (reopened)")
        record["fresh"][key] = dict(style_of(layer), source=uri)
        fresh.append(layer)
    log(f"recorded {step['name']}")
    outputs = list(layer_outputs(alg, results).values())
    shown = arrange(list(project.mapLayers().values()), outputs, step["params"])
    record["screenshot"] = screenshot(step["name"], shown)
    return record


def arrange(layers: list, outputs: list, params: dict) -> list:
    """For the screenshot: vectors above rasters, each in the algorithm's output order, the
    first raster output shown (the others stay in the legend, unchecked), the step's input
    image underneath."""
    project, root = QgsProject.instance(), QgsProject.instance().layerTreeRoot()

    def rank(layer) -> int:
        found = [i for i, path in enumerate(outputs) if layer.source().startswith(path)]
        return found[0] if found else len(outputs)

    layers = sorted(layers, key=rank)
    order = [lyr for lyr in layers if isinstance(lyr, QgsVectorLayer)]
    order += [lyr for lyr in layers if isinstance(lyr, QgsRasterLayer)]
    source = next(
        (v for k, v in params.items() if k in ("INPUT", "PREDICTION") and isinstance(v, str)),
        None,
    )
    if source and source.lower().endswith(".tif"):
        base = QgsRasterLayer(source, "Input image")
        if base.isValid():
            project.addMapLayer(base)
            order.append(base)
    first_raster = True
    for i, layer in enumerate(order):
        node = root.findLayer(layer.id())
        if node is None:
            continue
        clone = node.clone()
        root.insertChildNode(i, clone)
        root.removeChildNode(node)
        if isinstance(layer, QgsRasterLayer) and layer.name() != "Input image":
            clone.setItemVisibilityChecked(first_raster)
            first_raster = False
    return order


def toolbox_tree() -> dict:
    """The MapSeg branch of the Processing Toolbox: {group: [entries]}."""
    toolbox = plugins["processing"].toolbox
    toolbox.setVisible(True)
    toolbox.raise_()
    view = toolbox.algorithmTree
    model = view.model()
    tree = {}

    def walk(parent, path):
        for row in range(model.rowCount(parent)):
            index = model.index(row, 0, parent)
            text = model.data(index)
            if path:
                tree.setdefault(" / ".join(path), []).append(text)
            walk(index, path + [text])

    for row in range(model.rowCount()):
        index = model.index(row, 0)
        if model.data(index) == "MapSeg":
            view.expand(index)
            walk(index, ["MapSeg"])
            for sub in range(model.rowCount(index)):
                view.expand(model.index(sub, 0, index))
    return tree


def main() -> None:
    out = {"qgis": Qgis.QGIS_VERSION, "steps": {}, "done": False}
    try:
        iface.mainWindow().resize(1400, 900)
        with open(PLAN, encoding="utf-8") as f:
            plan = json.load(f)
        log("toolbox")
        out["toolbox"] = toolbox_tree()
        out["toolbox_screenshot"] = screenshot("toolbox", [])
        for step in plan:
            log(f"step {step['name']}")
            out["steps"][step["name"]] = run_step(step)
        out["done"] = True
    except Exception:
        out["error"] = traceback.format_exc()
    finally:
        with open(RESULT, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, default=str)
        QgsProject.instance().clear()
        QgsProject.instance().setDirty(False)
        QgsApplication.exit(0)


QTimer.singleShot(0, main)

"""Default styles of Segment Raster, Pseudo-label From Points and the SAM algorithms (issue 15):
each written file, opened as a fresh QGIS layer, shows a finished map. tests/test_desktop.py
checks the same in a real QGIS window; these run offscreen in the suite's own QGIS."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import CancelAfter, read_raster, run_alg, write_raster
from scenes import GT, points_file
from segment_models import CLASSES, blobs, random_model

ROWS = COLS = 64


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    img, truth = blobs(ROWS, COLS, seed=1)
    return write_raster(folder / "scene.tif", img, geotransform=GT), truth, folder


def fresh(path):
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    if str(path).split("|")[0].endswith(".tif"):
        return QgsRasterLayer(str(path), "fresh")
    return QgsVectorLayer(str(path), "fresh", "ogr")


def palette(layer) -> list:
    renderer = layer.renderer()
    assert renderer.type() == "paletted", renderer.type()
    return [(c.value, c.label, c.color.getRgb()[:3]) for c in renderer.classes()]


def ramp(layer) -> tuple:
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor", renderer.type()
    return renderer.classificationMin(), renderer.classificationMax()


def test_segment_raster_legend_is_the_model_classes_and_confidence_a_ramp(
    provider, tmp_path, scene
):
    src, _, _ = scene
    model = random_model(tmp_path / "model.pt")
    dest, prob = tmp_path / "classes.tif", tmp_path / "prob.tif"
    run_alg(
        "segmentraster",
        {"INPUT": src, "MODEL": model, "OUTPUT": str(dest), "OUTPUT_PROBABILITY": str(prob)},
    )
    assert (tmp_path / "classes.qml").exists() and (tmp_path / "prob.qml").exists()
    # exactly the model's classes, with its names and colours: not GDAL's 256 table entries
    expected = [(c["value"], c["name"], tuple(c["color"])) for c in CLASSES]
    assert palette(fresh(dest)) == expected
    values = read_raster(prob)
    lo, hi = ramp(fresh(prob))
    data = values[values != -1]
    assert lo == pytest.approx(float(data.min()), abs=1e-6)
    assert hi == pytest.approx(float(data.max()), abs=1e-6)
    assert 0.5 <= lo < hi <= 1.0


def test_default_model_segments_legend_lists_the_segments(provider, tmp_path, scene):
    src, _, _ = scene
    dest = tmp_path / "segments.tif"
    run_alg("segmentraster", {"INPUT": src, "MODEL": "", "NUM_SEGMENTS": 3, "OUTPUT": str(dest)})
    entries = palette(fresh(dest))
    assert [(v, name) for v, name, _ in entries] == [(i, f"Segment {i}") for i in (1, 2, 3)]
    assert len({rgb for _, _, rgb in entries}) == 3


def test_canceled_segment_raster_leaves_no_style_behind(provider, tmp_path, scene):
    from qgis.core import QgsProcessingException

    src, _, _ = scene
    model = random_model(tmp_path / "model.pt")
    params = {"INPUT": src, "MODEL": model, "TILE_SIZE": 32, "OVERLAP": 4}
    params.update(OUTPUT=str(tmp_path / "c.tif"), OUTPUT_PROBABILITY=str(tmp_path / "p.tif"))
    with pytest.raises(QgsProcessingException):
        run_alg("segmentraster", params, feedback=CancelAfter(40))
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_pseudo_labels_legend_lists_the_classes_not_unlabelled(provider, tmp_path, scene):
    src, truth, folder = scene
    points = points_file(tmp_path / "points.gpkg", truth)
    dest = tmp_path / "labels.tif"
    run_alg(
        "pseudolabelfrompoints",
        {"INPUT": src, "POINTS": points, "CLASS_FIELD": "kind", "SUPERPIXEL_SIZE": 8,
         "OUTPUT": str(dest), "OUTPUT_SUPERPIXELS": str(tmp_path / "sp.tif")},
    )  # fmt: skip
    layer = fresh(dest)
    assert [(v, name) for v, name, _ in palette(layer)] == [(1, "bright"), (2, "dark")]
    assert layer.dataProvider().sourceNoDataValue(1) == 0  # unlabelled: nodata, transparent
    # superpixel ids: 12 colours in equal ranges over the scrambled ids, one legend line
    from qgis.core import QgsColorRampShader

    sp = fresh(tmp_path / "sp.tif")
    assert ramp(sp) == (1, 2**32 - 1) and sp.dataProvider().sourceNoDataValue(1) == 0
    shader = sp.renderer().shader().rasterShaderFunction()
    assert shader.colorRampType() == QgsColorRampShader.Discrete
    items = shader.colorRampItemList()
    assert len({i.color.name() for i in items}) == 12
    assert [i.label for i in items if i.label] == ["superpixels (12 colours, repeated)"]
    ids = read_raster(tmp_path / "sp.tif").astype(np.int64)
    colours = {int(i.value): i.color.name() for i in items}
    bounds = np.array(sorted(colours))
    drawn = bounds[np.searchsorted(bounds, ids[ids > 0])]  # DISCRETE: first bound >= the id
    assert len({colours[int(b)] for b in drawn}) >= 6  # the ids spread over the colours


@pytest.mark.parametrize("with_class", [True, False])
def test_sam_prompts_outlines_and_a_legend_of_the_prompts(
    provider, tmp_path, scene, tiny_sam_checkpoint, with_class
):
    from qgis.core import QgsVectorLayer

    src, truth, _ = scene
    points = points_file(tmp_path / "points.gpkg", truth)
    out, mask = tmp_path / "sam.gpkg", tmp_path / "sam.tif"
    params = {"INPUT": src, "PROMPTS": points, "CHECKPOINT": str(tiny_sam_checkpoint),
              "OUTPUT": str(out), "OUTPUT_RASTER": str(mask)}  # fmt: skip
    if with_class:
        params["CLASS_FIELD"] = "kind"
    run_alg("segmentwithsam", params)
    polygons = fresh(out)
    assert isinstance(polygons, QgsVectorLayer) and polygons.featureCount() > 0
    renderer = polygons.renderer()
    assert renderer.type() == "singleSymbol" and renderer.symbol().color().alpha() == 0
    assert polygons.labelsEnabled() == with_class
    if with_class:
        assert polygons.labeling().settings().fieldName == "class"
    written = sorted(f["prompt_id"] for f in polygons.getFeatures())
    entries = palette(fresh(mask))
    assert [v for v, _, _ in entries] == written  # exactly the prompts with a mask
    pattern = r"Prompt (\d+): (bright|dark)" if with_class else r"Prompt (\d+)"
    for value, label, _ in entries:
        match = re.fullmatch(pattern, label)
        assert match and int(match.group(1)) == value, label
    # the raster holds those prompt ids (and 0: no mask), nothing else
    assert set(np.unique(read_raster(mask))) <= {0, *written}


def test_sam_automatic_masks_are_outlines(provider, tmp_path, scene, tiny_sam_checkpoint):
    src, _, _ = scene
    out = tmp_path / "masks.gpkg"
    run_alg(
        "samautomaticmasks",
        {"INPUT": src, "CHECKPOINT": str(tiny_sam_checkpoint), "OUTPUT": str(out),
         "POINTS_PER_SIDE": 4, "PRED_IOU_THRESH": 0.0, "STABILITY_THRESH": 0.0},
    )  # fmt: skip
    layer = fresh(out)
    assert layer.featureCount() > 0
    assert layer.renderer().type() == "singleSymbol" and not layer.labelsEnabled()
    assert layer.renderer().symbol().color().alpha() == 0  # no fill: the image shows through

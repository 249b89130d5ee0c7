"""Fine-tuning SAM through Train Model: frozen encoders, trained decoder, balanced tiles, and a
small model file (the decoder and the checkpoint's identity) that Segment Raster and Segment
With SAM use with that checkpoint, and with no other."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from conftest import build_tiny_sam, qgis_process_json, read_raster, run_alg, write_raster
from osgeo import gdal, ogr
from test_segmentwithsam import write_vector

from mapseg.core.io.normalize import band_stats
from mapseg.core.labels.classes import label_raster
from mapseg.core.model.modelfile import load_model, save_model
from mapseg.core.progress import Reporter
from mapseg.core.train.dataset import TileReader, TileSet, scan_tiles
from mapseg.core.train.loop import FitConfig, fit

TILE = 32
# Bright squares (the object) in two of the nine 32 px tiles of a 96 x 96 scene.
SQUARES = [(4, 6, 20, 22), (40, 70, 56, 86)]  # (row0, col0, row1, col1)
FAST = {"ARCHITECTURE": "sam", "TILE_SIZE": TILE, "BATCH_SIZE": 4, "LEARNING_RATE": 0.005}


def squares_scene(size: int = 96, seed: int = 0):
    """(image (3, size, size) uint8, mask (size, size) uint8 0/1): bright squares on dark."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for r0, c0, r1, c1 in SQUARES:
        mask[r0:r1, c0:c1] = 1
    img = np.where(mask, 210, 40)[None] + rng.normal(0, 8, (3, size, size))
    img[0, 0, 0], img[0, -1, -1] = 0, 255  # the same band range whatever the noise
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_sam_checkpoint):
    d = tmp_path_factory.mktemp("trainsam")
    img, mask = squares_scene()
    # A private copy of the checkpoint: deleted after training to show the model stands alone.
    ckpt = d / "sam_copy.pth"
    shutil.copy(tiny_sam_checkpoint, ckpt)
    return {
        "dir": d,
        "img": img,
        "mask": mask,
        "ckpt": str(ckpt),
        "img_path": write_raster(d / "rgb.tif", img),
        "lab_path": write_raster(d / "mask.tif", mask),
    }


@pytest.fixture(scope="module")
def trained(provider, data):
    out = data["dir"] / "sam_model.pt"
    res = run_alg(
        "trainmodel",
        {
            **FAST,
            "INPUT": [data["img_path"]],
            "LABELS": [data["lab_path"]],
            "CHECKPOINT": data["ckpt"],
            "EPOCHS": 4,
            "VALIDATION_FRACTION": 0.0,
            "OUTPUT_MODEL": str(out),
        },
    )
    os.remove(data["ckpt"])
    return res, out


def check_weights(state: dict, checkpoint: dict) -> None:
    """Only the mask decoder is in the model file (the encoders are the checkpoint's); it moved."""
    frozen = [k for k in checkpoint if k.startswith(("image_encoder.", "prompt_encoder."))]
    decoder = [k for k in checkpoint if k.startswith("mask_decoder.")]
    assert len(frozen) > 20 and len(decoder) > 20
    assert set(state) == {f"sam.{k}" for k in decoder}
    moved = [k for k in decoder if not torch.equal(state[f"sam.{k}"], checkpoint[k])]
    assert len(moved) > len(decoder) // 2


def whole_sam_model(model: str, checkpoint: str, dest: str) -> str:
    """The model file as MapSeg wrote it before decoder-only files: the whole SAM (the
    checkpoint's frozen encoders and the fine-tuned decoder) and no checkpoint identity."""
    meta, state = load_model(model)
    frozen = torch.load(checkpoint, weights_only=True)
    whole = {f"sam.{k}": v for k, v in frozen.items() if not k.startswith("mask_decoder.")}
    kwargs = {k: v for k, v in meta["arch_kwargs"].items() if k != "checkpoint_id"}
    save_model(dest, dict(meta, arch_kwargs=kwargs), {**whole, **state})
    return dest


def test_fine_tunes_sam_through_processing(trained, data, tiny_sam_checkpoint):
    res, out = trained
    assert res["OUTPUT_MODEL"] == str(out)
    meta, state = load_model(str(out))
    assert meta["architecture"] == "sam" and meta["in_bands"] == 3
    assert [c["value"] for c in meta["classes"]] == [0, 1]
    assert meta["arch_kwargs"]["config"]["embed_dim"] == 32  # the tiny encoder, read off it
    assert meta["training"]["loss"] == "dice_ce"  # SAM's default loss
    assert meta["training"]["balanced_sampling"] is True
    assert meta["training"]["train_tiles"] == 9
    assert res["VAL_MIOU"] == pytest.approx(meta["metrics"]["miou"])
    assert res["VAL_MIOU"] > 0.9  # bright squares are easy, even for a tiny random encoder
    check_weights(state, torch.load(tiny_sam_checkpoint, weights_only=True))
    losses = [h["train_loss"] for h in meta["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_segment_raster_uses_the_fine_tuned_model(trained, data, tiny_sam_checkpoint):
    _, model = trained
    assert not os.path.exists(data["ckpt"])  # the copy trained from is gone: a renamed one does
    dest = str(data["dir"] / "classes.tif")
    params = {"INPUT": data["img_path"], "MODEL": str(model), "OUTPUT": dest}
    run_alg("segmentraster", {**params, "CHECKPOINT": str(tiny_sam_checkpoint)})
    src, ds = gdal.Open(data["img_path"]), gdal.Open(dest)
    assert (ds.RasterXSize, ds.RasterYSize) == (96, 96)
    assert ds.GetGeoTransform() == src.GetGeoTransform()
    assert ds.GetSpatialRef().IsSame(src.GetSpatialRef())
    pred = read_raster(dest)
    assert set(np.unique(pred)) <= {0, 1}
    # The decoder learnt the squares, and tiled, blended inference finds them again.
    obj, truth = pred == 1, data["mask"] == 1
    assert (obj & truth).sum() / (obj | truth).sum() > 0.9
    # The same classes as the whole-SAM model file MapSeg wrote before, which is much larger.
    old = whole_sam_model(str(model), str(tiny_sam_checkpoint), str(data["dir"] / "whole.pt"))
    before = str(data["dir"] / "before.tif")
    run_alg("segmentraster", {**params, "MODEL": old, "OUTPUT": before})
    np.testing.assert_array_equal(read_raster(before), pred)
    encoder = sum(
        v.numel() * v.element_size()
        for k, v in torch.load(tiny_sam_checkpoint, weights_only=True).items()
        if not k.startswith("mask_decoder.")
    )
    assert os.path.getsize(model) + encoder < os.path.getsize(old) + 64 * 1024


def test_segment_raster_asks_for_the_checkpoint_and_refuses_another(trained, data, tmp_path):
    from qgis.core import QgsProcessingException

    _, model = trained
    dest = tmp_path / "classes.tif"
    params = {"INPUT": data["img_path"], "MODEL": str(model), "OUTPUT": str(dest)}
    with pytest.raises(QgsProcessingException, match=r"sam_copy\.pth.*as CHECKPOINT"):
        run_alg("segmentraster", params)
    other = tmp_path / "other_sam.pth"
    torch.save(build_tiny_sam(seed=3).state_dict(), other)  # same shapes, other weights
    with pytest.raises(QgsProcessingException) as err:
        run_alg("segmentraster", {**params, "CHECKPOINT": str(other)})
    msg = str(err.value)
    assert "not the SAM checkpoint this model was fine-tuned from" in msg
    assert "sam_copy.pth" in msg and "other_sam.pth" in msg
    assert not dest.exists() and not list(tmp_path.glob("classes*"))


def test_fine_tuning_a_sam_model_again_needs_its_checkpoint(trained, data, tmp_path):
    _, model = trained
    msg = bad_run(data, tmp_path, INIT_MODEL=str(model))
    assert "sam_copy.pth" in msg and "as CHECKPOINT" in msg
    other = tmp_path / "other_sam.pth"
    torch.save(build_tiny_sam(seed=3).state_dict(), other)
    msg = bad_run(data, tmp_path, INIT_MODEL=str(model), CHECKPOINT=str(other))
    assert "not the SAM checkpoint this model was fine-tuned from" in msg


def test_segment_with_sam_uses_the_fine_tuned_decoder(trained, data, tiny_sam_checkpoint, tmp_path):
    """A box over each square: the fine-tuned decoder finds the squares, SAM's random one not."""
    from qgis.core import QgsProcessingException

    _, model = trained
    gt = gdal.Open(data["img_path"]).GetGeoTransform()
    boxes = []
    for r0, c0, r1, c1 in SQUARES:  # the box of each square, 2 px wider, in map coordinates
        x0, x1 = gt[0] + (c0 - 2) * gt[1], gt[0] + (c1 + 2) * gt[1]
        y0, y1 = gt[3] + (r1 + 2) * gt[5], gt[3] + (r0 - 2) * gt[5]
        boxes.append((f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))", {}))
    prompts = write_vector(tmp_path / "boxes.gpkg", boxes, kind=ogr.wkbPolygon)
    params = {
        "INPUT": data["img_path"],
        "PROMPTS": prompts,
        "CHECKPOINT": str(tiny_sam_checkpoint),
        "DEVICE": "cpu",
    }
    ious = {}
    for name, extra in (("tuned", {"MODEL": str(model)}), ("plain", {})):
        raster = tmp_path / f"{name}.tif"
        out = {"OUTPUT": str(tmp_path / f"{name}.gpkg"), "OUTPUT_RASTER": str(raster)}
        run_alg("segmentwithsam", {**params, **extra, **out})
        found, truth = read_raster(str(raster)) > 0, data["mask"] == 1
        ious[name] = (found & truth).sum() / max((found | truth).sum(), 1)
    # It learnt "the bright squares" from boxes covering whole tiles, at another scale: it finds
    # most of both squares; the checkpoint's random decoder finds next to nothing.
    assert ious["tuned"] > 0.5 and ious["tuned"] > 4 * ious["plain"]
    other = tmp_path / "other_sam.pth"
    torch.save(build_tiny_sam(seed=3).state_dict(), other)
    dest = tmp_path / "refused.gpkg"
    with pytest.raises(QgsProcessingException, match="not the SAM checkpoint this model"):
        run_alg(
            "segmentwithsam",
            {**params, "MODEL": str(model), "CHECKPOINT": str(other), "OUTPUT": str(dest)},
        )
    assert not dest.exists()


def test_fine_tunes_sam_through_qgis_process(provider, data, tiny_sam_checkpoint, tmp_path):
    out = tmp_path / "cli.pt"
    doc = qgis_process_json(
        "trainmodel",
        {
            **FAST,
            "INPUT": data["img_path"],
            "LABELS": write_raster(tmp_path / "lab3.tif", data["mask"] * 2 + 1),  # 1 / 3
            "OBJECT_CLASS": 3,
            "CHECKPOINT": str(tiny_sam_checkpoint),
            "EPOCHS": 2,
            "VALIDATION_FRACTION": 0.0,
            "OUTPUT_MODEL": str(out),
        },
    )
    assert doc["results"]["OUTPUT_MODEL"] == str(out)
    meta, state = load_model(str(out))
    assert meta["architecture"] == "sam"
    assert [(c["value"], c["name"]) for c in meta["classes"]] == [
        (0, "not class 3"),
        (1, "class 3"),
    ]
    assert meta["training"]["object_class"] == 3
    # Object pixels (value 3) became class 1: as many as the squares hold.
    assert meta["training"]["labelled_pixels"] == [96 * 96 - 2 * 256, 2 * 256]
    check_weights(state, torch.load(tiny_sam_checkpoint, weights_only=True))


def tile_set(data, object_value=None):
    images = [gdal.Open(data["img_path"])]
    layers = [label_raster(data["lab_path"], images[0], 255, Reporter())]
    tiles = scan_tiles(images, layers, TILE, Reporter())
    reader = TileReader(images, layers, [0, 1], band_stats(images), TILE, object_value)
    return TileSet(reader, tiles, preload=True), images, layers


class TileCounter(torch.nn.Module):
    """A real 1x1-conv segmenter that also counts the tiles it trains on by their content."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.positive = self.negative = 0

    def forward(self, x):
        if self.training:
            # squares are near 1, the rest near 0 (one corner pixel is 1.0)
            has_object = (x[:, 0] > 0.6).flatten(1).sum(dim=1) > 10
            self.positive += int(has_object.sum())
            self.negative += int((~has_object).sum())
        return self.conv(x)


@pytest.mark.parametrize("balanced", [True, False])
def test_balanced_sampler_draws_positive_and_negative_tiles_equally(data, balanced):
    tiles, _images, _layers = tile_set(data)
    fractions = tiles.object_fractions()
    assert (fractions > 0).sum() == 2 and (fractions == 0).sum() == 7
    assert fractions.max() == pytest.approx(256 / 1024)
    net = TileCounter()
    cfg = FitConfig(epochs=200, batch_size=9, augment=False, seed=1, balanced=balanced)
    fit(net, tiles, tiles, 2, None, cfg, Reporter())
    total = net.positive + net.negative
    assert total == 200 * 9
    share = net.positive / total
    if balanced:
        assert share == pytest.approx(0.5, abs=0.04)
    else:
        assert share == pytest.approx(2 / 9)  # every tile once per epoch


def test_object_value_reads_one_class_against_the_rest(data, tmp_path):
    labels = write_raster(tmp_path / "multi.tif", (data["mask"] * 2 + 1).astype(np.uint8))
    images = [gdal.Open(data["img_path"])]
    layers = [label_raster(labels, images[0], 255, Reporter())]
    tiles = scan_tiles(images, layers, TILE, Reporter())
    reader = TileReader(images, layers, [0, 1], band_stats(images), TILE, 3)
    x, y = np.empty((3, TILE, TILE), np.float32), np.empty((TILE, TILE), np.int64)
    reader.read(tiles[0], x, y)
    np.testing.assert_array_equal(y, data["mask"][:TILE, :TILE])


def bad_run(data, tmp_path, **params):
    out = tmp_path / "bad.pt"
    base = {
        **FAST,
        "INPUT": [data["img_path"]],
        "LABELS": [data["lab_path"]],
        "EPOCHS": 1,
        "OUTPUT_MODEL": str(out),
    }
    base.update(params)
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as err:
        run_alg("trainmodel", base)
    assert not out.exists()
    assert not list(tmp_path.glob("bad*"))
    return str(err.value)


def test_sam_without_checkpoint(provider, data, tmp_path):
    msg = bad_run(data, tmp_path)
    assert "CHECKPOINT" in msg and ".pth" in msg


def test_checkpoint_that_is_not_sam(provider, data, tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), other)
    msg = bad_run(data, tmp_path, CHECKPOINT=str(other))
    assert "not a Segment Anything checkpoint" in msg


def test_four_band_input(provider, data, tmp_path, tiny_sam_checkpoint):
    four = np.concatenate([data["img"], data["img"][:1]])
    path = write_raster(tmp_path / "rgbn.tif", four)
    msg = bad_run(data, tmp_path, INPUT=[path], CHECKPOINT=str(tiny_sam_checkpoint))
    assert "exactly 3 bands" in msg and "have 4" in msg and "VRT" in msg


def test_three_classes_without_object_class(provider, data, tmp_path, tiny_sam_checkpoint):
    three = data["mask"].copy()
    three[80:, :] = 2
    labels = write_raster(tmp_path / "three.tif", three)
    msg = bad_run(data, tmp_path, LABELS=[labels], CHECKPOINT=str(tiny_sam_checkpoint))
    assert "3 classes ([0, 1, 2])" in msg and "OBJECT_CLASS" in msg


def test_object_class_not_in_labels(provider, data, tmp_path, tiny_sam_checkpoint):
    msg = bad_run(data, tmp_path, OBJECT_CLASS=7, CHECKPOINT=str(tiny_sam_checkpoint))
    assert "OBJECT_CLASS 7" in msg and "[0, 1]" in msg


def test_checkpoint_with_another_architecture(provider, data, tmp_path, tiny_sam_checkpoint):
    msg = bad_run(data, tmp_path, ARCHITECTURE="unet", CHECKPOINT=str(tiny_sam_checkpoint))
    assert "only used with ARCHITECTURE sam" in msg

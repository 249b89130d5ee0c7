"""Test-time augmentation in Segment Raster: the 8 views of each tile, averaged."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_raster, write_raster
from scenes import GT
from segment_models import random_model
from test_tiling import image

from mapseg.core.infer.segment import Options, segment_raster
from mapseg.core.infer.tta import VIEWS, from_view, to_view, view_mean
from mapseg.core.model.onnxnet import onnxruntime_available


def test_views_are_the_eight_symmetries_of_the_square_and_undo_exactly():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)
    views = [to_view(x, k, m) for k, m in VIEWS]
    assert len({v.tobytes() for v in views}) == 8  # all different for an asymmetric input
    for (k, m), v in zip(VIEWS, views):
        assert np.array_equal(from_view(v, k, m), x)
    # a pixel-wise forward commutes with every view: the mean is the forward itself
    assert np.allclose(view_mean(lambda a: 2 * a + 1, x), 2 * x + 1, atol=1e-6)
    # on a non-square input the quarter turns swap the sides and come back
    wide = x[..., :3]
    assert view_mean(lambda a: a * a, wide).shape == wide.shape


def expected_probabilities(model_path: str, img: np.ndarray, tta: bool) -> np.ndarray:
    """The model's softmax over the image, averaged over the 8 views with torch's own
    flips and rotations (an independent implementation of the same average)."""
    import torch

    from mapseg.core.model.modelfile import build_model, load_model

    meta, state = load_model(model_path)
    net = build_model(meta, state).eval()
    x = torch.from_numpy(img.astype(np.float32) / 255.0)[None]
    out = torch.zeros((1, len(meta["classes"])) + x.shape[2:])
    views = [(k, m) for k in range(4) for m in (False, True)] if tta else [(0, False)]
    with torch.no_grad():
        for k, m in views:
            v = torch.rot90(x.flip(-1) if m else x, k, (-2, -1))
            p = torch.rot90(torch.softmax(net(v), 1), -k, (-2, -1))
            out += p.flip(-1) if m else p
    return (out / len(views))[0].numpy()


RUNTIMES = ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    not onnxruntime_available(), reason="onnxruntime is not installed"))]  # fmt: skip


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_segment_raster_averages_the_eight_views_of_a_tile(tmp_path, runtime):
    model = random_model(tmp_path / "m.pt", tile=64)
    img = image(64, 64, seed=3)  # one tile: the blend weights cancel out
    src = write_raster(tmp_path / "in.tif", img, geotransform=GT)
    got = {}
    for tta in (False, True):
        dest, prob = tmp_path / f"c{tta}.tif", tmp_path / f"p{tta}.tif"
        opts = Options(tile_size=64, runtime=runtime, tta=tta)
        segment_raster(src, model, str(dest), probability=str(prob), options=opts)
        expected = expected_probabilities(model, img, tta)
        ranked = np.sort(expected, axis=0)
        clear = ranked[-1] - ranked[-2] > 1e-3  # away from ties between the two classes
        classes = np.array([3, 7])[expected.argmax(0)]
        assert np.array_equal(read_raster(dest)[clear], classes[clear])
        assert np.abs(read_raster(prob) - expected.max(0)).max() < 1e-4
        got[tta] = read_raster(prob)
    # the average is not the plain output: the random net answers differently to each view
    assert np.abs(got[True] - got[False]).max() > 0.01


def test_segment_raster_with_tta_is_the_same_on_a_mirrored_raster(tmp_path):
    """The 8-view average does not depend on the raster's orientation (one tile: the grid is
    the same both ways); the plain output does."""
    model = random_model(tmp_path / "m.pt", tile=64)
    img = image(64, 64, seed=5)
    out = {}
    for name, arr in (("plain", img), ("mirror", img[:, :, ::-1].copy())):
        src = write_raster(tmp_path / f"{name}.tif", arr, geotransform=GT)
        for tta in (False, True):
            prob = tmp_path / f"{name}_{tta}_p.tif"
            opts = Options(tile_size=64, runtime="torch", tta=tta)
            segment_raster(src, model, str(tmp_path / f"{name}_{tta}.tif"), str(prob), options=opts)
            out[name, tta] = read_raster(prob)
    assert np.abs(out["plain", True] - out["mirror", True][:, ::-1]).max() < 1e-4
    assert np.abs(out["plain", False] - out["mirror", False][:, ::-1]).max() > 2e-3


def test_label_free_default_model_with_tta_divides_into_the_segments_asked(tmp_path):
    """The k-means fit samples through the augmented network too (``with_weights``)."""
    img = image(96, 96, seed=7)
    src = write_raster(tmp_path / "in.tif", img, geotransform=GT)
    out = {}
    for tta in (False, True):
        dest, conf = tmp_path / f"s{tta}.tif", tmp_path / f"c{tta}.tif"
        opts = Options(num_segments=4, tile_size=64, runtime="torch", tta=tta)
        result = segment_raster(src, None, str(dest), probability=str(conf), options=opts)
        ids, c = read_raster(dest), read_raster(conf)
        assert result.segments == 4 and set(np.unique(ids)) == {1, 2, 3, 4}
        assert c.min() >= 0.5 - 1e-6 and c.max() <= 1.0 + 1e-6
        out[tta] = c
    assert np.abs(out[True] - out[False]).max() > 1e-3  # the averaged features differ

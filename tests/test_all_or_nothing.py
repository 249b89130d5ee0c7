"""Multi-output algorithms cancelled part-way: no destination is created and files already at
the destinations keep their bytes (Topographic Sinks has its own in test_topographicsinks)."""

from __future__ import annotations

import os

import pytest
from conftest import CancelAfter, run_alg, write_raster
from scenes import GT, points_file
from segment_models import blobs, random_model

ROWS = COLS = 96
OLD = b"previous contents"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    img, truth = blobs(ROWS, COLS, seed=4)
    src = write_raster(folder / "scene.tif", img, geotransform=GT)
    return {
        "src": src,
        "points": points_file(folder / "points.gpkg", truth),
        "model": random_model(folder / "model.pt", tile=32),
    }


def _runs(scene, checkpoint) -> dict:
    """Algorithm -> (parameters without destinations, the two destination parameters)."""
    return {
        "segmentraster": (
            {"INPUT": scene["src"], "MODEL": scene["model"], "TILE_SIZE": 32, "BATCH_SIZE": 1},
            ("OUTPUT", "OUTPUT_PROBABILITY"),
        ),
        "pseudolabelfrompoints": (
            {
                "INPUT": scene["src"],
                "POINTS": scene["points"],
                "CLASS_FIELD": "kind",
                "SUPERPIXEL_SIZE": 8,
            },
            ("OUTPUT", "OUTPUT_SUPERPIXELS"),
        ),  # fmt: skip
        "segmentwithsam": (
            {
                "INPUT": scene["src"],
                "PROMPTS": scene["points"],
                "CHECKPOINT": str(checkpoint),
                "DEVICE": "cpu",
            },
            ("OUTPUT", "OUTPUT_RASTER"),
        ),  # fmt: skip
    }


@pytest.mark.parametrize("percent", [20, 60, 95])
@pytest.mark.parametrize("alg", ["segmentraster", "pseudolabelfrompoints", "segmentwithsam"])
def test_cancel_changes_no_destination(
    provider, scene, tiny_sam_checkpoint, tmp_path, alg, percent
):
    from qgis.core import QgsProcessingException

    params, outputs = _runs(scene, tiny_sam_checkpoint)[alg]
    names = {outputs[0]: "first", outputs[1]: "second"}
    ext = {"OUTPUT": ".gpkg" if alg == "segmentwithsam" else ".tif"}
    dests = {key: tmp_path / (names[key] + ext.get(key, ".tif")) for key in outputs}
    dests[outputs[0]].write_bytes(OLD)  # an earlier run's file at one destination
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        run_alg(
            alg,
            {**params, **{k: str(v) for k, v in dests.items()}},
            feedback=CancelAfter(percent),
        )
    assert sorted(os.listdir(tmp_path)) == before  # nothing new, no partial file left
    assert dests[outputs[0]].read_bytes() == OLD

"""Train Model without labels through Processing and qgis_process: a label-free model file."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import qgis_process_json, run_alg, write_raster

pytest.importorskip("torch")


def tiny_scene(tmp_path, seed: int = 0) -> str:
    """48x48 3-band 16-bit raster: two regions of different colour and texture."""
    rng = np.random.default_rng(seed)
    img = np.empty((3, 48, 48), dtype=np.float64)
    img[:, :, :24] = np.array([1200, 2200, 900])[:, None, None]
    img[:, :, 24:] = np.array([2600, 1500, 3100])[:, None, None]
    img[:, :, 24:] += 300 * np.sin(np.arange(24) * 1.3)
    img += rng.normal(0, 60, img.shape)
    return write_raster(tmp_path / "tiny.tif", img.astype(np.uint16))


def test_trainmodel_without_labels_writes_a_label_free_model_and_report(provider, tmp_path):
    from mapseg.core.model.modelfile import load_model

    src = tiny_scene(tmp_path)
    out, report = str(tmp_path / "lf.pt"), str(tmp_path / "lf.html")
    result = run_alg(
        "trainmodel",
        {
            "INPUT": [src],
            "EPOCHS": 2,
            "TILE_SIZE": 32,
            "BATCH_SIZE": 4,
            "ARCH_OPTIONS": "base_width=4",
            "OUTPUT_MODEL": out,
            "OUTPUT_REPORT": report,
        },
    )
    assert result["OUTPUT_MODEL"] == out and result["OUTPUT_REPORT"] == report
    meta, state = load_model(out)
    assert meta["mode"] == "unsupervised" and meta["classes"] == []
    assert meta["in_bands"] == 3 and meta["embedding_dim"] == 24
    assert meta["normalization"] == "per-input"
    # 16-bit input: statistics are measured on the data, not assumed 0..255
    assert 1000 < meta["band_stats"][0]["low"] < 1200 < 2900 < meta["band_stats"][0]["high"] < 3200
    assert meta["training"]["steps"] == 2 * 4  # 16 half-overlapping 32 px tiles / batch 4
    assert [v for k, v in state.items() if k.endswith("head.weight")][0].shape[0] == 24
    with open(report, encoding="utf-8") as f:
        text = f.read()
    assert "label-free model" in text and text.count("data:image/png;base64,") == 2


def test_trainmodel_without_labels_runs_through_qgis_process(tmp_path):
    from mapseg.core.model.modelfile import load_model

    src = tiny_scene(tmp_path, seed=1)
    out = str(tmp_path / "cli.pt")
    doc = qgis_process_json(
        "mapseg:trainmodel",
        {
            "INPUT": src,
            "EPOCHS": 1,
            "TILE_SIZE": 32,
            "BATCH_SIZE": 4,
            "ARCH_OPTIONS": "base_width=4",
            "OUTPUT_MODEL": out,
        },
    )
    assert doc["results"]["OUTPUT_MODEL"] == out
    meta, _ = load_model(out)
    assert meta["mode"] == "unsupervised" and meta["training"]["steps_run"] == 4

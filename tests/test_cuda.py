"""The engine on a CUDA GPU, without QGIS: mixed-precision training, data-parallel training
on NCCL, label-free training, Segment Raster (plain, test-time augmented, out of memory)
against the same work on the CPU. Every test here is marked ``gpu`` and skips without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_raster, write_raster
from scenes import GT
from segment_models import blobs, random_model, trained_model
from test_selfsup import ARI_MIN, SMALL, small_cfg, three_regions
from trainscene import fast_fit, predict, scene

from mapseg.core.infer.segment import Options, segment_raster
from mapseg.core.model.modelfile import build_model, load_model
from mapseg.core.progress import Reporter
from mapseg.core.train.job import TrainJob, train_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda")
    img, cls = scene(160, 160, seed=1)
    return d, img, cls, write_raster(d / "img.tif", img), write_raster(d / "lab.tif", cls, nodata=0)


def cuda_job(folder, img_path, lab_path, name: str, **fit) -> TrainJob:
    return TrainJob(
        images=[str(img_path)], label_rasters=[str(lab_path)], output=str(folder / name),
        tile_size=32, arch_kwargs={"base_width": 8},
        fit=fast_fit(epochs=10, batch_size=8, learning_rate=0.01, device="cuda", **fit),
    )  # fmt: skip


def test_training_on_cuda_uses_mixed_precision_and_learns(labelled):
    d, img, cls, img_path, lab_path = labelled
    meta = train_model(cuda_job(d, img_path, lab_path, "amp.pt"), Reporter())
    assert meta["training"]["device"].startswith("cuda")
    assert meta["training"]["mixed_precision"] is True
    assert meta["training"]["skipped_steps"] == 0  # the loss scaler found no overflow to skip
    assert meta["metrics"]["miou"] > 0.85, meta["history"]
    # the file loads and predicts on the CPU (weights saved as plain fp32 tensors)
    meta2, state = load_model(str(d / "amp.pt"))
    assert all(str(v.dtype) == "torch.float32" for v in state.values() if v.is_floating_point())
    assert (predict(meta2, state, img) == cls).mean() > 0.9


def test_data_parallel_training_on_nccl(labelled):
    from mapseg.core.distributed.launch import gpu_count, train_ddp

    d, img, cls, img_path, lab_path = labelled
    meta = train_ddp(cuda_job(d, img_path, lab_path, "ddp.pt"), Reporter(), device="cuda")
    assert meta["training"]["distributed"] == {"processes": gpu_count(), "backend": "nccl"}
    assert meta["metrics"]["miou"] > 0.85, meta["history"]
    _, state = load_model(str(d / "ddp.pt"))
    assert (predict(meta, state, img) == cls).mean() > 0.9


def test_label_free_training_on_cuda_recovers_the_regions(tmp_path):
    from mapseg.core.io.normalize import normalise
    from mapseg.core.model.clustering import agreement
    from mapseg.core.train.labelfree import embed, segment, train_label_free

    img, region = three_regions()
    src = write_raster(tmp_path / "img.tif", img)
    out = str(tmp_path / "m.pt")
    meta = train_label_free([src], out, Reporter(), small_cfg(device="cuda"), "unet", SMALL)
    assert meta["training"]["device"].startswith("cuda")
    meta2, state = load_model(out)
    x = normalise(img.astype(np.float32), meta2["band_stats"])
    seg = segment(embed(build_model(meta2, state), x), x, np.ones(region.shape, bool), 3)
    assert agreement(seg, region, np.ones(region.shape, bool))["ari"] > ARI_MIN


@pytest.mark.parametrize("tta", [False, True])
def test_segment_raster_on_cuda_gives_the_cpu_result(tmp_path, tta):
    """fp16 autocast on the GPU: probabilities within 1e-2 of the CPU's, the same class
    wherever the CPU's top two probabilities are not within that of each other."""
    model = trained_model(tmp_path / "m.pt", steps=60)  # confident: few near-ties to flip
    src = write_raster(tmp_path / "in.tif", blobs(150, 230, seed=7)[0], geotransform=GT)
    out = {}
    for device in ("cpu", "cuda"):
        dest, prob = tmp_path / f"{device}.tif", tmp_path / f"{device}_p.tif"
        opts = Options(tile_size=64, overlap=16, device=device, tta=tta)
        res = segment_raster(src, model, str(dest), probability=str(prob), options=opts)
        assert res.device.startswith(device)
        out[device] = read_raster(dest), read_raster(prob)
    (c_cpu, p_cpu), (c_gpu, p_gpu) = out["cpu"], out["cuda"]
    assert np.abs(p_gpu - p_cpu).max() < 1e-2
    clear = p_cpu > 0.5 + 1e-2  # two classes: top-two gap = 2 p - 1
    assert clear.mean() > 0.9 and np.array_equal(c_gpu[clear], c_cpu[clear])


def test_cuda_out_of_memory_halves_the_batch(tmp_path):
    import torch

    model = random_model(tmp_path / "random.pt", tile=64)
    img = np.random.default_rng(4).integers(0, 255, (3, 1344, 1344), dtype=np.uint8)
    src = write_raster(tmp_path / "scene.tif", img, geotransform=GT)  # 6 x 6 tiles of 256
    opts = dict(tile_size=256, overlap=32)
    cpu = segment_raster(src, model, str(tmp_path / "cpu.tif"), options=Options(**opts))
    # measure one tile's peak on the GPU, then leave room for about three
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    one = Options(device="cuda", batch_size=1, **opts)
    segment_raster(src, model, str(tmp_path / "one.tif"), options=one)
    per_tile = torch.cuda.max_memory_allocated() - base
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(0, free - 3 * per_tile - 64 * 2**20), dtype=torch.uint8, device="cuda")
    logs: list = []
    try:
        res = segment_raster(
            src, model, str(tmp_path / "gpu.tif"),
            options=Options(device="cuda", batch_size=32, **opts),
            reporter=Reporter(warn=logs.append),
        )  # fmt: skip
    finally:
        del hog
        torch.cuda.empty_cache()
    assert 1 <= res.batch_size < 32 and any("ran out of memory" in m for m in logs)
    assert f"Set BATCH_SIZE to {res.batch_size}" in logs[-1]
    gpu, ref = read_raster(res.output), read_raster(cpu.output)
    assert (gpu == ref).mean() > 0.99  # fp16 autocast may flip near-ties


def test_onnx_runtime_runs_pt_models_on_the_cpu_beside_a_gpu(tmp_path):
    """RUNTIME onnx with DEVICE auto takes the CPU (ONNX runs .pt models there only); with
    DEVICE cuda it says which setting to change."""
    from mapseg.core.errors import MapSegError
    from mapseg.core.model.onnxnet import onnxruntime_available

    if not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    model = trained_model(tmp_path / "m.pt", steps=60)
    src = write_raster(tmp_path / "in.tif", blobs(96, 96, seed=3)[0], geotransform=GT)
    res = segment_raster(src, model, str(tmp_path / "a.tif"), options=Options(runtime="onnx"))
    assert res.device == "cpu" and res.runtime.startswith("ONNX Runtime")
    with pytest.raises(MapSegError, match="RUNTIME onnx runs .pt models on the CPU only"):
        opts = Options(runtime="onnx", device="cuda")
        segment_raster(src, model, str(tmp_path / "b.tif"), options=opts)
    assert not (tmp_path / "b.tif").exists()

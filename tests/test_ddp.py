"""Data-parallel Train Model with real torch.distributed: two CPU processes on the gloo backend,
started the way Train Model's cuda_ddp device starts one process per GPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import write_raster
from segment_models import blobs

pytest.importorskip("torch.distributed")

GT = (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0)
MINUTES = 0.25  # the same training time for one process and for two


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    img, truth = blobs(192, 192, seed=1)
    src = write_raster(folder / "img.tif", img, geotransform=GT)
    labels = write_raster(folder / "labels.tif", (truth * 4 + 3).astype(np.uint8), geotransform=GT)
    return folder, src, labels


def _job(src: str, labels: str, output, epochs: int = 200, minutes: float = MINUTES):
    from mapseg.core.train.job import TrainJob
    from mapseg.core.train.loop import FitConfig

    fit = FitConfig(epochs=epochs, batch_size=4, learning_rate=3e-3, device="cpu",
                    max_minutes=minutes)  # fmt: skip
    return TrainJob(
        images=[src], label_rasters=[labels], output=str(output), architecture="unet",
        arch_kwargs={"base_width": 8}, tile_size=64, fit=fit,
    )  # fmt: skip


def test_two_processes_train_one_model_like_one_process(scene, tmp_path):
    from mapseg.core.distributed.launch import train_ddp
    from mapseg.core.progress import Reporter
    from mapseg.core.train.job import train_model

    folder, src, labels = scene
    single = train_model(_job(src, labels, tmp_path / "single.pt"), Reporter())
    out_dir = tmp_path / "ddp"
    out_dir.mkdir()
    trace = tmp_path / "trace"
    trace.mkdir()
    progress: list = []
    meta = train_ddp(
        _job(src, labels, out_dir / "model.pt"), Reporter(progress=progress.append),
        processes=2, device="cpu", trace=str(trace),
    )  # fmt: skip
    # the weights are the same on both ranks after every step
    steps = [(trace / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(steps[0]) >= 20
    assert steps[0] == steps[1]
    # one model file, written by rank 0, saying how it was trained
    assert os.listdir(out_dir) == ["model.pt"]
    assert meta["training"]["distributed"] == {"processes": 2, "backend": "gloo"}
    assert meta["training"]["stop_reason"] == "time"  # both ranks stopped on the same step
    assert progress and max(progress) > 90  # rank 0's progress reached the caller
    # as good as one process given the same data and time
    assert single["metrics"]["miou"] > 0.8
    assert abs(meta["metrics"]["miou"] - single["metrics"]["miou"]) <= 0.05


def test_cancel_reaches_every_process_and_keeps_the_best_model(scene, tmp_path):
    from mapseg.core.distributed.launch import train_ddp
    from mapseg.core.progress import Reporter

    _, src, labels = scene
    seen: list = []
    reporter = Reporter(progress=seen.append, is_canceled=lambda: bool(seen) and seen[-1] > 40)
    meta = train_ddp(
        _job(src, labels, tmp_path / "model.pt", epochs=6, minutes=0),
        reporter, processes=2, device="cpu",
    )  # fmt: skip
    assert meta["training"]["stopped_early"]
    assert meta["training"]["stop_reason"] == "canceled"
    assert 1 <= meta["training"]["epochs_run"] < 6
    assert os.listdir(tmp_path) == ["model.pt"]


def test_label_free_is_refused_before_any_process_starts(scene, tmp_path):
    from dataclasses import replace

    from mapseg.core.distributed.launch import train_ddp
    from mapseg.core.errors import MapSegError
    from mapseg.core.progress import Reporter

    _, src, labels = scene
    job = replace(_job(src, labels, tmp_path / "model.pt"), label_rasters=[])
    with pytest.raises(MapSegError, match="needs labels"):
        train_ddp(job, Reporter(), processes=2, device="cpu")
    assert not os.listdir(tmp_path)


def test_train_model_cuda_ddp_without_gpus_is_a_clear_error(scene, tmp_path, provider):
    """DEVICE cuda_ddp reaches the launcher through Train Model; with no GPU it says so."""
    import torch
    from conftest import run_alg
    from qgis.core import QgsProcessingException

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: cuda_ddp would train")
    _, src, labels = scene
    params = {
        "INPUT": [src], "LABELS": [labels], "DEVICE": "cuda_ddp", "EPOCHS": 1,
        "OUTPUT_MODEL": str(tmp_path / "model.pt"),
    }  # fmt: skip
    with pytest.raises(QgsProcessingException, match="cuda_ddp needs CUDA GPUs"):
        run_alg("trainmodel", params)
    assert not os.listdir(tmp_path)


# -- a rank that runs out of GPU memory ---------------------------------------------------------
# CUDA's out-of-memory error cannot be provoked on a CPU, so rank 1's trainer raises PyTorch's
# own torch.cuda.OutOfMemoryError from its forward pass from step ``at`` on, as a full GPU
# would. Everything else (gloo all-reduces, fit, the model file) is the real run.


def _oom_trainer_class():
    import torch

    from mapseg.core.distributed.ddp import DistributedTrainer

    class OomTrainer(DistributedTrainer):
        def _backward(self, x, y):
            if self.group.rank == 1 and self.steps >= self.group.oom_at:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test)")
            return super()._backward(x, y)

    return OomTrainer


def _oom_rank(rank: int, world: int, port: int, job_args: tuple, oom_at: int, folder: str):
    """One rank of a two-process run in which rank 1 runs out of memory at step ``oom_at``."""
    import dataclasses
    import datetime
    import json

    import torch
    import torch.distributed as dist

    from mapseg.core.distributed.ddp import DataParallel
    from mapseg.core.errors import MapSegError
    from mapseg.core.progress import Reporter
    from mapseg.core.train.job import train_model

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a short timeout: without the agreed stop, the other rank's all-reduce fails, not hangs
    timeout = datetime.timedelta(seconds=30)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    group = DataParallel(rank, world, "cpu")
    group.oom_at = oom_at
    trainer = _oom_trainer_class()
    group.trainer = lambda *a: trainer(group, *a)
    job = _job(*job_args[:2], os.path.join(folder, f"model{rank}.pt"), epochs=job_args[2])
    job = dataclasses.replace(job, fit=dataclasses.replace(job.fit, distributed=group))
    warnings: list = []
    try:
        meta = train_model(job, Reporter(warn=warnings.append))
        training = meta["training"]
        outcome = {"stop": training["stop_reason"], "epochs": training["epochs_run"],
                   "warnings": warnings}  # fmt: skip
    except MapSegError as e:
        outcome = {"error": str(e)}
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(outcome, f)
    dist.barrier()
    dist.destroy_process_group()


def _run_oom(tmp_path, src: str, labels: str, oom_at: int, epochs: int) -> list:
    import json
    import time

    import torch.multiprocessing as mp

    from mapseg.core.distributed.launch import _free_port

    args = (2, _free_port(), (src, labels, epochs), oom_at, str(tmp_path))
    ctx = mp.start_processes(_oom_rank, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        assert time.monotonic() < deadline, "the ranks did not finish: one waits for the other"
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_a_rank_out_of_memory_stops_every_rank_on_the_same_step(scene, tmp_path):
    from mapseg.core.progress import Reporter
    from mapseg.core.train.job import train_model

    _, src, labels = scene
    # steps of one epoch, from a one-epoch run of the same job in this process
    one = train_model(_job(src, labels, tmp_path / "one.pt", epochs=1, minutes=0), Reporter())
    per_epoch = one["history"][0]["steps"]
    assert per_epoch >= 2
    # out of memory in the second epoch: both ranks keep the first epoch's model
    runs = _run_oom(tmp_path, src, labels, oom_at=per_epoch + 1, epochs=4)
    for outcome in runs:
        assert outcome.get("stop") == "memory", outcome
        assert outcome["epochs"] == 1
    assert any("ran out of memory" in w for w in runs[0]["warnings"])
    assert (tmp_path / "model0.pt").exists()


def test_a_rank_out_of_memory_before_any_model_is_an_error_on_every_rank(scene, tmp_path):
    _, src, labels = scene
    runs = _run_oom(tmp_path, src, labels, oom_at=0, epochs=2)
    for outcome in runs:
        assert "ran out of memory even with one tile per step" in outcome.get("error", ""), outcome
    assert not (tmp_path / "model0.pt").exists()
    assert not (tmp_path / "model1.pt").exists()

"""Train Model on several processes: data-parallel training with ``torch.distributed``.

Every rank runs the same ``core.train.job.train_model`` (labels, tiles, split and initial
weights are deterministic, and rank 0's weights are broadcast at the start, as DDP does), with
``FitConfig.distributed`` set to a ``DataParallel`` group that changes three things in
``core.train.loop.fit``:

- data: each rank draws its own random windows (its own seed), its share of each step's batch
  (``BATCH_SIZE`` is the batch of one step, shared out: the same steps, batch and learning rate
  as one process, N times less work per process; raise it N-fold to fill N GPUs); only rank 0
  validates (the others score one tile, to stay in step cheaply), logs and writes the model;
- steps: ``DistributedTrainer.agree`` all-reduces, in one flat buffer per step, the gradients
  (averaged over the ranks that had a loss: a rank without one still takes the step), the float
  buffers (BatchNorm statistics; on CUDA the layers are ``SyncBatchNorm``, which PyTorch has
  only on GPUs) and the loss. Every rank then applies the same update, so the weights stay
  identical on every rank after every step. This is DistributedDataParallel's all-reduce done
  once per step rather than overlapped with the backward pass in buckets: a step that a rank
  skips (no labelled pixel, a non-finite loss) or splits (a CUDA out-of-memory retry) cannot
  make the ranks wait for each other forever, and a rank that runs out of memory even for one
  sample says so in that step's all-reduce, so every rank stops on the same step;
- time: ``AgreedClock`` agrees on a cancel, the time limit and the share of the time budget used
  (rank 0's clock drives the learning-rate schedule), so every rank stops after the same step.

``train_from_config`` is ``python -m mapseg train CONFIG.json``: under ``torchrun`` (RANK,
WORLD_SIZE, MASTER_ADDR/PORT set) it is one rank of such a run, NCCL on CUDA and gloo on CPU;
alone, a plain Train Model run. ``core.distributed.launch`` starts the ranks on one machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

from ..errors import MapSegError
from ..progress import Reporter
from ..train.loop import FitConfig, GpuMemoryError, Trainer
from ..train.schedule import Clock


class _Shard:
    """A rank's view of the training windows: its own random draws, its share of each step."""

    def __init__(self, windows, rank: int, world: int, seed: int):
        import numpy as np

        self.windows, self.world = windows, world
        self.rng = np.random.default_rng([seed, rank, 7919])  # independent streams per rank

    def __len__(self) -> int:
        return len(self.windows)

    def __getattr__(self, name):
        return getattr(self.windows, name)

    def epoch_batches(self, rng, batch_size: int, tile_p=None):
        """The epoch's steps, each with this rank's share of the step's ``batch_size``."""
        return self.windows.epoch_batches(self.rng, -(-batch_size // self.world), tile_p)


class _OneTile:
    """Validation tiles of a rank other than 0: one tile, scored only to stay in step."""

    def __init__(self, tiles):
        self.tiles = tiles

    def __len__(self) -> int:
        return min(1, len(self.tiles))

    def batches(self, indices, batch_size: int):
        return self.tiles.batches(range(len(self)), batch_size)


class DataParallel:
    """The process group as ``core.train.loop.fit`` sees it (``FitConfig.distributed``)."""

    def __init__(self, rank: int, world: int, device: str, trace: str = ""):
        self.rank, self.world, self.device, self.trace = rank, world, device, trace
        # the clock's view (canceled, time up, time share) sent with each step's all-reduce,
        # and what all ranks agreed on in the last one
        self.clock_out = [0.0, 0.0, 0.0]
        self.clock_in = [0.0, 0.0, 0.0]

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, train, val, seed: int):
        """(this rank's training windows, the tiles it validates on)."""
        return _Shard(train, self.rank, self.world, seed), (val if self.main else _OneTile(val))

    def trainer(self, net, cfg: FitConfig, criterion, device: str, total_steps: int) -> Trainer:
        return DistributedTrainer(self, net, cfg, criterion, device, total_steps)

    def clock(self, reporter: Reporter, max_minutes: float) -> Clock:
        return AgreedClock(self, reporter, max_minutes)

    def all_reduce(self, tensor):
        import torch.distributed as dist

        dist.all_reduce(tensor)
        return tensor

    def record(self, net) -> None:
        """Append the SHA-256 of this rank's weights to its trace file (tests compare ranks)."""
        digest = hashlib.sha256()
        for value in net.state_dict().values():
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        with open(os.path.join(self.trace, f"rank{self.rank}.txt"), "a") as f:
            f.write(digest.hexdigest() + "\n")


class DistributedTrainer(Trainer):
    """``core.train.loop.Trainer`` whose steps agree across the ranks (module docstring)."""

    def __init__(self, group: DataParallel, net, cfg, criterion, device, total_steps):
        import torch

        if group.device.startswith("cuda"):
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # layers replaced in place
        self.group = group
        self.out_of_memory = False  # this rank ran out of memory even for one sample
        _broadcast_from_main(net)
        super().__init__(net, cfg, criterion, device, total_steps)

    def step(self, *args, **kwargs):
        loss = super().step(*args, **kwargs)
        if self.group.trace:
            self.group.record(self.net)
        return loss

    def _backward_fitting_memory(self, x, y):
        # A rank that runs out of memory even for one sample must not leave the step alone:
        # the others would wait in the all-reduce until the backend's timeout. It takes part
        # in this step's all-reduce with the news, and every rank stops on the same step.
        try:
            return super()._backward_fitting_memory(x, y)
        except GpuMemoryError:
            self.out_of_memory = True
            return None

    def agree(self, loss):
        """All-reduce gradients, float buffers and the loss; None when no rank had a loss.

        Raises ``GpuMemoryError`` on every rank when any rank ran out of memory in this step.
        """
        import torch

        params = [p for p in self.net.parameters() if p.requires_grad]
        buffers = [b for b in self.net.buffers() if b.is_floating_point()]
        ok = loss is not None
        parts = [
            (p.grad if ok and p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in params
        ]
        parts += [b.detach().reshape(-1).float() for b in buffers]
        oom = float(self.out_of_memory)
        flags = [float(ok), float(loss) if ok else 0.0, oom] + self.group.clock_out
        parts.append(torch.tensor(flags, device=self.device))
        flat = self.group.all_reduce(torch.cat(parts))
        self.group.clock_in = [float(v) for v in flat[-3:]]
        if float(flat[-4]) > 0:
            self.opt.zero_grad(set_to_none=True)
            raise GpuMemoryError()
        count = float(flat[-6])
        if count == 0:
            return None
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = (flat[offset : offset + n] / count).view_as(p).to(p.dtype)
            offset += n
        with torch.no_grad():
            for b in buffers:
                n = b.numel()
                b.copy_((flat[offset : offset + n] / self.group.world).view_as(b))
                offset += n
        return float(flat[-5]) / count


def _broadcast_from_main(net) -> None:
    """Rank 0's weights and buffers on every rank (DDP does the same at construction)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in list(net.parameters()) + list(net.buffers()):
            dist.broadcast(tensor.data, src=0)


class AgreedClock(Clock):
    """A ``Clock`` whose stop and time share are the same on every rank after every step.

    Each step's all-reduce (``DistributedTrainer.agree``) carries every rank's cancel, rank
    0's time limit and rank 0's share of the time budget, so a stop is agreed one step after a
    rank sees it, with no extra round trip between the ranks.
    """

    def __init__(self, group: DataParallel, reporter: Reporter, max_minutes: float):
        super().__init__(reporter, max_minutes)
        self.group = group

    def time_share(self) -> float:
        return self.group.clock_in[2]

    def tick(self, done: float) -> str:
        local = super().tick(done)
        main = self.group.main  # rank 0's clock: the others may have waited for it to start
        own = self.elapsed() / self.limit if self.limit else 0.0
        self.group.clock_out = [
            float(local == "canceled"), float(main and local == "time"), own if main else 0.0
        ]  # fmt: skip
        agreed = self.group.clock_in
        return "canceled" if agreed[0] > 0 else "time" if agreed[1] > 0 else ""


# -- one rank ----------------------------------------------------------------------------------


def job_from_dict(data: dict):
    """A ``core.train.job.TrainJob`` from JSON (``fit`` a dict of ``FitConfig`` fields)."""
    from ..train.job import TrainJob

    known = {f.name for f in dataclasses.fields(TrainJob)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MapSegError(f"Unknown Train Model field(s) in the config: {', '.join(unknown)}.")
    fit = {k: v for k, v in (data.get("fit") or {}).items() if k != "distributed"}
    return TrainJob(**dict(data, fit=FitConfig(**fit)))


def job_to_dict(job) -> dict:
    data = dataclasses.asdict(dataclasses.replace(job, fit=FitConfig()))
    data["fit"] = {
        f.name: getattr(job.fit, f.name)
        for f in dataclasses.fields(FitConfig)
        if f.name != "distributed"
    }
    return data


def rank_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    env = os.environ
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))


def run_rank(config: dict, reporter: Reporter) -> str:
    """One rank of a data-parallel Train Model run; rank 0 writes the model file."""
    import torch
    import torch.distributed as dist

    rank, world, local = rank_env()
    job = job_from_dict(config["job"])
    cuda = config.get("device", "cuda" if torch.cuda.is_available() else "cpu") == "cuda"
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    scratch = tempfile.mkdtemp(prefix="mapseg-rank-")
    try:
        group = DataParallel(rank, world, device, config.get("trace", ""))
        output = job.output if group.main else os.path.join(scratch, "model.pt")
        fit = dataclasses.replace(job.fit, device=device, distributed=group)
        job = dataclasses.replace(job, output=output, fit=fit)
        _check_labels(job)
        from ..train.job import train_model

        train_model(job, reporter if group.main else Reporter())
        if group.main:
            _record_world(job.output, world, "nccl" if cuda else "gloo")
        dist.barrier()
        return job.output if group.main else ""
    finally:
        dist.destroy_process_group()
        shutil.rmtree(scratch, ignore_errors=True)


def _check_labels(job) -> None:
    if not job.label_rasters and not job.polygons:
        raise MapSegError(
            "Training on several GPUs (DistributedDataParallel) needs labels (LABELS or "
            "LABEL_POLYGONS); a label-free model trains on one device: choose auto, cpu or cuda."
        )


def _record_world(path: str, world: int, backend: str) -> None:
    """Say in the model file how many processes trained it."""
    from ..model.modelfile import load_model, save_model

    meta, state = load_model(path)
    meta["training"]["distributed"] = {"processes": world, "backend": backend}
    save_model(path, meta, state)


def train_from_config(path: str, reporter: Reporter) -> str:
    """``python -m mapseg train CONFIG.json``: a rank under torchrun, else a plain run.

    CONFIG holds ``core.train.job.TrainJob`` fields (``images``, ``label_rasters`` or
    ``polygons``/``class_field``, ``output``, ``architecture``, ``fit``: ``FitConfig`` fields),
    or ``{"job": {...}, "device": "cuda" | "cpu"}``. Returns the model file's path.
    """
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if "job" not in config:
        config = {"job": config}
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        events = config.get("events")
        return run_rank(config, _event_reporter() if events else reporter)
    from ..train.job import train_model

    job = job_from_dict(config["job"])
    train_model(job, reporter)
    return job.output


EVENT = "MAPSEG-EVENT "


def _event_reporter() -> Reporter:
    """Rank 0 under ``core.distributed.launch``: progress and log as JSON lines on stdout;
    the launcher's cancel arrives as a file (``MAPSEG_CANCEL_FILE``)."""
    cancel = os.environ.get("MAPSEG_CANCEL_FILE", "")

    def emit(kind: str):
        def send(value) -> None:
            print(EVENT + json.dumps({kind: value}), flush=True)

        return send

    return Reporter(
        progress=emit("progress"),
        is_canceled=lambda: bool(cancel) and os.path.exists(cancel),
        log=emit("info"),
        warn=emit("warn"),
    )

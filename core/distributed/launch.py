"""Start a data-parallel Train Model run on this machine: one process per GPU (or per CPU
process on the gloo backend) and the parent relaying progress, log and cancel.

Each rank is ``python -m mapseg train CONFIG.json`` with torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), exactly what ``torchrun --nproc_per_node G``
starts, so one code path serves Train Model's ``cuda_ddp`` device and clusters. Processes are
started from the Python that runs MapSeg, never forked from QGIS (``torch.multiprocessing``'s
spawn would re-execute QGIS's own binary). Rank 0 sends progress and log lines as JSON on its
stdout; a cancel is a file every rank's agreed clock sees through rank 0 (``core.distributed.
ddp.AgreedClock``), so all ranks stop after the same step and rank 0 writes the best model so
far, as a one-process run does. A rank that fails stops the others; its message is raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ..errors import CanceledError, MapSegError
from ..io.raster import check_destination
from ..progress import Reporter
from .ddp import EVENT, _check_labels, job_to_dict

PLUGIN_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
POLL_S = 0.2


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def python_executable() -> str:
    """The Python running MapSeg (inside QGIS ``sys.executable`` may be QGIS itself)."""
    if os.path.basename(sys.executable).lower().startswith("python"):
        return sys.executable
    from ...install.interpreter import find_python

    return str(find_python())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_ddp(
    job, reporter: Reporter, processes: int = 0, device: str = "cuda", trace: str = ""
) -> dict:
    """Train ``job`` (a ``core.train.job.TrainJob``) on ``processes`` ranks of this machine
    (0: one per CUDA GPU); ``device`` cuda (NCCL) or cpu (gloo). Returns the model's metadata."""
    _check_labels(job)
    check_destination(job.output, list(job.images))
    if device == "cuda":
        gpus = gpu_count()
        if gpus == 0:
            raise MapSegError(
                "DEVICE cuda_ddp needs CUDA GPUs, and PyTorch sees none here. Choose auto, cpu "
                "or cuda."
            )
        processes = processes or gpus
    processes = max(1, processes or 1)
    folder = tempfile.mkdtemp(prefix="mapseg-ddp-")
    try:
        config = os.path.join(folder, "config.json")
        with open(config, "w", encoding="utf-8") as f:
            settings = {"device": device, "events": True, "trace": trace}
            json.dump(dict(settings, job=job_to_dict(job)), f)
        reporter.info(f"Training on {processes} processes ({device}, data parallel).")
        _run_ranks(config, processes, os.path.join(folder, "cancel"), folder, reporter)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    from ..model.modelfile import load_model

    return load_model(job.output)[0]


def _rank_env(rank: int, world: int, port: int, cancel: str) -> dict:
    path = [PLUGIN_PARENT] + [p for p in sys.path if p]
    # the cores shared out between the ranks, as torchrun does (oversubscribed OpenMP threads
    # make every rank wait on the slowest at each all-reduce)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // world))
    return dict(
        os.environ,
        OMP_NUM_THREADS=threads,
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MAPSEG_CANCEL_FILE=cancel,
        PYTHONPATH=os.pathsep.join(dict.fromkeys(path)),
    )  # fmt: skip


def _run_ranks(config: str, world: int, cancel: str, folder: str, reporter: Reporter) -> None:
    """Start the ranks, relay rank 0's events, pass a cancel on, wait; raise a rank's error."""
    port, python = _free_port(), python_executable()
    with contextlib.ExitStack() as stack:
        logs = [
            stack.enter_context(open(os.path.join(folder, f"rank{r}.log"), "w+"))
            for r in range(world)
        ]
        procs = [
            subprocess.Popen(
                [python, "-m", "mapseg", "train", config],
                env=_rank_env(rank, world, port, cancel),
                stdout=subprocess.PIPE if rank == 0 else log, stderr=log, text=True,
            )
            for rank, log in enumerate(logs)
        ]  # fmt: skip
        stack.callback(_stop, procs)
        events: queue.Queue = queue.Queue()
        relay = threading.Thread(target=_relay, args=(procs[0].stdout, events), daemon=True)
        relay.start()
        _wait(procs, cancel, events, reporter)
        relay.join(timeout=5)
        _deliver(events, cancel, reporter)
        _stop(procs)
        # the rank that failed first exited with an error; the others were stopped by a signal
        failed = sorted(
            (r for r, p in enumerate(procs) if p.returncode != 0),
            key=lambda r: procs[r].returncode < 0,
        )
        if failed:
            _raise_failure(failed[0], logs[failed[0]])


def _stop(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _wait(procs: list, cancel: str, events: queue.Queue, reporter: Reporter) -> None:
    """Until every rank exits, or one fails (the others are then stopped)."""
    while any(p.poll() is None for p in procs):
        _deliver(events, cancel, reporter)
        if reporter.canceled() and not os.path.exists(cancel):
            open(cancel, "w").close()  # every rank stops after the same step (agreed clock)
        if any(p.poll() not in (None, 0) for p in procs):
            time.sleep(1.0)  # let the failing rank's message reach its log
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(POLL_S)


def _relay(stream, events: queue.Queue) -> None:
    """Rank 0's events from its stdout (read on a thread; delivered on the caller's)."""
    for line in stream:
        if line.startswith(EVENT):
            events.put(json.loads(line[len(EVENT) :]))


def _deliver(events: queue.Queue, cancel: str, reporter: Reporter) -> None:
    while not events.empty():
        event = events.get()
        if "progress" in event:
            try:
                reporter.fraction(event["progress"] / 100.0)  # rank 0 sends 0..100
            except CanceledError:
                open(cancel, "a").close()
        elif "info" in event:
            reporter.info(event["info"])
        elif "warn" in event:
            reporter.warn(event["warn"])


def _raise_failure(rank: int, log) -> None:
    log.flush()
    log.seek(0)
    lines = [line.rstrip() for line in log.read().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors and "canceled" in errors[-1].lower():
        raise CanceledError()
    if errors:
        raise MapSegError(errors[-1][len("error: ") :])
    tail = "\n".join(lines[-15:])
    raise MapSegError(f"Training process {rank} failed:\n{tail}")

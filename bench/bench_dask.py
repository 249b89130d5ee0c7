"""Segment Raster on a Dask cluster: speed-up with 1 and 2 workers, and the client's memory.

Starts a real ``dask scheduler`` and ``dask worker`` processes (one thread each, as many as
asked) on 127.0.0.1, and runs the client (``core.distributed.dask_segment``) in a child process
whose peak RSS (VmHWM) is its own: the scheduler and workers are other processes.

1. Speed-up: the same ``--size``^2 3-band byte raster (a VRT mosaic of one textured GeoTIFF,
   ``bench_segment_memory``'s tiny unet) through 1 and through 2 workers; each cluster first
   segments one 1000^2 piece so worker start-up and model loading are not timed. Target >= 1.7x
   with 2 workers on 2 cores. A local run (no Dask, one thread) is the reference.
2. Client memory: ``--memory-sizes`` (4000^2 and 16000^2) through the 2-worker cluster; target
   16000^2 peak within 1.2x of 4000^2 (the client holds a bounded number of blocks).

Usage: .venv/bin/python bench/bench_dask.py [--size 8000] [--memory-sizes 4000 16000]
       [--block 4096] [--tile 256] [--skip-memory] [--skip-local]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build" / "pkg"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_segment_memory import make_model, make_mosaic, make_piece, peak_rss_mb  # noqa: E402

DASK = str(ROOT / ".venv" / "bin" / "dask")
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "build" / "pkg"), OMP_NUM_THREADS="1")


def child(args) -> None:
    """One Segment Raster run: on the cluster at ``--client`` (or locally for 'local')."""
    from mapseg.core.distributed.dask_segment import Cluster, segment_on_cluster
    from mapseg.core.infer.segment import Options, segment_raster

    address, raster, model, output = args.client
    opts = Options(tile_size=args.tile, overlap=args.tile // 8, device="cpu")
    start = time.perf_counter()
    if address == "local":
        res = segment_raster(raster, model, output, options=opts)
    else:
        cluster = Cluster(address, block_size=args.block)
        res = segment_on_cluster(raster, model, output, cluster, options=opts)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "tiles": res.tiles,
                      "client_cpu": usage.ru_utime + usage.ru_stime}))  # fmt: skip


def run_client(address: str, raster: str, model: str, output: str, args, block=0) -> dict:
    cmd = [sys.executable, __file__, "--client", address, raster, model, output]
    cmd += ["--tile", str(args.tile), "--block", str(block or args.block)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"client failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Cluster:
    """A scheduler and ``n`` one-thread workers on 127.0.0.1 (stopped on exit)."""

    def __init__(self, n: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        quiet = dict(env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = [
            subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], **quiet)
        ]  # fmt: skip
        for _ in range(n):
            self.procs.append(
                subprocess.Popen([DASK, "worker", self.address, "--nthreads", "1",
                                  "--no-dashboard", "--host", "127.0.0.1"], **quiet)
            )  # fmt: skip
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=120)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every worker process so far."""
        from distributed import Client

        def used() -> float:
            import psutil

            return sum(psutil.Process().cpu_times()[:2])

        with Client(self.address, timeout=60) as client:
            return sum(client.run(used).values())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            p.wait(timeout=30)


def warm_up(cluster, piece: str, model: str, tmp: str, args) -> None:
    """Every worker imports the runtime and opens the model before anything is timed."""
    run_client(cluster.address, piece, model, os.path.join(tmp, "warm.tif"), args, block=256)


def speedup(tmp: str, piece: str, model: str, args) -> dict:
    raster = make_mosaic(tmp, piece, args.size)
    times = {}
    for n in (1, 2):
        with Cluster(n) as cluster:
            warm_up(cluster, piece, model, tmp, args)
            before = cluster.cpu_seconds()
            r = run_client(cluster.address, raster, model, os.path.join(tmp, f"w{n}.tif"), args)
            r["cpu"] = cluster.cpu_seconds() - before
        times[n] = r
        print(
            f"{args.size}^2 through {n} worker(s): {r['seconds']:.1f} s, {r['tiles']} tiles "
            f"computed, workers' CPU {r['cpu']:.1f} s ({r['cpu'] / r['seconds']:.2f} cores "
            f"busy), client CPU {r['client_cpu']:.1f} s, peak RSS {r['peak_mb']:.0f} MB",
            flush=True,
        )
    wall = times[1]["seconds"] / times[2]["seconds"]
    # on a shared machine the wall-clock ratio says how much CPU the others left us; the CPU
    # ratio says what the same work costs on 2 workers (1.0: no overhead)
    cost = times[2]["cpu"] / times[1]["cpu"]
    print(f"speed-up 2 vs 1 worker: {wall:.2f}x (target >= 1.7x); CPU seconds 2 vs 1 worker: "
          f"{cost:.2f}x; load average now {os.getloadavg()[0]:.1f}")  # fmt: skip
    if not args.skip_local:
        r = run_client("local", raster, model, os.path.join(tmp, "local.tif"), args)
        print(f"{args.size}^2 locally (no Dask, one thread): {r['seconds']:.1f} s, "
              f"{r['tiles']} tiles, peak RSS {r['peak_mb']:.0f} MB")  # fmt: skip
    return times


def memory(tmp: str, piece: str, model: str, args) -> None:
    peaks = {}
    with Cluster(2) as cluster:
        warm_up(cluster, piece, model, tmp, args)
        for size in args.memory_sizes:
            raster = make_mosaic(tmp, piece, size)
            out = os.path.join(tmp, f"m{size}.tif")
            r = run_client(cluster.address, raster, model, out, args)
            os.remove(out)
            peaks[size] = r["peak_mb"]
            print(f"{size}^2 through 2 workers: client peak RSS {r['peak_mb']:.0f} MB, "
                  f"{r['seconds']:.0f} s", flush=True)  # fmt: skip
    small, big = min(peaks), max(peaks)
    print(f"client peak ratio {big}/{small}: {peaks[big] / peaks[small]:.3f} (target <= 1.2)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", nargs=4, metavar=("ADDRESS", "RASTER", "MODEL", "OUTPUT"))
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    if args.client:
        child(args)
        return
    tmp = tempfile.mkdtemp(prefix="mapseg-bench-dask-")
    try:
        model, piece = make_model(tmp, args.tile), make_piece(tmp)
        print(f"[tiny unet base_width 2, tile {args.tile}, blocks of {args.block} px, "
              f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}]")  # fmt: skip
        speedup(tmp, piece, model, args)
        if not args.skip_memory:
            memory(tmp, piece, model, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

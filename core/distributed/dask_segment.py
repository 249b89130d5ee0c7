"""Segment Raster on a Dask cluster (``DASK_SCHEDULER``, ``python -m mapseg segment --scheduler``).

``segment_on_cluster`` reads as its outline: check the request exactly as the local run does
(``core.infer.segment.open_inputs``) -> plan the tiles on the client (the same ``Plan``) ->
connect to the scheduler and send the model file's bytes once (workers share them) -> for a
label-free model, fit the run's k-means once on a worker (the same sampled tiles as the local
run, so segment ids agree in every block) -> cut the output into large blocks and keep a bounded
number of block tasks in flight, writing each block into the output as it completes -> sieve
(SMOOTHING) -> publish the outputs together (``core.io.outputs.OutputSet``).

A worker reads its block plus the halo its tiles need straight from the input path, so that
path must open on every worker (a shared file system, ``/vsicurl/``, ``/vsis3/``). The client
holds at most ``in_flight`` finished blocks, so its memory does not grow with the raster. A
cancel cancels the futures and writes nothing; a worker that dies has its blocks rerun by Dask.
The result equals the local run's pixel for pixel (``core.distributed.blocks``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from itertools import islice

from osgeo import gdal

from ..errors import MapSegError
from ..infer.plan import PROB_NODATA, plan_tiles, processed_source
from ..infer.runtime import runtime_choice
from ..infer.segment import Options, Result, open_inputs
from ..infer.segments import sieve
from ..io.checksum import file_sha256
from ..io.gdal_errors import engine_call
from ..io.outputs import OutputSet
from ..io.styled_outputs import style_classes, style_range
from ..io.tiling import window_geotransform
from ..progress import Reporter
from .blocks import BlockJob, BlockResult, block_windows, fit_on_worker, segment_block
from .portable import portable_path, reachable_path

DEFAULT_BLOCK = 4096
BLOCK_ENV = "MAPSEG_DASK_BLOCK_SIZE"
POLL_S = 0.2
INSTALL = "python3 -m pip install dask distributed"
PROB_DESCRIPTIONS = {
    False: "probability of the winning class",
    True: "segment assignment confidence",  # label-free
}


@dataclass
class Cluster:
    """Where and how the blocks run."""

    scheduler: str  # e.g. tcp://10.0.0.5:8786
    # output pixels per block side (whole output tiles); $MAPSEG_DASK_BLOCK_SIZE sets the default
    block_size: int = field(default_factory=lambda: int(os.environ.get(BLOCK_ENV, DEFAULT_BLOCK)))
    in_flight: int = 0  # blocks submitted and not yet written; 0: twice the workers' threads
    retries: int = 2  # reruns of a block whose task failed (a dead worker's blocks always rerun)
    connect_timeout: float = 30.0


@engine_call
def segment_on_cluster(
    input_path: str,
    model_path: str | None,
    output: str,
    cluster: Cluster | str,
    probability: str | None = None,
    extent=None,
    options: Options | None = None,
    reporter: Reporter | None = None,
) -> Result:
    """``core.infer.segment.segment_raster`` with the blocks run on the Dask ``cluster``."""
    cluster = Cluster(cluster) if isinstance(cluster, str) else cluster
    opts = dataclasses.replace(options or Options())
    opts.runtime = runtime_choice(opts.runtime)  # the client's choice holds on every worker
    reporter = reporter or Reporter()
    started = time.perf_counter()
    input_path = reachable_path(input_path)
    inp = open_inputs(input_path, model_path, output, probability, extent, opts, reporter)
    if inp.resample:
        raise MapSegError(
            "RESAMPLE_TO_MODEL is not available on a Dask cluster yet: leave DASK_SCHEDULER "
            "empty to resample on this machine, or resample the input first (gdalwarp -tr)."
        )
    tmp = tempfile.mkdtemp(prefix="mapseg-dask-")
    try:
        job = plan_job(inp, input_path, opts, tmp, reporter)
        with connect(cluster, reporter) as client:
            tiles, runtimes = run_job(client, job, inp, cluster, reporter)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plan = job.plan
    return Result(
        inp.dest, inp.prob_dest, tiles, plan.tile, plan.overlap, plan.batch, str(opts.device),
        time.perf_counter() - started, plan.window, warnings=inp.warnings,
        segments=plan.segments, bands=inp.bands, runtime=", ".join(sorted(runtimes)),
    )  # fmt: skip


def on_cluster(scheduler: str):
    """``segment_raster``'s signature, run on the Dask scheduler at ``scheduler``."""
    return functools.partial(segment_on_cluster, cluster=Cluster(scheduler))


def plan_job(inp, input_path: str, opts: Options, tmp: str, rep: Reporter) -> BlockJob:
    """The run's plan (as the local run plans it) with a source path every worker can open."""
    source = processed_source(
        input_path, inp.info.count, inp.bands, opts.resolution, inp.factor, tmp, rep
    )
    source = dataclasses.replace(source, path=portable_path(source.path, tmp))
    k = int(opts.num_segments) if inp.labelfree else 0
    # the batch is the workers' (their device's default unless BATCH_SIZE is given)
    plan = plan_tiles(inp, source, inp.tile, inp.overlap, int(opts.batch_size or 1), k)
    plan.smoothing = int(opts.smoothing)
    sha = file_sha256(inp.model.path)
    suffix = os.path.splitext(inp.model.path)[1].lower() or ".pt"
    return BlockJob(plan, opts, sha, suffix, with_prob=inp.prob_dest is not None)


@contextlib.contextmanager
def connect(cluster: Cluster, rep: Reporter):
    """A Dask client of ``cluster.scheduler`` with at least one worker; closed on exit."""
    try:
        from distributed import Client
    except ImportError:
        raise MapSegError(f"DASK_SCHEDULER needs dask and distributed: {INSTALL}.") from None
    try:
        client = Client(cluster.scheduler, timeout=cluster.connect_timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise MapSegError(
            f"Cannot reach the Dask scheduler at '{cluster.scheduler}' ({err}). Start one "
            f"(dask scheduler) with workers (dask worker {cluster.scheduler}), check the "
            "address, or leave DASK_SCHEDULER empty to segment on this machine."
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=cluster.connect_timeout)
        except TimeoutError:
            raise MapSegError(
                f"The Dask scheduler at '{cluster.scheduler}' has no worker: start some with "
                f"dask worker {cluster.scheduler}."
            ) from None
        threads = client.nthreads()
        rep.info(
            f"Dask scheduler {cluster.scheduler}: {len(threads)} workers, "
            f"{sum(threads.values())} threads."
        )
        yield client
    finally:
        client.close()


def run_job(client, job: BlockJob, inp, cluster: Cluster, rep: Reporter) -> tuple[int, set]:
    """Send the model, fit the segments (label-free), run and write the blocks."""
    with open(inp.model.path, "rb") as f:
        # a task holding the bytes, not scattered data: when the workers holding scattered data
        # die, Dask cancels every task that needs it ("already forgotten",
        # dask/distributed#3149); a task's result is simply computed again
        model = client.submit(_model_bytes, f.read(), key=_key("model"), pure=False)
    main = rep
    if job.plan.segments:
        fit = client.submit(fit_on_worker, job, model, key=_key("fit"), retries=cluster.retries)
        rep.info(f"Fitting {job.plan.segments} segments on tiles sampled across the extent.")
        job.segmenter = _gather_one(client, fit, rep)
        main = rep.sub(0.1, 1.0)
    try:
        return write_blocks(client, job, model, inp, cluster, main)
    finally:
        client.cancel([model])


def _model_bytes(data: bytes) -> bytes:
    """The model file's bytes, as a task's result (see ``run_job``)."""
    return data


def _key(what: str) -> str:
    return f"mapseg-{what}-{uuid.uuid4().hex[:12]}"


def _gather_one(client, future, rep: Reporter):
    """The future's result, polling for a cancel (which cancels the future)."""
    from distributed import wait

    try:
        while True:
            try:
                with client.as_current():  # wait() uses the current client
                    wait([future], timeout=POLL_S)
                return future.result()
            except TimeoutError:
                rep.check()
    except BaseException:
        client.cancel([future])
        raise


def write_blocks(client, job: BlockJob, model, inp, cluster: Cluster, rep: Reporter):
    """Run every block with a bounded number in flight, writing each into the outputs as it
    completes; the outputs are published only once all went well."""
    plan = job.plan
    geo = dict(
        geotransform=window_geotransform(plan.source.geotransform, plan.window),
        projection=plan.source.projection,
    )
    w, h = plan.window[2], plan.window[3]
    with OutputSet() as outputs:
        outs = [
            outputs.raster(
                inp.dest, w, h, plan.gdal_type, nodata=plan.nodata,
                color_table=plan.color_table, category_names=plan.category_names, **geo,
            )
        ]  # fmt: skip
        if inp.prob_dest:
            desc = PROB_DESCRIPTIONS[bool(plan.segments)]
            outs.append(
                outputs.raster(
                    inp.prob_dest, w, h, gdal.GDT_Float32, nodata=PROB_NODATA,
                    descriptions=[desc], **geo,
                )
            )  # fmt: skip
        sieving = plan.smoothing > 0
        blocks_rep = rep.sub(0.0, 0.9 if sieving else 1.0)
        counts = run_blocks(client, job, model, outs, cluster, blocks_rep)
        if sieving:
            sieve(outs[0], plan.smoothing, rep.sub(0.9, 1.0))
        # the same default styles as a local run: exactly the classes, a ramp over the range
        style_classes(outs[0], plan.values, plan.color_table, plan.category_names)
        if len(outs) > 1:
            style_range(outs[1])
        outputs.commit(rep)
    return counts


def run_blocks(client, job: BlockJob, model, outs: list, cluster: Cluster, rep: Reporter):
    """Submit the blocks through a window of ``in_flight`` tasks; write results as they come."""
    from distributed import wait

    blocks = block_windows(job.plan.window, cluster.block_size)
    limit = cluster.in_flight or 2 * max(1, sum(client.nthreads().values()))
    rep.info(
        f"{len(blocks)} blocks of up to {blocks[0][2]} x {blocks[0][3]} pixels, "
        f"at most {limit} in flight."
    )
    todo = iter(blocks)

    def submit(block):
        return client.submit(
            segment_block, job, model, block, key=_key(f"block-{block[0]}-{block[1]}"),
            retries=cluster.retries, pure=False,
        )  # fmt: skip

    pending = {submit(b) for b in islice(todo, limit)}
    done, tiles, runtimes = 0, 0, set()
    try:
        rep.fraction(0.0)
        while pending:
            try:
                with client.as_current():
                    finished, pending = wait(pending, POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                rep.check()
                continue
            for future in finished:
                result = future.result()  # a failed block raises its error here
                _write(outs, result, job.plan.window)
                done, tiles = done + 1, tiles + result.tiles
                runtimes.add(result.runtime)
                pending |= {submit(b) for b in islice(todo, 1)}
            rep.fraction(done / len(blocks))
    except BaseException:
        client.cancel(list(pending))
        raise
    return tiles, runtimes


def _write(outs: list, result: BlockResult, window) -> None:
    """Write a finished block and drop it from GDAL's cache (client memory stays flat)."""
    x, y = result.window[0] - window[0], result.window[1] - window[1]
    for out, array in zip(outs, result.arrays()):
        out.write(array, x, y)
        out.ds.FlushCache()

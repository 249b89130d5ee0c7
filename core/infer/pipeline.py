"""The threaded tile pipeline: reader -> network -> blender/writer, with bounded queues.

The network runs on the calling thread; a reader thread reads, pads and normalises the next
tile batches while it runs, and a writer thread blends finished batches and writes final rows.
PyTorch, GDAL and numpy release the GIL in their heavy work, so the three overlap and the
pipeline runs at about the network's own speed. Each GDAL dataset is used by one thread only.

Memory stays flat whatever the raster size: the queues hold a few batches, the accumulator
holds one tile plus carried overlaps (see ``core.io.tiling``), and the writer keeps fewer than
``tile + block height`` rows of the (narrow, integer) result before writing whole GDAL blocks
and dropping them from GDAL's cache. The reader drops cached input blocks after each tile row.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, List, Sequence

import numpy as np
from osgeo import gdal

from ..errors import MapSegError
from ..io.raster import OutputRaster
from ..io.tiling import BlendAccumulator, TileGrid, Window, finalize_block
from ..io.windows import BandWindows
from ..progress import Reporter

_DONE = object()
POLL_S = 0.1


@dataclass
class Job:
    """What to segment: a raster path (opened per thread), its window and the tiling."""

    path: str
    grid: TileGrid
    window: Window
    band_stats: Sequence[dict]
    batch: int
    class_values: np.ndarray  # output value of network channel i
    nodata: float
    prob_nodata: float
    # label-free models: the network's channels are embeddings (not one per class), and
    # ``finalize(block) -> (ids, confidence)`` turns an emitted (C + 2, h, w) block into output
    channels: int = 0
    finalize: Callable[[np.ndarray], tuple] | None = None

    @property
    def n_channels(self) -> int:
        return self.channels or len(self.class_values)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless asked to stop; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


class Reader(threading.Thread):
    """Reads, reflect-pads and normalises tile batches: (tiles, x, invalid) on ``out``."""

    def __init__(self, job: Job, out: queue.Queue, stop: threading.Event, alloc: Callable):
        super().__init__(name="mapseg-reader", daemon=True)
        self.job, self.out, self.stop, self.alloc = job, out, stop, alloc
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # handed to the main thread, which re-raises it
            self.error = err
            self.stop.set()

    def _run(self) -> None:
        job, grid = self.job, self.job.grid
        ds = gdal.Open(job.path)
        reader = BandWindows(ds, job.band_stats)
        n_bands, t = len(reader.bands), grid.tile
        tiles = list(grid.tiles(job.window))
        row = tiles[0][0] if tiles else 0
        for start in range(0, len(tiles), job.batch):
            chunk = tiles[start : start + job.batch]
            x = self.alloc((len(chunk), n_bands, t, t))
            invalid = np.zeros((len(chunk), t, t), np.float32) if reader.maskable else None
            for k, (i, j) in enumerate(chunk):
                if i != row:  # the previous tile row is read: drop its blocks from GDAL's cache
                    ds.FlushCache()
                    row = i
                _, ok = reader.read(grid.tile_window(i, j), out=x[k])
                if invalid is not None:
                    invalid[k] = ~ok
            if self.stop.is_set() or not _put(self.out, (chunk, x, invalid), self.stop):
                return
        _put(self.out, _DONE, self.stop)
        ds = None


class RowWriter:
    """Collects final blocks of the window and writes whole GDAL block rows.

    Blocks come tile row by tile row; rows are written once complete *and* aligned to the
    output's block height, then flushed out of GDAL's cache, so no block is ever written twice
    (which would bloat a compressed GeoTIFF) and memory holds < tile + block-height rows.
    """

    def __init__(self, outputs: List[OutputRaster], dtypes: List, width: int, cap: int):
        self.outputs = outputs
        self.block_h = max(1, outputs[0].band().GetBlockSize()[1])
        cap += self.block_h
        self.bufs = [np.zeros((cap, width), dt) for dt in dtypes]
        self.top = 0  # output row of bufs[*][0]
        self.filled = 0  # rows of bufs filled so far
        self.strip_y = -1

    def put(self, x: int, y: int, arrays: Sequence[np.ndarray]) -> None:
        if y != self.strip_y:  # a new tile row: the previous one is complete
            self._write(aligned=True)
            self.strip_y = y
        h, w = arrays[0].shape
        r = y - self.top
        for buf, arr in zip(self.bufs, arrays):
            buf[r : r + h, x : x + w] = arr
        self.filled = max(self.filled, r + h)

    def _write(self, aligned: bool) -> None:
        n = self.filled - self.filled % self.block_h if aligned else self.filled
        if n <= 0:
            return
        for out, buf in zip(self.outputs, self.bufs):
            out.write(buf[:n], 0, self.top)
            out.ds.FlushCache()  # write the complete blocks and drop them from the cache
            rest = self.filled - n
            buf[:rest] = buf[n : self.filled]
        self.top += n
        self.filled -= n

    def close(self) -> None:
        self._write(aligned=False)


class Writer(threading.Thread):
    """Blends finished batches (tiles, weighted probs, invalid) and writes final rows."""

    def __init__(self, job: Job, inp: queue.Queue, stop: threading.Event, rows: RowWriter):
        super().__init__(name="mapseg-writer", daemon=True)
        self.job, self.inp, self.stop, self.rows = job, inp, stop, rows
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:
            self.error = err
            self.stop.set()

    def _emit(self, x: int, y: int, block: np.ndarray) -> None:
        job = self.job
        if job.finalize is not None:
            cls, prob = job.finalize(block)
        else:
            cls, prob = finalize_block(
                block,
                job.class_values,
                job.nodata,
                job.prob_nodata,
                with_prob=len(self.rows.bufs) > 1,
            )
        wx, wy = job.window[0], job.window[1]
        self.rows.put(x - wx, y - wy, (cls, prob)[: len(self.rows.bufs)])

    def _run(self) -> None:
        job = self.job
        acc = BlendAccumulator(job.grid, job.window, job.n_channels, self._emit)
        while not self.stop.is_set():
            try:
                item = self.inp.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is _DONE:
                break
            tiles, probs, invalid = item
            for k, (i, j) in enumerate(tiles):
                acc.add(i, j, probs[k], None if invalid is None else invalid[k])
        if acc.done:
            self.rows.close()
            self.finished = True


def run_pipeline(
    job: Job,
    outputs: List[OutputRaster],
    forward: Callable[[np.ndarray], np.ndarray],
    reporter: Reporter,
    alloc: Callable = lambda shape: np.empty(shape, np.float32),
    read_ahead: int = 2,
) -> int:
    """Segment ``job.window`` into ``outputs`` (class raster, optional probability raster).

    ``forward(x)`` maps a normalised (n, bands, T, T) batch to (n, C, T, T) softmax
    probabilities (or embeddings, with ``job.finalize``) multiplied by the blend window.
    Returns the number of tiles processed.
    Raises CanceledError / MapSegError; the threads are always stopped before returning.
    """
    total = job.grid.count(job.window)
    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=read_ahead)
    q_out: queue.Queue = queue.Queue(maxsize=2)
    dtypes = [gdal_to_numpy(o.band().DataType) for o in outputs]
    rows = RowWriter(outputs, dtypes, job.window[2], job.grid.tile)
    reader = Reader(job, q_in, stop, alloc)
    writer = Writer(job, q_out, stop, rows)
    done = 0
    reader.start()
    writer.start()
    try:
        reporter.fraction(0.0)
        while True:
            try:
                item = q_in.get(timeout=POLL_S)
            except queue.Empty:
                _raise_thread_error(reader, writer)
                reporter.check()
                continue
            if item is _DONE:
                break
            tiles, x, invalid = item
            probs = forward(x)
            _raise_thread_error(reader, writer)
            if not _put(q_out, (tiles, probs, invalid), stop):
                _raise_thread_error(reader, writer)
            done += len(tiles)
            reporter.fraction(done / max(total, 1))
        _put(q_out, _DONE, stop)
        writer.join()
        _raise_thread_error(reader, writer)
        if not writer.finished:
            raise MapSegError("Segmentation stopped before every tile was written.")
        return done
    finally:
        stop.set()
        reader.join()
        writer.join()


def _raise_thread_error(*threads) -> None:
    for t in threads:
        if t.error is not None:
            raise t.error


def gdal_to_numpy(gdal_type: int):
    from osgeo import gdal_array

    return np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(gdal_type))

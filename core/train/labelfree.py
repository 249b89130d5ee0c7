"""Label-free Train Model: self-supervised per-pixel feature encoder.

Method (distillation from filter-bank clusters, with two-view photometric consistency):
tiles are read from the rasters (each raster normalised with its own band statistics, the
``per-input`` normalisation Segment Raster applies too), the hand-made filter bank
(``core.model.clustering.filter_bank``) is computed on every tile and k-means with ``K0``
clusters on those features gives every pixel a pseudo-class. The network (a small U-Net)
learns to predict those pseudo-classes with cross-entropy from two photometrically different
views of the same (flipped/rotated) tile, plus a symmetric KL term that asks both views to give
the same class distribution. The network's ``K0`` output logits, normalised to unit length per
pixel, are the embedding: Segment Raster clusters them into N segments with k-means.

Optional PiCIE-style self-labelling (``self_label_steps``, ``core.train.picie``) lost ARI on
held-out scenes and is off by default (bench/RESULTS_label_free.md). The weights with the
lowest held-out loss are kept; a cancel or the time limit stops within a step and keeps them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import List, Sequence

import numpy as np

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.normalize import band_stats, sample_windows
from ..io.windows import BandWindows
from ..model.clustering import Segmenter, brightness, filter_bank
from ..progress import Reporter
from .augment import flip_rotate
from .report import preview_png
from .schedule import Clock, cpu_state, lr_lambda, seed_everything, warn_stopped

IGNORE = -1


@dataclass
class SelfSupConfig:
    steps: int = 300  # 0: ``epochs`` passes over the tiles
    epochs: int = 0
    batch_size: int = 8
    tile_size: int = 128
    learning_rate: float = 1e-3
    k0: int = 24  # pseudo-classes of the filter bank = embedding channels
    consistency: float = 1.0  # weight of the two-view KL term (0: plain distillation)
    max_tiles: int = 256  # tiles held in memory, spread over the rasters
    max_minutes: float = 0.0  # 0: no time limit
    eval_every: int = 25
    seed: int = 0
    device: str = "auto"
    self_label_steps: int = 0  # PiCIE-style steps after the distillation (0: none)


@dataclass
class SelfSupResult:
    state_dict: dict
    history: List[dict]
    seconds: float
    steps_run: int
    stopped_early: bool
    stop_reason: str
    device: str


def read_tiles(
    datasets: Sequence, bands, stats, size: int, count: int, shares: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` normalised (n, C, size, size) tiles spread over the rasters (``shares``:
    each raster's share of them, default equal), with a (n, size, size) valid mask (padding
    and nodata are not valid)."""
    shares = list(shares or [1.0] * len(datasets))
    xs, vs = [], []
    for ds, st, share in zip(datasets, stats, shares):
        per = max(1, int(count * share / sum(shares)))
        grid = math.ceil(ds.RasterXSize / size) * math.ceil(ds.RasterYSize / size)
        for win in sample_windows(ds.RasterXSize, ds.RasterYSize, size, min(per, 4 * grid)):
            x, v = BandWindows(ds, st, bands).read((*win[:2], size, size), padding_valid=False)
            if v.mean() > 0.2:
                xs.append(x)
                vs.append(v)
    if not xs:
        raise MapSegError(
            "No tile with enough valid pixels was found: the rasters are mostly nodata. Check "
            "their nodata value and extent."
        )
    return np.stack(xs), np.stack(vs)


def pseudo_labels(x: np.ndarray, valid: np.ndarray, k0: int, seed: int) -> np.ndarray:
    """k-means (``k0``) of the filter bank over all tiles -> (n, S, S) int64 targets."""
    rng = np.random.default_rng(seed)
    feats = [filter_bank(t) for t in x]
    per = max(200, 60000 // len(x))
    samples, bright = [], []
    for f, v, t in zip(feats, valid, x):
        idx = np.flatnonzero(v.ravel())
        idx = rng.choice(idx, size=min(per, idx.size), replace=False)
        samples.append(f.reshape(f.shape[0], -1)[:, idx].T)
        bright.append(brightness(t).ravel()[idx])
    samples = np.concatenate(samples)
    k0 = max(2, min(k0, len(samples)))
    seg = Segmenter.fit(samples, k0, np.concatenate(bright), seed=seed)
    y = np.stack([seg.assign(f) for f in feats]).astype(np.int64)
    y[~valid] = IGNORE
    return y


def _views(x, y, gen):
    """Same random flip/rot90 for the batch pair, two independent photometric jitters."""
    import torch

    n = x.shape[0]
    x, y = flip_rotate(x, y, torch.rand((n, 3), generator=gen))

    def jitter():
        c = x.shape[1]
        gain = 0.8 + 0.4 * torch.rand((n, 1, 1, 1), generator=gen)
        band = 1.0 + 0.1 * (torch.rand((n, c, 1, 1), generator=gen) - 0.5)
        shift = 0.1 * (torch.rand((n, 1, 1, 1), generator=gen) - 0.5)
        noise = 0.02 * torch.randn(x.shape, generator=gen)
        return x * gain * band + shift + noise

    return jitter(), jitter(), y


def _two_view_loss(net, v1, v2, yb, consistency: float):
    """Cross-entropy on both views plus ``consistency`` x their symmetric KL (0: one view)."""
    from torch.nn import functional as nnf

    if consistency <= 0:  # plain distillation: one view
        return nnf.cross_entropy(net(v1), yb, ignore_index=IGNORE)
    o1, o2 = net(v1), net(v2)
    loss = 0.5 * (
        nnf.cross_entropy(o1, yb, ignore_index=IGNORE)
        + nnf.cross_entropy(o2, yb, ignore_index=IGNORE)
    )
    l1, l2 = nnf.log_softmax(o1, 1), nnf.log_softmax(o2, 1)
    kl = (l1.exp() * (l1 - l2)).sum(1) + (l2.exp() * (l2 - l1)).sum(1)
    return loss + consistency * 0.5 * kl.mean()


class _HeldOut:
    """The held-out tiles: their un-augmented loss, the history, the weights with the lowest."""

    def __init__(self, net, hx, hy, reporter: Reporter, steps: int) -> None:
        self.net, self.hx, self.hy, self.reporter, self.steps = net, hx, hy, reporter, steps
        self.best, self.best_loss, self.history = None, math.inf, []
        self.run_loss, self.run_n = 0.0, 0

    def add(self, loss: float) -> None:
        self.run_loss += loss
        self.run_n += 1

    def check(self, step: int, seconds: float) -> None:
        import torch
        from torch.nn import functional as nnf

        self.net.eval()
        with torch.no_grad():
            val = float(nnf.cross_entropy(self.net(self.hx), self.hy, ignore_index=IGNORE))
        self.net.train()
        train_loss = self.run_loss / max(1, self.run_n)
        entry = {"step": step, "train_loss": train_loss, "held_out_loss": val}
        self.history.append({**entry, "seconds": round(seconds, 2)})
        self.reporter.info(
            f"Step {step}/{self.steps}: training loss {train_loss:.4f}, held-out loss {val:.4f}"
        )
        self.run_loss, self.run_n = 0.0, 0
        if val < self.best_loss:
            self.best_loss, self.best = val, cpu_state(self.net)


def train_encoder(net, x: np.ndarray, y: np.ndarray, cfg: SelfSupConfig, reporter: Reporter):
    """Fit ``net`` (K0 outputs) to the pseudo-labels; returns a ``SelfSupResult``."""
    import torch

    from ..model.device import resolve_device

    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x)
    held = rng.permutation(n)[: max(1, min(16, n // 8))]  # never dropped from training
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.steps))
    keeper = _HeldOut(net, xt[held].to(device), yt[held].to(device), reporter, cfg.steps)
    clock, bs, step, stop = Clock(reporter, cfg.max_minutes), max(2, cfg.batch_size), 0, ""
    net.train()
    while step < cfg.steps:
        idx = torch.from_numpy(rng.choice(n, size=bs, replace=n < bs))
        v1, v2, yb = _views(xt[idx], yt[idx], gen)
        loss = _two_view_loss(net, v1.to(device), v2.to(device), yb.to(device), cfg.consistency)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        keeper.add(float(loss.detach()))
        stop = clock.tick(step / cfg.steps)
        due = stop or step % cfg.eval_every == 0 or step == cfg.steps
        if due and (stop != "canceled" or keeper.best is None):  # a cancel skips a new check
            keeper.check(step, clock.elapsed())
        if stop:
            warn_stopped(reporter, stop, step, "step(s)")
            break
    seconds = clock.elapsed()
    return SelfSupResult(keeper.best, keeper.history, seconds, step, bool(stop), stop, device)


def embed(net, x: np.ndarray) -> np.ndarray:
    """(C, H, W) normalised image -> (D, H, W) embeddings (eval mode, whole image)."""
    import torch

    net.eval()
    device = next(net.parameters()).device  # the GPU the net was trained on, or the CPU
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device))
    return out[0].float().cpu().numpy()


def segment(emb: np.ndarray, image: np.ndarray, valid: np.ndarray, k: int, seed: int = 0):
    """k-means (``k``) over sampled embeddings -> (H, W) segment ids (brightness-ordered)."""
    from ..model.clustering import sample_pixels

    rng = np.random.default_rng(seed)
    samples = sample_pixels(emb, valid, 20000, rng)
    bright = sample_pixels(brightness(image)[None], valid, 20000, np.random.default_rng(seed))
    seg = Segmenter.fit(samples, k, bright[:, 0], seed=seed)
    return seg.assign(emb)


def _open_inputs(paths: Sequence[str], bands: Sequence[int] | None) -> tuple:
    """(datasets, 1-based bands used): every raster must hold the bands asked for."""
    from ..io.raster import open_raster

    datasets = [open_raster(p) for p in paths]
    bands = list(bands or range(1, datasets[0].RasterCount + 1))
    short = [os.path.basename(p) for p, ds in zip(paths, datasets) if ds.RasterCount < max(bands)]
    if short:
        raise MapSegError(f"{', '.join(short)} has fewer than {max(bands)} bands.")
    return datasets, bands


def _preview(net, x: np.ndarray, valid: np.ndarray, segments: int, seed: int) -> str:
    """The most valid training tile beside its ``segments``-segment map, as a PNG data URI."""
    pick = int(np.argmax(valid.mean(axis=(1, 2))))
    emb = embed(net, x[pick])
    emb /= np.maximum(np.linalg.norm(emb, axis=0, keepdims=True), 1e-12)  # as build_model does
    seg = segment(emb, x[pick], valid[pick], segments, seed)
    return preview_png(x[pick], np.where(valid[pick], seg, -1))


def _training_record(cfg: SelfSupConfig, result: SelfSupResult, paths, bands, tiles: int):
    return {
        "method": "filter-bank distillation + two-view consistency"
        + (" + PiCIE-style self-labelling" if cfg.self_label_steps else ""),
        "device": result.device,
        "seconds": round(result.seconds, 2),
        "steps_run": result.steps_run,
        "steps": cfg.steps,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "k0": cfg.k0,
        "consistency": cfg.consistency,
        "self_label_steps": cfg.self_label_steps,
        "seed": cfg.seed,
        "tiles": tiles,
        "bands_used": bands,
        "inputs": [os.path.basename(p) for p in paths],
    }


def _self_label(net, x, valid, y, cfg: SelfSupConfig, result: SelfSupResult, reporter):
    """The PiCIE-style stage on the distilled ``net``; ``result`` takes its weights and log."""
    from .picie import PicieConfig, self_label

    pcfg = PicieConfig(steps=cfg.self_label_steps, k=cfg.k0, max_minutes=cfg.max_minutes)
    done = self_label(net, x, valid, y, pcfg, reporter, result.device, cfg.seed)
    result.state_dict = done.state_dict
    result.history += done.history
    result.steps_run += done.steps_run
    result.stopped_early = result.stopped_early or bool(done.stop_reason)
    result.stop_reason = result.stop_reason or done.stop_reason
    net.load_state_dict(done.state_dict)


def _label_free_meta(net, datasets, bands, stats, cfg, result, training, band_colours) -> dict:
    from ..io.raster import raster_info
    from ..model.modelfile import new_meta

    info, arch = raster_info(datasets[0]), net.mapseg_arch
    held_out = [h["held_out_loss"] for h in result.history if "held_out_loss" in h]
    return new_meta(
        architecture=arch["name"],
        arch_kwargs=arch["kwargs"],
        in_bands=len(bands),
        embedding_dim=arch["num_classes"],
        embedding_norm="l2",  # build_model returns unit-length embeddings
        band_stats=stats[0],
        band_stats_per_input=stats,
        normalization="per-input",
        band_names=[datasets[0].GetRasterBand(b).GetDescription() for b in bands],
        band_colours=list(band_colours or []),  # e.g. red, green, blue: what each input is
        classes=[],
        tile_size=cfg.tile_size,
        pixel_size=list(info.pixel_size) if info.georeferenced else None,
        crs_wkt=info.projection,
        mode="unsupervised",
        history=result.history,
        metrics={"held_out_loss": min(held_out), "pseudo_classes": arch["num_classes"]},
        training=training,
    )


@engine_call
def train_label_free(
    paths: Sequence[str],
    output: str,
    reporter: Reporter,
    cfg: SelfSupConfig,
    architecture: str = "unet",
    arch_kwargs: dict | None = None,
    bands: Sequence[int] | None = None,
    preview_segments: int = 6,
    band_colours: Sequence[str] | None = None,
    shares: Sequence[float] | None = None,
) -> dict:
    """Train a label-free model on ``paths`` (``bands``: 1-based, default all) and save it;
    ``shares``: each input's share of the training tiles (default equal).

    ``band_colours`` says what the bands are (``["red", "green", "blue"]``), when all inputs
    hold them in that order; the model file records it for Segment Raster."""
    from ...nets import build_network
    from ..model.modelfile import save_model

    datasets, bands = _open_inputs(paths, bands)
    reporter.info("Measuring band statistics of each input (per-input normalisation).")
    stats = [band_stats([ds], bands) for ds in datasets]
    x, valid = read_tiles(datasets, bands, stats, cfg.tile_size, cfg.max_tiles, shares)
    reporter.fraction(0.03)
    reporter.info(
        f"{len(x)} tiles of {cfg.tile_size} px; clustering the filter bank (K0={cfg.k0})."
    )
    y = pseudo_labels(x, valid, cfg.k0, cfg.seed)
    if not cfg.steps:
        cfg = replace(cfg, steps=max(1, cfg.epochs) * math.ceil(len(x) / max(2, cfg.batch_size)))
    reporter.fraction(0.08)
    seed_everything(cfg.seed)
    net = build_network(architecture, len(bands), int(y.max()) + 1, **(arch_kwargs or {}))
    share = 0.97 if not cfg.self_label_steps else 0.6
    result = train_encoder(net, x, y, cfg, reporter.sub(0.08, share))
    net.load_state_dict(result.state_dict)
    if cfg.self_label_steps and not result.stopped_early:
        _self_label(net, x, valid, y, cfg, result, reporter.sub(share, 0.97))
    training = _training_record(cfg, result, paths, bands, len(x))
    training["preview_segments"] = preview_segments
    training["preview"] = _preview(net, x, valid, preview_segments, cfg.seed)
    meta = _label_free_meta(net, datasets, bands, stats, cfg, result, training, band_colours)
    save_model(output, meta, result.state_dict)
    return meta


def train_from_job(job, output: str, reporter: Reporter) -> dict:
    """Train Model without labels: a label-free model from a ``core.train.job.TrainJob``."""
    if job.init_model:
        raise MapSegError(
            "INIT_MODEL fine-tunes a supervised model and needs labels; label-free training "
            "(no LABELS, no LABEL_POLYGONS) always starts from scratch."
        )
    if job.architecture == "sam":
        raise MapSegError(
            "Label-free training needs a convolutional network (unet, deeplabv3, fcn, "
            "refinenet), not sam. Choose another ARCHITECTURE or give labels."
        )
    if job.classes:
        reporter.warn("CLASSES is ignored without labels: a label-free model has no classes.")
    cfg = SelfSupConfig(
        steps=0,
        epochs=job.fit.epochs,
        batch_size=job.fit.batch_size,
        tile_size=job.tile_size,
        learning_rate=job.fit.learning_rate,
        max_minutes=job.fit.max_minutes,
        seed=job.fit.seed,
        device=job.fit.device,
    )
    reporter.info(
        "No labels were given: training a label-free model (self-supervised per-pixel features; "
        "Segment Raster turns them into N segments)."
    )
    return train_label_free(
        list(job.images), output, reporter, cfg, job.architecture, dict(job.arch_kwargs)
    )

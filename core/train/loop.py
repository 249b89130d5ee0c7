"""The training loop: batches -> optimizer steps -> validation -> best model, within a budget.

``fit`` trains a network on class-balanced random windows (``RandomWindows``; SAM fine-tuning:
a grid ``TileSet``) and validates it after every epoch on the validation tiles, keeping the
weights with the lowest validation loss. It never raises on cancel or
on the time limit: it stops within a batch and returns the best weights so far with
``stopped_early`` set, so the caller can still save a usable model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from ..errors import MapSegError
from ..evaluate.metrics import ConfusionMatrix
from ..model.device import is_cuda, resolve_device
from ..progress import Reporter
from ..sam.finetune import balanced_weights
from .augment import augment_batch
from .dataset import IGNORE_INDEX, TileSet
from .losses import LOSSES, make_criterion
from .schedule import BudgetSchedule, Clock, cpu_state, seed_everything, warn_stopped
from .windows import RandomWindows


@dataclass
class FitConfig:
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    max_minutes: float = 0.0  # 0: no time limit
    loss: str = "dice_ce"  # dice + (class-weighted) cross-entropy; "ce": cross-entropy alone
    augment: bool = True
    # Draw tiles with and without the object (any class but the first) equally often, with
    # replacement (SAM fine-tuning); False: every training tile once per epoch.
    balanced: bool = False
    device: str = "auto"
    seed: int = 0
    # several processes training one model (core.distributed.ddp.DataParallel); None: one
    distributed: object = None


@dataclass
class FitResult:
    state_dict: dict
    history: List[dict]
    metrics: dict
    device: str
    seconds: float
    epochs_run: int
    stopped_early: bool = False
    stop_reason: str = ""
    amp: bool = False
    extra: dict = field(default_factory=dict)


OOM_MESSAGE = (
    "The GPU ran out of memory even with one tile per step, before any model was kept. Lower "
    "TILE_SIZE, choose a smaller network (ARCH_OPTIONS) or train on the CPU (DEVICE cpu)."
)


class GpuMemoryError(Exception):
    """CUDA ran out of memory even for a single-sample micro-batch."""


class Trainer:
    """A network with its optimizer, schedule, loss and gradient scaler: ``step`` is the one
    place where the optimizer steps (a distributed wrapper drives training through it).

    A step never makes the weights non-finite: a batch without a labelled pixel, a non-finite
    loss or non-finite gradients skip the update (counted in ``skipped``). A CUDA out-of-memory
    error halves the micro-batch (gradients are accumulated, so the step is the same) and
    retries; below one sample it raises ``GpuMemoryError``.
    """

    def __init__(self, net, cfg: FitConfig, criterion, device: str, total_steps: int) -> None:
        import torch

        self.net, self.cfg, self.criterion, self.device = net, cfg, criterion, device
        self.amp = is_cuda(device)
        self.opt = torch.optim.AdamW(
            net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.schedule = BudgetSchedule(total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.steps, self.skipped, self.micro = 0, 0, 0  # micro 0: the whole batch at once

    def step(self, xb: np.ndarray, yb: np.ndarray, gen, time_share: float = 0.0) -> float | None:
        """One optimizer step on a batch at ``time_share`` of the time budget; returns its loss
        (None: skipped)."""
        import torch

        for group in self.opt.param_groups:
            group["lr"] = self.cfg.learning_rate * self.schedule.factor(self.steps, time_share)
        x = torch.from_numpy(xb).to(self.device, non_blocking=True)
        y = torch.from_numpy(yb).to(self.device, non_blocking=True)
        if len(xb) == 1:  # a single training tile: pair it with an augmented copy
            x, y = x.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)
        if self.cfg.augment:
            x, y = augment_batch(x, y, gen)
        loss = None
        # Batch-norm statistics move in the forward pass: a skipped batch must not move them.
        buffers = [b.detach().clone() for b in self.net.buffers()]
        if bool((y != IGNORE_INDEX).any()):
            loss = self._backward_fitting_memory(x, y)
        loss = self.agree(loss)
        if loss is None or not self._apply():
            self.skipped += 1
            self.opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(self.net.buffers(), buffers):
                    b.copy_(saved)
            loss = None
        self.steps += 1
        return loss

    def agree(self, loss: float | None) -> float | None:
        """The step's loss once every process agrees (a distributed trainer all-reduces the
        gradients here); None skips the step."""
        return loss

    def _backward_fitting_memory(self, x, y) -> float | None:
        """Gradients of the batch's loss, in micro-batches that fit CUDA memory."""
        import torch

        while True:
            try:
                return self._backward(x, y)
            except torch.cuda.OutOfMemoryError:
                self.opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                size = self.micro or len(x)
                if size <= 1:
                    raise GpuMemoryError() from None
                self.micro = (size + 1) // 2

    def _backward(self, x, y) -> float | None:
        import torch

        self.opt.zero_grad(set_to_none=True)
        size, total = self.micro or len(x), 0.0
        labelled = float((y != IGNORE_INDEX).sum())
        for i in range(0, len(x), size):
            xi, yi = x[i : i + size], y[i : i + size]
            share = float((yi != IGNORE_INDEX).sum()) / labelled
            if share == 0:
                continue
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                logits = self.net(xi)
            loss = self.criterion(logits, yi)
            if not bool(torch.isfinite(loss)):
                return None
            self.scaler.scale(loss * share).backward()
            total += float(loss.detach()) * share
        return total

    def _apply(self) -> bool:
        """Step the optimizer unless a gradient is non-finite (AMP: the scaler checks)."""
        import torch

        if not self.amp:
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            )
            if not bool(torch.isfinite(norm)):
                return False
        self.scaler.step(self.opt)
        self.scaler.update()
        return True

    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])


class BestModel:
    """The weights with the lowest validation loss seen so far (ties: the higher mIoU).

    Not the highest validation mIoU: on a small validation set a rare class's few pixels make
    the mIoU jump between epochs, and the epoch that wins that draw often carries worse to new
    imagery; the loss moves smoothly. NC west -> east, 4 seeds: 0.294 mean test mIoU against
    0.259, never lower; Dubai: 0.605 against 0.566 (bench/RESULTS_train.md, 1 December 2026).
    """

    def __init__(self) -> None:
        self.state, self.key, self.cm, self.epoch = None, None, None, 0

    def offer(self, net, loss: float, cm: ConfusionMatrix, scores: dict, epoch: int = 0) -> None:
        key = (-loss if loss == loss else -math.inf, scores["miou"])
        if self.key is None or key > self.key:
            self.key, self.cm, self.state, self.epoch = key, cm, cpu_state(net), epoch


def score_tiles(net, tiles: TileSet, num_classes: int, batch_size: int, device: str, criterion):
    """(mean loss, ConfusionMatrix) of ``net`` on ``tiles`` (no progress, no cancel check)."""
    import torch

    cm = ConfusionMatrix(num_classes)
    net.eval()
    loss_sum, n = 0.0, 0
    with torch.no_grad():
        for xb, yb in tiles.batches(range(len(tiles)), batch_size):
            x = torch.from_numpy(xb).to(device)
            y = torch.from_numpy(yb).to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=is_cuda(device)):
                logits = net(x)
            if bool((y != IGNORE_INDEX).any()):
                loss_sum += float(criterion(logits.float(), y)) * len(xb)
                n += len(xb)
            pred = logits.argmax(dim=1)
            cm.update(yb, pred.cpu().numpy(), yb != IGNORE_INDEX)
    return (loss_sum / n if n else float("nan")), cm


def _check_inputs(cfg: FitConfig, train: TileSet) -> None:
    if cfg.loss not in LOSSES:
        raise MapSegError(f"Unknown loss '{cfg.loss}': choose one of {', '.join(LOSSES)}.")
    if len(train) == 0:
        raise MapSegError(
            "No training tile is left: give more labelled pixels, or lower TILE_SIZE or "
            "VALIDATION_FRACTION so that tiles with labels remain for training."
        )


def _train_epoch(trainer: Trainer, batches, gen, clock: Clock, total: int):
    """Steps over one epoch's batches: (loss sum, batches, stop reason or '')."""
    trainer.net.train()
    loss_sum, n_batches, stop = 0.0, 0, ""
    for xb, yb in batches:
        try:
            loss = trainer.step(xb, yb, gen, clock.time_share())
        except GpuMemoryError:
            return loss_sum, n_batches, "memory"
        if loss is not None:
            loss_sum += loss
            n_batches += 1
        stop = clock.tick(trainer.steps / total)
        if stop:
            break
    return loss_sum, n_batches, stop


def _epoch_entry(epoch, loss_sum, n_batches, v_loss, scores, trainer, t0, stop) -> dict:
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(1, n_batches),
        "val_loss": v_loss,
        "val_miou": scores["miou"],
        "val_accuracy": scores["accuracy"],
        "val_iou": [c["iou"] for c in scores["per_class"]],
        "lr": trainer.lr(),
        "seconds": round(time.perf_counter() - t0, 3),
        "steps": n_batches,
        "complete": not stop,
    }


def _log_epoch(reporter: Reporter, entry: dict, epochs: int, partial: bool, names) -> None:
    names = names or [str(i) for i in range(len(entry["val_iou"]))]
    per_class = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, entry["val_iou"]))
    reporter.info(
        f"Epoch {entry['epoch']}/{epochs}{' (partial)' if partial else ''}: train loss "
        f"{entry['train_loss']:.4f}, validation loss {entry['val_loss']:.4f}, mIoU "
        f"{entry['val_miou']:.3f}, accuracy {entry['val_accuracy']:.3f} "
        f"({entry['seconds']:.1f} s); IoU per class: {per_class}"
    )
    if entry.get("skipped"):
        reporter.warn(
            f"{entry['skipped']} batch(es) of epoch {entry['epoch']} were skipped: their loss or "
            "gradients were not finite (the weights were left unchanged)."
        )


def fit(
    net,
    train: TileSet | RandomWindows,
    val: TileSet,
    num_classes: int,
    weights: np.ndarray | None,
    cfg: FitConfig,
    reporter: Reporter,
    class_names: List[str] | None = None,
) -> FitResult:
    """Train ``net`` in place; return the best weights (lowest validation loss) and the history."""
    import torch

    _check_inputs(cfg, train)
    group = cfg.distributed
    if group is not None:  # each process its own windows; the main one validates
        train, val = group.share(train, val, cfg.seed)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.to(device)
    # Per-tile sampling probabilities of the balanced sampler (None: a plain shuffle).
    tile_p = balanced_weights(train.object_fractions()) if cfg.balanced else None
    criterion = make_criterion(cfg.loss, weights, num_classes, device)
    bs = max(1, min(cfg.batch_size or 8, len(train)))
    total_steps = max(1, cfg.epochs * train.epoch_steps(bs))
    trainer = (group.trainer if group else Trainer)(net, cfg, criterion, device, total_steps)
    # Validate on the training tiles when there is no validation set (said in the metrics).
    check_set = val if len(val) else train
    clock = (group.clock if group else Clock)(reporter, cfg.max_minutes)
    best, history, stop = BestModel(), [], ""
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        batches, skipped = train.epoch_batches(rng, bs, tile_p), trainer.skipped
        loss_sum, n_batches, stop = _train_epoch(trainer, batches, gen, clock, total_steps)
        train_seconds = time.perf_counter() - t0
        if stop == "memory" and best.state is None:
            raise MapSegError(OOM_MESSAGE)
        if stop in ("canceled", "memory") and best.state is not None:
            break  # keep the best completed epoch; do not validate again
        vbs = trainer.micro or bs  # after an out-of-memory error, validate in micro-batches
        v_loss, cm = score_tiles(net, check_set, num_classes, vbs, device, criterion)
        scores = cm.scores(class_names)
        best.offer(net, v_loss, cm, scores, epoch)
        entry = _epoch_entry(epoch, loss_sum, n_batches, v_loss, scores, trainer, t0, stop)
        entry["train_seconds"] = round(train_seconds, 4)  # the training steps only
        entry["skipped"] = trainer.skipped - skipped
        history.append(entry)
        _log_epoch(reporter, entry, cfg.epochs, bool(stop), class_names)
        if stop:
            break
    if stop:
        warn_stopped(reporter, stop, len(history), "epoch(s)")
    return _result(best, class_names, bool(len(val)), history, trainer, clock, stop)


def _result(best: BestModel, names, validated: bool, history, trainer, clock, stop) -> FitResult:
    metrics = best.cm.scores(names)
    metrics["evaluated_on"] = "validation tiles" if validated else "training tiles"
    return FitResult(
        state_dict=best.state,
        history=history,
        metrics=metrics,
        device=trainer.device,
        seconds=clock.elapsed(),
        epochs_run=len(history),
        stopped_early=bool(stop),
        stop_reason=stop,
        amp=trainer.amp,
        extra={
            "skipped_steps": trainer.skipped,
            "micro_batch": trainer.micro,
            "kept_epoch": best.epoch,
        },
    )

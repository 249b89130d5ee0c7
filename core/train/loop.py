"""The training loop: losses, batch augmentation, mixed precision, seed, time limit, cancel.

``fit`` trains a network on a training ``TileSet`` and validates it after every epoch on the
validation set, keeping the weights with the best validation mIoU. It never raises on cancel or
on the time limit: it stops within a batch and returns the best weights so far with
``stopped_early`` set, so the caller can still save a usable model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from ..errors import CanceledError, MapSegError
from ..evaluate.metrics import ConfusionMatrix
from ..model.device import is_cuda, resolve_device
from ..progress import Reporter
from ..sam.finetune import balanced_weights
from .dataset import IGNORE_INDEX, TileSet

LOSSES = ("ce", "dice_ce")


@dataclass
class FitConfig:
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    max_minutes: float = 0.0  # 0: no time limit
    loss: str = "ce"  # "ce": (class-weighted) cross-entropy; "dice_ce": dice + cross-entropy
    augment: bool = True
    # Draw tiles with and without the object (any class but the first) equally often, with
    # replacement (SAM fine-tuning); False: every training tile once per epoch.
    balanced: bool = False
    device: str = "auto"
    seed: int = 0


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


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.backends.cudnn.benchmark = False


def class_weights(counts: np.ndarray, max_weight: float = 10.0) -> np.ndarray:
    """Inverse square-root frequency weights, mean 1 over labelled pixels, capped.

    The square root softens plain inverse frequency, which lets a class of a few pixels
    dominate the loss and the predictions; classes without pixels get weight 1 (never used).
    """
    counts = np.asarray(counts, dtype=np.float64)
    w = np.ones_like(counts)
    has = counts > 0
    if has.sum() < 2:
        return w
    w[has] = 1.0 / np.sqrt(counts[has] / counts[has].sum())
    w[has] /= (w[has] * counts[has]).sum() / counts[has].sum()
    return np.clip(w, 1.0 / max_weight, max_weight)


def flip_rotate(x, y, params):
    """Per-sample flips and 90-degree rotations (square tiles) of images and labels alike.

    ``params`` is an (n, 3) tensor of uniform draws: horizontal flip, vertical flip, rotation.
    """
    import torch

    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if params[i, 0] < 0.5:
            xi, yi = xi.flip(-1), yi.flip(-1)
        if params[i, 1] < 0.5:
            xi, yi = xi.flip(-2), yi.flip(-2)
        k = int(params[i, 2] * 4) % 4
        if k and xi.shape[-1] == xi.shape[-2]:
            xi, yi = torch.rot90(xi, k, (-2, -1)), torch.rot90(yi, k, (-2, -1))
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def augment_batch(x, y, gen):
    """Random flips, 90-degree rotations (square tiles) and brightness/contrast per sample."""
    import torch

    n = x.shape[0]
    params = torch.rand((n, 5), generator=gen)  # drawn on the CPU: same on every device
    x, y = flip_rotate(x, y, params[:, :3])
    gain = (0.8 + 0.4 * params[:, 3]).to(x.device, x.dtype).view(n, 1, 1, 1)
    shift = (0.1 * (params[:, 4] - 0.5)).to(x.device, x.dtype).view(n, 1, 1, 1)
    return x * gain + shift, y


def dice_loss(logits, target, num_classes: int):
    """Soft dice over labelled pixels, averaged over the classes present in the batch."""
    import torch

    valid = target != IGNORE_INDEX
    probs = torch.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    onehot = torch.nn.functional.one_hot(target.clamp(min=0), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.float() * valid.unsqueeze(1)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return (1 - dice[present]).mean() if bool(present.any()) else logits.sum() * 0.0


def lr_lambda(total_steps: int):
    warmup = max(1, min(100, total_steps // 20))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


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


def fit(
    net,
    train: TileSet,
    val: TileSet,
    num_classes: int,
    weights: np.ndarray | None,
    cfg: FitConfig,
    reporter: Reporter,
    class_names: List[str] | None = None,
) -> FitResult:
    """Train ``net`` in place; return the best weights (by validation mIoU) and the history."""
    import torch

    if cfg.loss not in LOSSES:
        raise MapSegError(f"Unknown loss '{cfg.loss}': choose one of {', '.join(LOSSES)}.")
    if len(train) == 0:
        raise MapSegError(
            "No training tile is left: give more labelled pixels, or lower TILE_SIZE or "
            "VALIDATION_FRACTION so that tiles with labels remain for training."
        )
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.to(device)
    # Per-tile sampling probabilities of the balanced sampler (None: a plain shuffle).
    tile_p = balanced_weights(train.object_fractions()) if cfg.balanced else None
    amp = is_cuda(device)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
    ce = torch.nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE_INDEX)

    def criterion(logits, target):
        loss = ce(logits.float(), target)
        if cfg.loss == "dice_ce":
            loss = loss + dice_loss(logits, target, num_classes)
        return loss

    bs = max(1, min(cfg.batch_size, len(train)))
    steps_per_epoch = math.ceil(len(train) / bs)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    # Validate on the training tiles when there is no validation set (said in the metrics).
    check_set = val if len(val) else train
    limit = cfg.max_minutes * 60.0 if cfg.max_minutes and cfg.max_minutes > 0 else None
    start = time.perf_counter()
    history: List[dict] = []
    best_state, best_key, best_cm = None, None, None
    stop_reason, step = "", 0

    def validate() -> tuple:
        loss, cm = score_tiles(net, check_set, num_classes, bs, device, criterion)
        scores = cm.scores(class_names)
        return loss, cm, scores

    def keep_if_best(loss, cm, scores) -> None:
        nonlocal best_state, best_key, best_cm
        key = (scores["miou"], -loss if loss == loss else -math.inf)
        if best_key is None or key > best_key:
            best_key, best_cm = key, cm
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}

    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = (
            rng.permutation(len(train))
            if tile_p is None
            else rng.choice(len(train), size=len(train), p=tile_p)
        )
        if len(order) % bs == 1 and len(order) > 1:  # batch-norm needs two samples per batch
            order = order[:-1]
        t0, loss_sum, n_batches = time.perf_counter(), 0.0, 0
        for xb, yb in train.batches(order, bs):
            x = torch.from_numpy(xb).to(device, non_blocking=True)
            y = torch.from_numpy(yb).to(device, non_blocking=True)
            if len(xb) == 1:  # a single training tile: pair it with an augmented copy
                x, y = x.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)
            if cfg.augment:
                x, y = augment_batch(x, y, gen)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logits = net(x)
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            loss_sum += float(loss.detach())
            n_batches += 1
            elapsed = time.perf_counter() - start
            done = step / total_steps
            if limit:
                done = max(done, elapsed / limit)
            try:
                reporter.fraction(done)
            except CanceledError:
                stop_reason = "canceled"
                break
            if limit and elapsed >= limit:
                stop_reason = "time"
                break
        train_seconds = time.perf_counter() - t0
        if stop_reason == "canceled" and best_state is not None:
            break  # a cancel keeps the best completed epoch and does not validate again
        v_loss, cm, scores = validate()
        keep_if_best(v_loss, cm, scores)
        entry = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1, n_batches),
            "val_loss": v_loss,
            "val_miou": scores["miou"],
            "val_accuracy": scores["accuracy"],
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": round(time.perf_counter() - t0, 3),
            "train_seconds": round(train_seconds, 4),  # the training steps only
            "steps": n_batches,
            "complete": not stop_reason,
        }
        history.append(entry)
        reporter.info(
            f"Epoch {epoch}/{cfg.epochs}{' (partial)' if stop_reason else ''}: train loss "
            f"{entry['train_loss']:.4f}, validation loss {v_loss:.4f}, mIoU {scores['miou']:.3f}, "
            f"accuracy {scores['accuracy']:.3f} ({entry['seconds']:.1f} s)"
        )
        if stop_reason:
            break
    if stop_reason:
        what = "canceled by the user" if stop_reason == "canceled" else "time limit reached"
        reporter.warn(
            f"Training was stopped early ({what}) after {len(history)} epoch(s); the best "
            "model so far is kept."
        )
    metrics = best_cm.scores(class_names)
    metrics["evaluated_on"] = "validation tiles" if len(val) else "training tiles"
    return FitResult(
        state_dict=best_state,
        history=history,
        metrics=metrics,
        device=device,
        seconds=time.perf_counter() - start,
        epochs_run=len(history),
        stopped_early=bool(stop_reason),
        stop_reason=stop_reason,
        amp=amp,
    )

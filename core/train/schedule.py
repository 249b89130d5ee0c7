"""What drives a training run through time: the seed, the learning-rate schedule, the stop.

Shared by supervised and label-free training, so both stop the same way: within one step of a
cancel or of the time limit, keeping the best weights so far.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import CanceledError
from ..progress import Reporter


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.backends.cudnn.benchmark = False


def lr_lambda(total_steps: int):
    """Linear warm-up over 5 % of the steps (at most 100), then cosine decay to 5 %."""
    warmup = max(1, min(100, total_steps // 20))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class BudgetSchedule:
    """Warm-up, then cosine decay to 5 % over whichever budget runs out first: the steps of
    ``EPOCHS`` or the time limit. With a time limit a run therefore ends at a low learning
    rate, however many steps the device managed (``time_share``: share of it used). The
    warm-up too ends at whichever comes first, its steps or 5 % of the time: a slow device
    that manages 50 steps in the budget must not spend them all warming up."""

    def __init__(self, total_steps: int) -> None:
        self.total = max(1, total_steps)
        self.warmup = max(1, min(100, self.total // 20))

    def factor(self, step: int, time_share: float = 0.0) -> float:
        warm = min(1.0, max((step + 1) / self.warmup, time_share / 0.05))
        by_steps = (step - self.warmup) / max(1, self.total - self.warmup)
        progress = min(1.0, max(0.0, by_steps, time_share))
        return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def cpu_state(net) -> dict:
    """A detached CPU copy of ``net``'s weights (the best model so far)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


class Clock:
    """Elapsed time, the time limit and the cancel check of one training run."""

    def __init__(self, reporter: Reporter, max_minutes: float) -> None:
        self.reporter = reporter
        self.limit = max_minutes * 60.0 if max_minutes and max_minutes > 0 else None
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_share(self) -> float:
        """Share of the time budget used (0 without a limit)."""
        return self.elapsed() / self.limit if self.limit else 0.0

    def tick(self, done: float) -> str:
        """Report progress ``done`` (at least the time share); '' to go on, else why to stop."""
        try:
            self.reporter.fraction(max(done, self.time_share()))
        except CanceledError:
            return "canceled"
        if self.limit and self.elapsed() >= self.limit:
            return "time"
        return ""


# Why training stopped early, as the log and the report say it.
STOP_REASONS = {
    "canceled": "canceled by the user",
    "time": "time limit reached",
    "memory": "the GPU ran out of memory even with one tile per step",
}


def warn_stopped(reporter: Reporter, reason: str, count: int, unit: str) -> None:
    """The log line of an early stop: why, after how much, and that the best model is kept."""
    what = STOP_REASONS.get(reason, reason)
    reporter.warn(
        f"Training was stopped early ({what}) after {count} {unit}; the best model so far is kept."
    )

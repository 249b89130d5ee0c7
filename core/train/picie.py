"""Self-labelling on the network's own features (PiCIE-style), after the filter-bank warm start.

The distilled encoder (``core.train.labelfree``) can at best reproduce the clusters of the
filter bank it learnt from. This stage lets it go past them (Cho et al., PiCIE, CVPR 2021):
every ``recluster_every`` steps the unit-length embeddings of a sample of training tiles are
clustered with k-means into ``k`` centroids; then each step takes two views of a batch, one
photometrically changed, the other photometrically changed *and* flipped/rotated, and trains
the network so that

- each view's pixels are close to the centroid they are nearest to (within-view), and
- each view's pixels are close to the centroid the *other* view assigned to the same ground
  pixel (cross-view: invariance to colour changes, equivariance to flips and rotations),

with a cross-entropy over cosine similarities to the centroids, weighted by inverse cluster
size so that no cluster swallows the others. A small term keeps predicting the filter-bank
pseudo-classes (``anchor``), so the features cannot collapse to a trivial solution.

Measured (bench/RESULTS_label_free.md): 100 such steps after 200 distillation steps, from
scratch on a CPU, lost 0.02-0.03 ARI on held-out scenes; PiCIE itself starts from a pretrained
backbone and trains far longer. Off by default (``SelfSupConfig.self_label_steps = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import numpy as np

from ..progress import Reporter
from .augment import flip_rotate
from .schedule import Clock, cpu_state, lr_lambda, warn_stopped

IGNORE = -1


@dataclass
class PicieConfig:
    steps: int = 150
    k: int = 24  # clusters of the network's own features
    recluster_every: int = 50
    temperature: float = 0.1
    anchor: float = 0.3  # weight of the filter-bank distillation term
    learning_rate: float = 5e-4
    batch_size: int = 16
    sample_tiles: int = 64  # tiles whose embeddings are clustered
    max_minutes: float = 0.0


@dataclass
class PicieResult:
    state_dict: dict
    history: List[dict] = field(default_factory=list)
    steps_run: int = 0
    stop_reason: str = ""


def _unit(f):
    from torch.nn import functional as nnf

    return nnf.normalize(f, dim=1)


def cluster_embeddings(net, x, valid, cfg: PicieConfig, rng: np.random.Generator, device: str):
    """(k, D) unit-length k-means centroids of the embeddings of a sample of tiles, and the
    per-cluster loss weights (inverse square root of the cluster sizes)."""
    import torch
    from sklearn.cluster import KMeans

    k = cfg.k
    pick = rng.choice(len(x), size=min(len(x), cfg.sample_tiles), replace=False)
    net.eval()
    with torch.no_grad():
        emb = _unit(net(torch.from_numpy(x[pick]).to(device))).cpu().numpy()
    net.train()
    d = emb.shape[1]
    pixels = emb.transpose(0, 2, 3, 1).reshape(-1, d)[valid[pick].ravel()]
    pixels = pixels[rng.choice(len(pixels), size=min(len(pixels), 40000), replace=False)]
    km = KMeans(n_clusters=k, n_init=2, random_state=int(rng.integers(1 << 30))).fit(pixels)
    centres = km.cluster_centers_ / np.maximum(
        np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12
    )
    counts = np.bincount(km.labels_, minlength=k).astype(np.float64)
    weights = 1.0 / np.sqrt(np.maximum(counts, 1.0))  # rare clusters count more
    weights *= k / weights.sum()
    return (
        torch.from_numpy(centres.astype(np.float32)).to(device),
        torch.from_numpy(weights.astype(np.float32)).to(device),
    )


def _views(x, gen):
    """(view 1, view 2 = flipped/rotated, the flip/rotation draws): independent photometry."""
    import torch

    n, c = x.shape[:2]
    params = torch.rand((n, 3), generator=gen)
    moved, _ = flip_rotate(x, x[:, 0], params)

    def jitter(t):
        gain = 0.8 + 0.4 * torch.rand((n, 1, 1, 1), generator=gen)
        band = 1.0 + 0.1 * (torch.rand((n, c, 1, 1), generator=gen) - 0.5)
        shift = 0.1 * (torch.rand((n, 1, 1, 1), generator=gen) - 0.5)
        return t * gain * band + shift + 0.02 * torch.randn(t.shape, generator=gen)

    return jitter(x), jitter(moved), params


def picie_loss(net, v1, v2, params, centres, weights, cfg: PicieConfig, teacher=None):
    """Within-view + cross-view cluster losses (+ the anchor on the teacher's labels)."""
    from torch.nn import functional as nnf

    o1, o2 = net(v1), net(v2)
    o1m, _ = flip_rotate(o1, o1[:, 0], params)  # view 1's output, moved like view 2
    s1 = _unit(o1m).permute(0, 2, 3, 1) @ centres.T / cfg.temperature
    s2 = _unit(o2).permute(0, 2, 3, 1) @ centres.T / cfg.temperature
    y1, y2 = s1.argmax(-1).detach(), s2.argmax(-1).detach()

    def ce(s, y):
        return nnf.cross_entropy(s.permute(0, 3, 1, 2), y, weight=weights)

    loss = 0.5 * (ce(s1, y1) + ce(s2, y2)) + 0.5 * (ce(s1, y2) + ce(s2, y1))
    if teacher is not None and cfg.anchor > 0:
        moved, _ = flip_rotate(teacher, teacher, params)
        loss = loss + cfg.anchor * nnf.cross_entropy(o2, moved, ignore_index=IGNORE)
    return loss


def self_label(net, x, valid, y, cfg: PicieConfig, reporter: Reporter, device: str, seed: int):
    """Train ``net`` (already distilled) on its own clusters; returns a ``PicieResult``."""
    import torch

    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.steps))
    clock, result, running = Clock(reporter, cfg.max_minutes), PicieResult({}), []
    net.train()
    for step in range(1, cfg.steps + 1):
        if (step - 1) % cfg.recluster_every == 0:
            centres, weights = cluster_embeddings(net, x, valid, cfg, rng, device)
        n, bs = len(x), cfg.batch_size
        idx = torch.from_numpy(rng.choice(n, size=bs, replace=n < bs))
        v1, v2, params = _views(xt[idx], gen)
        loss = picie_loss(
            net, v1.to(device), v2.to(device), params, centres, weights, cfg, yt[idx].to(device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        result.steps_run = step
        stop = clock.tick(step / cfg.steps)
        if step % cfg.recluster_every == 0 or stop or step == cfg.steps:
            mean = float(np.mean(running)) if running else math.nan
            result.history.append({"step": step, "self_label_loss": mean})
            reporter.info(f"Self-labelling step {step}/{cfg.steps}: loss {mean:.4f}")
            running = []
        if stop:
            warn_stopped(reporter, stop, step, "self-labelling step(s)")
            result.stop_reason = stop
            break
    result.state_dict = cpu_state(net)
    return result

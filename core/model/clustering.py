"""Label-free segmentation pieces: k-means over per-pixel features, stable segment ids,
the hand-made filter-bank baseline, and agreement scores against a reference.

Segment ids must not depend on the tile, the extent or the run: centroids are fitted once on
features sampled across the whole extent, every tile is assigned to those same centroids, and
the centroids are ordered by a deterministic key (mean brightness of their pixels), so reruns
and neighbouring runs give the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import MapSegError

# Filter bank of the baseline: per-band means at 3, 9 and 27 pixels plus local
# standard deviation at 9. A 27-pixel window needs 13 pixels of context on each side.
FILTER_BANK_HALO = 13


def filter_bank(block: np.ndarray) -> np.ndarray:
    """(bands, rows, cols) normalised block -> (4 * bands, rows, cols) float32 features."""
    from scipy import ndimage

    feats = []
    for band in block.astype(np.float32, copy=False):
        for size in (3, 9, 27):
            feats.append(ndimage.uniform_filter(band, size=size, mode="reflect"))
        mean9 = feats[-2]
        sq9 = ndimage.uniform_filter(band * band, size=9, mode="reflect")
        feats.append(np.sqrt(np.maximum(sq9 - mean9 * mean9, 0.0)))
    return np.stack(feats)


class Segmenter:
    """K-means centroids with segment ids ordered by the brightness of their members."""

    def __init__(self, centroids: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        self.centroids = np.asarray(centroids, dtype=np.float32)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(
        cls,
        samples: np.ndarray,
        k: int,
        brightness: np.ndarray,
        seed: int = 0,
        engine: str = "sklearn",
    ) -> Segmenter:
        """Fit on (n, d) feature samples; ``brightness`` (n,) orders the segments.

        ``engine="numpy"`` (Segment Raster) needs nothing but numpy, so segmenting works in an
        inference-only install; training keeps scikit-learn's KMeans.
        """
        samples = np.asarray(samples, dtype=np.float32)
        if k < 2:
            raise MapSegError("Ask for at least 2 segments.")
        if len(samples) < k:
            raise MapSegError(
                f"Only {len(samples)} valid pixels were sampled, fewer than the {k} segments "
                "asked for. Choose a larger extent or fewer segments."
            )
        mean = samples.mean(axis=0)
        std = samples.std(axis=0)
        std[std == 0] = 1.0
        z = (samples - mean) / std
        if engine == "numpy":
            centers, labels = kmeans(z, k, seed=seed)
        else:
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
            centers, labels = km.cluster_centers_, km.labels_
        # Order by the mean brightness of each cluster's members, ties by centroid values:
        # deterministic for a given sample, and stable across runs on the same data.
        keys = [
            (float(brightness[labels == i].mean()) if (labels == i).any() else np.inf, i)
            for i in range(k)
        ]
        order = [i for _, i in sorted(keys)]
        return cls(centers[order], mean, std)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """(d, rows, cols) features -> (rows, cols) segment index 0..k-1 (nearest centroid)."""
        d, rows, cols = features.shape
        z = (features.reshape(d, -1).T - self.mean) / self.std
        # |z - c|^2 = |z|^2 - 2 z.c + |c|^2 ; |z|^2 is the same for every centroid.
        dist = -2.0 * z @ self.centroids.T + (self.centroids**2).sum(axis=1)
        return dist.argmin(axis=1).reshape(rows, cols).astype(np.int32)

    def to_dict(self) -> dict:
        return {
            "centroids": self.centroids.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Segmenter:
        return cls(np.array(data["centroids"]), np.array(data["mean"]), np.array(data["std"]))


def _sq_distances(z: np.ndarray, zz: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(zz[:, None] - 2.0 * z @ c.T + (c * c).sum(axis=1), 0.0)


def _kmeans_pp(z: np.ndarray, zz: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds: each next centre drawn with probability ~ squared distance."""
    centers = [z[rng.integers(len(z))]]
    d = _sq_distances(z, zz, np.asarray(centers))[:, 0]
    for _ in range(1, k):
        total = d.sum()
        i = rng.choice(len(z), p=d / total) if total > 0 else rng.integers(len(z))
        centers.append(z[i])
        d = np.minimum(d, _sq_distances(z, zz, z[i : i + 1])[:, 0])
    return np.asarray(centers)


def kmeans(z: np.ndarray, k: int, seed: int = 0, n_init: int = 4, max_iter: int = 300):
    """(centres, labels) of Lloyd's k-means from ``n_init`` k-means++ starts; the lowest
    inertia wins. Stops when the centres move less than 1e-4 of the data's mean variance."""
    z = np.asarray(z, dtype=np.float64)
    zz = (z * z).sum(axis=1)
    tol = 1e-4 * float(z.var(axis=0).mean())
    rng = np.random.default_rng(seed)
    best = (np.inf, None, None)
    for _ in range(n_init):
        c = _kmeans_pp(z, zz, k, rng)
        for _ in range(max_iter):
            labels = _sq_distances(z, zz, c).argmin(axis=1)
            counts = np.bincount(labels, minlength=k)
            new = np.zeros_like(c)
            np.add.at(new, labels, z)
            empty = counts == 0
            new[~empty] /= counts[~empty, None]
            new[empty] = c[empty]  # an empty cluster keeps its centre
            moved = float(((new - c) ** 2).sum())
            c = new
            if moved <= tol:
                break
        d = _sq_distances(z, zz, c)
        labels = d.argmin(axis=1)
        inertia = float(d[np.arange(len(z)), labels].sum())
        if inertia < best[0]:
            best = (inertia, c, labels)
    return best[1], best[2]


def agreement(segments: np.ndarray, reference: np.ndarray, valid: np.ndarray) -> dict:
    """Adjusted Rand index and mIoU after optimal (Hungarian) matching of segments to classes.

    Each reference class is matched to at most one segment (and vice versa) so as to maximise
    the matched pixel count; unmatched classes score IoU 0.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score

    seg = np.asarray(segments)[valid].astype(np.int64)
    ref = np.asarray(reference)[valid].astype(np.int64)
    if seg.size == 0:
        raise MapSegError("No pixel is valid in both the segments and the reference.")
    seg_ids, seg_idx = np.unique(seg, return_inverse=True)
    ref_ids, ref_idx = np.unique(ref, return_inverse=True)
    cm = np.zeros((len(ref_ids), len(seg_ids)), dtype=np.int64)
    np.add.at(cm, (ref_idx, seg_idx), 1)
    rows, cols = linear_sum_assignment(-cm)
    ious = np.zeros(len(ref_ids))
    for r, c in zip(rows, cols):
        union = cm[r].sum() + cm[:, c].sum() - cm[r, c]
        ious[r] = cm[r, c] / union if union else 0.0
    return {
        "ari": float(adjusted_rand_score(ref, seg)),
        "hungarian_miou": float(ious.mean()),
        "matching": {int(ref_ids[r]): int(seg_ids[c]) for r, c in zip(rows, cols)},
    }


def sample_pixels(
    features: np.ndarray, valid: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``count`` (n, d) samples of valid pixels from a (d, rows, cols) block."""
    idx = np.flatnonzero(valid.ravel())
    if idx.size > count:
        idx = rng.choice(idx, size=count, replace=False)
    return features.reshape(features.shape[0], -1)[:, idx].T


def brightness(block: np.ndarray, bands: Sequence[int] | None = None) -> np.ndarray:
    """Mean of the (normalised) bands: the ordering key for segment ids."""
    sel = block if bands is None else block[list(bands)]
    return sel.mean(axis=0)

"""Ellipsoidal measures: areas through the authalic latitude, lengths with the radii of curvature.

One place for the geodesy that polygon measures (``core.io.vector.measure``) and DEM cell areas
(``core.terrain.sinks.pixel_areas``) both need.
"""

from __future__ import annotations

import math

import numpy as np


class Ellipsoid:
    """Constants for ellipsoidal measures: semi-major axis, eccentricity, authalic sphere."""

    def __init__(self, a: float, inv_f: float) -> None:
        self.a = a
        f = 1.0 / inv_f if inv_f else 0.0
        self.e2 = f * (2.0 - f)
        self.e = math.sqrt(self.e2)
        self.qp = self._q(np.array(1.0)) if self.e else 2.0
        self.r2_auth = a * a * self.qp / 2.0

    def _q(self, s: np.ndarray) -> np.ndarray:
        e, e2 = self.e, self.e2
        return (1 - e2) * (s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))

    def sin_authalic(self, lat: np.ndarray) -> np.ndarray:
        s = np.sin(lat)
        return self._q(s) / self.qp if self.e else s

    def ring_area(self, lon: np.ndarray, lat: np.ndarray) -> float:
        # Exact for edges along parallels (constant beta) and meridians (no dlon).
        sb = self.sin_authalic(lat)
        return abs(float(np.sum(np.diff(lon) * (sb[1:] + sb[:-1]))) / 2.0) * self.r2_auth

    def ring_length(self, lon: np.ndarray, lat: np.ndarray) -> float:
        mid = (lat[1:] + lat[:-1]) / 2.0
        w = 1.0 - self.e2 * np.sin(mid) ** 2
        m = self.a * (1.0 - self.e2) / w**1.5  # meridian radius of curvature
        n = self.a / np.sqrt(w)  # prime vertical radius
        return float(np.sum(np.hypot(m * np.diff(lat), n * np.cos(mid) * np.diff(lon))))

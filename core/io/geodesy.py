"""Ellipsoidal measures: areas through the authalic latitude, lengths with the radii of curvature.

One place for the geodesy that polygon measures (``core.io.vector.measure``) and DEM cell areas
(``pixel_areas``, used by ``core.terrain.sinks``) both need.
"""

from __future__ import annotations

import math

import numpy as np

from .raster import RasterInfo


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


def pixel_areas(info: RasterInfo, row0: int, nrows: int) -> np.ndarray:
    """Pixel areas of rows ``row0 .. row0+nrows``: shape (nrows, 1), or (nrows, width) when a
    geographic grid is rotated. m² for a geographic CRS (exact on the ellipsoid for north-up
    grids), map units² otherwise."""
    gt = info.geotransform
    srs = info.srs() if info.georeferenced else None
    if srs is None or not srs.IsGeographic():
        return np.full((nrows, 1), info.pixel_area)
    ell = Ellipsoid(srs.GetSemiMajor(), srs.GetInvFlattening())
    a, e = ell.a, ell.e
    to_rad = math.pi / 180.0
    # Angular unit of the geographic CRS (degrees nearly always; grads or radians are legal)
    to_rad = srs.GetAngularUnits() or to_rad
    if gt[2] == 0 and gt[4] == 0:
        edges = np.clip(
            (gt[3] + gt[5] * np.arange(row0, row0 + nrows + 1)) * to_rad,
            -1.5707963267948966,
            1.5707963267948966,
        )
        zone = np.abs(np.diff(ell.sin_authalic(edges)))  # area of a zone is r² Δλ |Δ sin β|
        return (ell.r2_auth * abs(gt[1] * to_rad) * zone)[:, None]
    # Rotated: the area element at each pixel centre times the pixel's angular area.
    rows = np.arange(row0, row0 + nrows)[:, None] + 0.5
    cols = np.arange(info.width)[None, :] + 0.5
    phi = np.clip((gt[3] + cols * gt[4] + rows * gt[5]) * to_rad, -math.pi / 2, math.pi / 2)
    s = np.sin(phi)
    element = a * a * (1 - e * e) * np.cos(phi) / (1 - e * e * s * s) ** 2
    return element * info.pixel_area * to_rad * to_rad

"""Small scenes and helpers that several test modules share, so each module states only what
it checks: the geotransform the rasters are written with, blobby class maps, a feedback that
keeps the log."""

from __future__ import annotations

import numpy as np

#: The geotransform ``conftest.write_raster`` writes by default (10 m pixels in UTM 33N).
GT = (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0)


def blobby_classes(rows: int, cols: int, n_classes: int, cell: int, speckle: float, seed: int):
    """Classes ``1..n_classes`` in ``cell``-pixel blocks with a ``speckle`` share of single
    pixels: many patches, holes and diagonal contacts (uint8)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, n_classes + 1, size=(rows // cell + 1, cols // cell + 1))
    arr = np.kron(coarse, np.ones((cell, cell), dtype=np.int64))[:rows, :cols]
    spots = rng.random((rows, cols)) < speckle
    arr[spots] = rng.integers(1, n_classes + 1, size=int(spots.sum()))
    return arr.astype(np.uint8)


class Log:
    """A QgsProcessingFeedback that keeps the info lines in ``.lines``."""

    def __new__(cls):
        from qgis.core import QgsProcessingFeedback

        feedback = QgsProcessingFeedback()
        feedback.lines = []
        feedback.pushInfo = feedback.lines.append
        return feedback

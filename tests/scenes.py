"""Small scenes and helpers that several test modules share, so each module states only what
it checks: the geotransform the rasters are written with, blobby class maps, a feedback that
keeps the log."""

from __future__ import annotations

import numpy as np
from osgeo import ogr, osr

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


def points_file(path, truth: np.ndarray) -> str:
    """A few clicked points per class (bright blobs, dark ground) with a text class field."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("points", srs, ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    rng = np.random.default_rng(0)
    for value, name in ((1, "bright"), (0, "dark")):
        rows, cols = np.nonzero(truth == value)
        for i in rng.choice(len(rows), size=6, replace=False):
            x, y = GT[0] + (cols[i] + 0.5) * GT[1], GT[3] + (rows[i] + 0.5) * GT[5]
            f = ogr.Feature(layer.GetLayerDefn())
            f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x} {y})"))
            f.SetField("kind", name)
            layer.CreateFeature(f)
    ds = None
    return str(path)

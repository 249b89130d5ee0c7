"""Depression filling of a padded DEM: Whitebox's priority flood, nodata holes as outlets.

Whitebox's priority-flood fill (``fill_depressions_wang_and_liu`` with ``fix_flats=False``)
does the heavy lifting. Three facts about whitebox-workflows 2.0 shape the code around it:

- it reads predictor-compressed GeoTIFFs (PREDICTOR=2/3) as garbage, silently, so the DEM is
  always handed over as an uncompressed GeoTIFF written here by GDAL;
- it drains only across the grid edge, never into interior nodata; ``fill_depressions`` (the
  pit-driven tool) does not even drain across the edge unless a lower cell is reachable, and
  is pathologically slow on noisy DEMs, hence the Wang & Liu tool;
- its in-memory numpy bridge is slower than a file round trip.
"""

from __future__ import annotations

import os

import numpy as np
from osgeo import gdal

from ..errors import MapSegError

EIGHT = np.ones((3, 3), dtype=bool)  # D8: water moves to diagonal neighbours too


# -- the fill ----------------------------------------------------------------------------------


def whitebox_fill(padded: np.ndarray, workdir: str) -> np.ndarray:
    """Priority-flood fill of ``padded`` by Whitebox; the outlets are the grid edge only."""
    import whitebox_workflows as wbw

    src = os.path.join(workdir, "dem.tif")
    out = os.path.join(workdir, "filled.tif")
    rows, cols = padded.shape
    ds = gdal.GetDriverByName("GTiff").Create(src, cols, rows, 1, gdal.GDT_Float64)
    ds.SetGeoTransform([0.0, 1.0, 0.0, float(rows), 0.0, -1.0])
    band = ds.GetRasterBand(1)
    # Whitebox assumes -9999 when a file declares no nodata: declare one no cell holds.
    band.SetNoDataValue(float(padded[0, 0]) - 1.0)
    band.WriteArray(padded)
    ds = band = None
    wbe = wbw.WbEnvironment()
    wbe.verbose = False
    try:
        dem = wbe.read_raster(src)
        filled = wbe.hydrology.fill_depressions_wang_and_liu(dem=dem, fix_flats=False)
        wbe.write_raster(filled, out, options={"compress": False})
    except Exception as err:  # whitebox raises OSError/RuntimeError/ValueError alike
        raise MapSegError(f"Whitebox could not fill the DEM's depressions: {err}") from None
    ds = gdal.Open(out)
    result = ds.GetRasterBand(1).ReadAsArray().astype(np.float64, copy=False)
    ds = None
    if result.shape != padded.shape:
        raise MapSegError("Whitebox returned a raster of another size; check its installation.")
    return result


def drain_interior_holes(filled: np.ndarray, z: np.ndarray, nodata: np.ndarray) -> int:
    """Make nodata holes inside the DEM outlets: fix in place the cells whose fill they lower.

    ``z`` holds the padded DEM with every nodata cell and the ring at the low outlet value;
    ``filled`` its fill with the grid edge as the only outlet, where holes are pits. A cell whose
    true fill is lower is raised in ``filled`` and joined to a hole through raised cells, so only
    those components are recomputed, by reconstruction by erosion with the holes fixed at their
    low value (exact: the same minimax-path fill with holes as outlets). Returns cells changed.
    """
    from scipy import ndimage

    labels, _ = ndimage.label(nodata, structure=EIGHT)
    outer = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = nodata & ~np.isin(labels, outer)
    if not holes.any():
        return 0
    try:
        from skimage.morphology import reconstruction
    except ImportError:
        raise MapSegError(
            "This DEM has nodata holes inside it; draining water into them needs the Python "
            "package scikit-image. Install it (python3 -m pip install scikit-image)."
        ) from None
    labels, _ = ndimage.label((filled > z) | holes, structure=EIGHT)
    touched = np.isin(labels, np.unique(labels[holes]))
    rows, cols = np.nonzero(touched)
    r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, z.shape[0])
    c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, z.shape[1])
    box = filled[r0:r1, c0:c1]
    # The holes' own fill (their spill level) is dropped: they are outlets, fixed at their value.
    seed = np.where(holes[r0:r1, c0:c1], z[r0:r1, c0:c1], box)
    fixed = reconstruction(seed, z[r0:r1, c0:c1], method="erosion", footprint=EIGHT)
    changed = int(np.count_nonzero(fixed < box))
    filled[r0:r1, c0:c1] = np.minimum(box, fixed)
    return changed

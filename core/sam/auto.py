"""SAM Automatic Masks: SamAutomaticMaskGenerator over a raster of any size.

The raster is cut into overlapping windows of SAM's input size on the processing grid, row by
row; each window gets a grid of point prompts. Masks cut by a window border are joined to their
other part and duplicates seen by two windows are dropped (``core.sam.windows``); a mask is
written as soon as no later window can reach it. Memory follows one window plus the masks of the
current row of windows, never the raster.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Sequence

import numpy as np
from osgeo import ogr

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.raster import check_destination, open_raster
from ..io.vector import VectorWriter
from ..progress import Reporter
from .image import ImageSource, make_grid, mask_to_geometry, sam_bands
from .mask_styles import publish_masks
from .windows import Merger, Part, part_from_window, tile

FIELDS = [
    ("mask_id", ogr.OFTInteger),
    ("pred_iou", ogr.OFTReal),
    ("stability", ogr.OFTReal),
    ("area", ogr.OFTReal),
    ("windows", ogr.OFTInteger),
]


def _generator(sam, on_batch, **options):
    """SAM's generator with a hook per batch of points: progress and cancel inside a window."""
    from segment_anything import SamAutomaticMaskGenerator

    class Generator(SamAutomaticMaskGenerator):
        def _process_batch(self, points, *args, **kwargs):
            on_batch()
            return super()._process_batch(points, *args, **kwargs)

    return Generator(sam, output_mode="binary_mask", **options)


class _BatchProgress:
    """Progress inside one window: SAM's generator reports each batch of points it decodes."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.step: Reporter = Reporter()
        self.done = 0

    def start(self, step: Reporter) -> None:
        self.step, self.done = step, 0
        step.fraction(0.0)

    def __call__(self) -> None:
        self.step.fraction(0.2 + 0.8 * self.done / self.batches)
        self.done += 1


def _windows(grid, size: int, overlap: int | None, reporter: Reporter):
    """Rows of overlapping windows of SAM's input size over the processing grid."""
    overlap = size // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < size:
        raise MapSegError(f"OVERLAP must be between 0 and {size - 1} pixels (SAM's input size).")
    rows = tile(grid.width, grid.height, size, overlap)
    reporter.info(
        f"{sum(len(r) for r in rows)} window(s) of up to {size} x {size} pixels over "
        f"{grid.width} x {grid.height} processing pixels, overlapping by {overlap}."
    )
    return rows


def clip_to_data(mask: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """``mask`` where the raster holds data; None when most of it lies where it holds none."""
    inside = mask & valid
    return None if 2 * np.count_nonzero(inside) < np.count_nonzero(mask) else inside


def _window_parts(generator, source: ImageSource, rect, nodata: list) -> Iterator[Part]:
    """The masks SAM finds in one window, clipped to the data, as parts on the processing grid.

    A mask lying mostly where the raster holds no data outlines the hole itself (SAM sees a
    black shape there): it is dropped and counted in ``nodata``.
    """
    grid = source.grid
    image, valid = source.read(rect)
    for ann in generator.generate(image):
        inside = clip_to_data(ann["segmentation"], valid)
        if inside is None:
            nodata.append(1)
            continue
        iou, stability = float(ann["predicted_iou"]), float(ann["stability_score"])
        part = part_from_window(inside, rect, grid.width, grid.height, iou, stability)
        if part is not None:
            yield part


class _MaskWriter:
    """Writes final masks as features, leaving out those smaller than ``min_area``."""

    def __init__(self, out: VectorWriter, grid, min_area: float) -> None:
        self.out, self.grid, self.min_area = out, grid, min_area
        self.masks = self.small = 0

    def __call__(self, parts: Sequence[Part]) -> None:
        for part in parts:
            if part.area * self.grid.pixel_area < self.min_area:
                self.small += 1
                continue
            rect = (part.x, part.y, part.mask.shape[1], part.mask.shape[0])
            geom = mask_to_geometry(part.mask, self.grid.rect_geotransform(rect))
            if geom is None:
                continue
            self.masks += 1
            values = {"mask_id": self.masks, "pred_iou": float(part.pred_iou)}
            values.update(stability=float(part.stability), area=geom.GetArea())
            self.out.add(geom, {**values, "windows": len(part.windows)})


def _run_windows(rows, generator, source, merger: Merger, write, progress, reporter, nodata) -> int:
    """Every window in reading order; masks are written once no later window reaches them."""
    total, k, found = sum(len(r) for r in rows), 0, 0
    for r, row in enumerate(rows):
        for c, rect in enumerate(row):
            step = reporter.sub(k / total, (k + 1) / total)
            progress.start(step)
            for part in _window_parts(generator, source, rect, nodata):
                found += 1
                merger.add(part)
            next_x = row[c + 1][0] if c + 1 < len(row) else None
            next_y = rows[r + 1][0][1] if r + 1 < len(rows) else None
            write(merger.flush(next_x, next_y))
            step.fraction(1.0)
            k += 1
    write(merger.flush(None, None))
    return found


@engine_call
def automatic_masks(
    raster: str,
    sam,
    output: str,
    bands: Sequence[int] | None = None,
    pixel_size: float | None = None,
    points_per_side: int = 32,
    pred_iou_thresh: float = 0.88,
    stability_thresh: float = 0.95,
    min_area: float = 0.0,
    overlap: int | None = None,
    points_per_batch: int = 64,
    merge_iou: float = 0.5,
    layer_name: str | None = None,
    reporter: Reporter | None = None,
) -> Dict[str, Any]:
    """Write every mask SAM finds as a polygon; returns counts (windows, masks, merged, ...)."""
    reporter = reporter or Reporter()
    if points_per_side < 1:
        raise MapSegError("POINTS_PER_SIDE must be at least 1.")
    check_destination(output, [raster])
    ds = open_raster(raster)
    bands = sam_bands(ds, bands)
    grid = make_grid(ds, pixel_size)
    rows = _windows(grid, int(sam.image_encoder.img_size), overlap, reporter)
    source = ImageSource(ds, bands, grid)
    progress = _BatchProgress(math.ceil(points_per_side**2 / max(1, points_per_batch)))
    generator = _generator(
        sam,
        progress,
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_thresh,
    )
    merger, nodata = Merger(merge_iou), []
    with VectorWriter(output, grid.info.projection, ogr.wkbMultiPolygon, FIELDS, layer_name) as out:
        write = _MaskWriter(out, grid, min_area)
        found = _run_windows(rows, generator, source, merger, write, progress, reporter, nodata)
        publish_masks(out, None)  # outlines: the image stays visible under the masks
    stats = {"windows": sum(len(r) for r in rows), "masks": write.masks, "found": found}
    stats.update(small=write.small, merged=merger.merged, duplicates=merger.duplicates)
    stats["nodata"] = len(nodata)
    reporter.info(
        f"{stats['masks']} mask(s) written from {found} found: {merger.merged} "
        f"part(s) joined across window borders, {merger.duplicates} duplicate(s) dropped, "
        f"{write.small} smaller than MIN_AREA; {len(nodata)} mask(s) lying mostly where the "
        "raster holds no data left out."
    )
    return stats

"""Segment With SAM: point and box prompts on rasters of any size.

SAM sees ``img_size`` pixels (1024 for the official models). Each prompt is segmented in a
window around it on the processing grid; a prompt that fits (with a margin) in a window already
planned joins it, so prompts close together share one image embedding, and every window's
embedding is computed exactly once. A box larger than a window gets its own window, read at a
coarser resolution so that it fits SAM's input. Coordinates arrive in the raster's CRS (the
algorithm reprojects); nothing here imports qgis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr

from ..errors import MapSegError
from ..io.gdal_errors import engine_call
from ..io.raster import OutputRaster, check_destination, open_raster, smallest_int_type
from ..io.vector import VectorWriter
from ..progress import Reporter
from .image import Grid, ImageSource, Rect, make_grid, mask_to_geometry, sam_bands
from .mask_styles import publish_masks

Extent = Tuple[float, float, float, float]  # x0, y0, x1, y1 in processing pixels


@dataclass
class Prompt:
    """One SAM prompt in map coordinates of the raster's CRS: points and/or a box."""

    id: int
    points: List[Tuple[float, float]] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    box: Tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax
    value: Any = None  # the class copied to the output
    group: str | None = None


@dataclass
class Window:
    rect: Rect
    factor: float  # processing pixels per image pixel (1 unless a big box needs more)
    prompts: List[int] = field(default_factory=list)

    @property
    def out_size(self) -> Tuple[int, int]:
        w, h = self.rect[2], self.rect[3]
        return max(1, round(w / self.factor)), max(1, round(h / self.factor))

    def holds(self, ext: Extent) -> bool:
        x, y, w, h = self.rect
        return x <= ext[0] and y <= ext[1] and ext[2] <= x + w and ext[3] <= y + h


def _place(center: float, size: int, limit: int) -> int:
    return int(min(max(round(center - size / 2.0), 0), max(limit - size, 0)))


def plan_windows(extents: Sequence[Extent], width: int, height: int, size: int) -> List[Window]:
    """Windows of ``size`` pixels around prompt ``extents``; prompts that fit share one."""
    margin = max(1, size // 8)
    windows: List[Window] = []
    for i, (x0, y0, x1, y1) in enumerate(extents):
        need = (max(x0 - margin, 0), max(y0 - margin, 0))
        need += (min(x1 + margin, width), min(y1 + margin, height))
        home = next((w for w in windows if w.factor == 1.0 and w.holds(need)), None)
        if home is None:
            side = max(size, math.ceil(need[2] - need[0]), math.ceil(need[3] - need[1]))
            w, h = min(side, width), min(side, height)
            cx, cy = (need[0] + need[2]) / 2.0, (need[1] + need[3]) / 2.0
            rect = (_place(cx, w, width), _place(cy, h, height), w, h)
            home = Window(rect, max(1.0, max(w, h) / size))
            windows.append(home)
        home.prompts.append(i)
    return windows


def prompt_extent(prompt: Prompt, grid: Grid) -> Tuple[Prompt | None, Extent | None, str]:
    """The prompt in processing pixels (points outside dropped, a box clipped), or why not."""
    px: List[Tuple[float, float]] = []
    labels: List[int] = []
    outside = 0
    for (mx, my), label in zip(prompt.points, prompt.labels):
        x, y = grid.to_pixel(mx, my)
        if 0 <= x <= grid.width and 0 <= y <= grid.height:
            px.append((x, y))
            labels.append(int(label))
        else:
            outside += 1
    box = None
    if prompt.box is not None:
        corners = [grid.to_pixel(a, b) for a in prompt.box[0::2] for b in prompt.box[1::2]]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        box = (max(min(xs), 0), max(min(ys), 0), min(max(xs), grid.width))
        box += (min(max(ys), grid.height),)
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            return None, None, "its box lies outside the raster"
    if prompt.points and not px:
        return None, None, "its point(s) lie outside the raster"
    if prompt.points and px and not any(labels) and box is None:
        return None, None, "none of its points inside the raster is a foreground point"
    xs = [p[0] for p in px] + ([box[0], box[2]] if box else [])
    ys = [p[1] for p in px] + ([box[1], box[3]] if box else [])
    note = f"{outside} of its points lie outside the raster and were left out" if outside else ""
    local = Prompt(prompt.id, px, labels, box, prompt.value, prompt.group)
    return local, (min(xs), min(ys), max(xs), max(ys)), note


def predict(predictor, prompt: Prompt, window: Window, multimask: bool = True):
    """(mask, predicted IoU, stability score) of the best mask for ``prompt`` in ``window``."""
    import torch
    from segment_anything.utils.amg import calculate_stability_score

    x, y = window.rect[0], window.rect[1]
    f = window.factor
    coords = labels = box = None
    if prompt.points:
        coords = np.array([((px - x) / f, (py - y) / f) for px, py in prompt.points])
        labels = np.array(prompt.labels, dtype=np.int64)
    if prompt.box is not None:
        b = prompt.box
        box = np.array([(b[0] - x) / f, (b[1] - y) / f, (b[2] - x) / f, (b[3] - y) / f])
    # One click is ambiguous (part, object, group): SAM's advice is to ask for three masks and
    # keep the best; several points or a box are not, and one mask is better then.
    many = multimask and box is None and len(prompt.points) == 1
    logits, scores, _ = predictor.predict(
        point_coords=coords,
        point_labels=labels,
        box=box,
        multimask_output=many,
        return_logits=True,
    )
    best = int(np.argmax(scores))
    chosen = torch.as_tensor(logits[best : best + 1])
    stability = float(calculate_stability_score(chosen, predictor.model.mask_threshold, 1.0)[0])
    mask = logits[best] > predictor.model.mask_threshold
    return mask, float(scores[best]), stability


def _localise(
    prompts: Sequence[Prompt], grid: Grid, reporter: Reporter
) -> Tuple[List[Prompt], List[Extent], int]:
    """The prompts in processing pixels with their extents, and how many were skipped."""
    local: List[Prompt] = []
    extents: List[Extent] = []
    skipped = 0
    for prompt in prompts:
        inside, ext, note = prompt_extent(prompt, grid)
        if inside is None:
            skipped += 1
            reporter.warn(f"Prompt {prompt.id} skipped: {note}.")
            continue
        if note:
            reporter.warn(f"Prompt {prompt.id}: {note}.")
        local.append(inside)
        extents.append(ext)
    if not local:
        raise MapSegError(
            "No prompt lies inside the raster. Check that the prompt layer covers the raster "
            "(and its CRS), or choose another raster."
        )
    return local, extents, skipped


def _fields(with_group: bool, class_type: int | None) -> List[Tuple[str, int]]:
    fields = [("prompt_id", ogr.OFTInteger)]
    fields += [("group", ogr.OFTString)] if with_group else []
    fields += [("class", class_type)] if class_type is not None else []
    return fields + [("pred_iou", ogr.OFTReal), ("stability", ogr.OFTReal), ("area", ogr.OFTReal)]


class _MaskBurner:
    """Collects the masks (in memory, as polygons) to burn them onto the input grid at the end."""

    def __init__(self) -> None:
        self.ds = ogr.GetDriverByName("Memory").CreateDataSource("")
        self.layer = self.ds.CreateLayer("m", None, ogr.wkbMultiPolygon)
        self.layer.CreateField(ogr.FieldDefn("prompt_id", ogr.OFTInteger))

    def add(self, prompt_id: int, geom: ogr.Geometry) -> None:
        feature = ogr.Feature(self.layer.GetLayerDefn())
        feature.SetField("prompt_id", int(prompt_id))
        feature.SetGeometry(geom)
        self.layer.CreateFeature(feature)

    def write(self, dest: str, info, max_id: int) -> OutputRaster:
        """Each pixel of ``dest`` holds the prompt id of the mask covering it (0: none); the
        raster is returned written, not yet published (``core.sam.mask_styles``)."""
        raster = OutputRaster(
            dest,
            info.width,
            info.height,
            smallest_int_type(max(int(max_id), 1)),
            geotransform=info.geotransform,
            projection=info.projection,
            nodata=0,
            descriptions=["prompt_id"],
        )
        try:
            raster.band(1).Fill(0)
            gdal.RasterizeLayer(raster.ds, [1], self.layer, options=["ATTRIBUTE=prompt_id"])
        except BaseException:
            raster.discard()
            raise
        return raster


class _Features:
    """Writes each prompt's mask as a feature (and keeps it for the mask raster)."""

    def __init__(self, out: VectorWriter, burner, with_group, class_type, reporter) -> None:
        self.out, self.burner, self.reporter = out, burner, reporter
        self.with_group, self.with_class = with_group, class_type is not None
        self.written = 0
        self.prompts: List[Prompt] = []  # those with a mask written

    def __call__(self, prompt: Prompt, geom, iou: float, stability: float) -> None:
        if geom is None:
            self.reporter.warn(
                f"Prompt {prompt.id}: SAM returned an empty mask, or one only where the "
                "raster holds no data."
            )
            return
        values = {"prompt_id": int(prompt.id), "pred_iou": iou, "stability": stability}
        values["area"] = geom.GetArea()
        if self.with_group:
            values["group"] = prompt.group
        if self.with_class:
            values["class"] = prompt.value
        self.out.add(geom, values)
        self.written += 1
        self.prompts.append(prompt)
        if self.burner is not None:
            self.burner.add(prompt.id, geom)


def _segment_window(
    predictor, source: ImageSource, window: Window, local: Sequence[Prompt], emit, step
) -> None:
    """One image embedding for ``window``, then a mask per prompt it holds, handed to ``emit``."""
    step.fraction(0.0)
    image, valid = source.read(window.rect, window.out_size)
    predictor.set_image(image)
    step.fraction(0.5)
    for j, i in enumerate(window.prompts):
        step.fraction(0.5 + 0.5 * j / len(window.prompts))  # cancel between prompts
        mask, iou, stability = predict(predictor, local[i], window)
        gt = source.grid.rect_geotransform(window.rect, window.factor)
        emit(local[i], mask_to_geometry(mask & valid, gt), iou, stability)  # data only
    step.fraction(1.0)


@engine_call
def segment_with_prompts(
    raster: str,
    prompts: Sequence[Prompt],
    sam,
    output: str,
    output_raster: str | None = None,
    bands: Sequence[int] | None = None,
    pixel_size: float | None = None,
    class_type: int | None = None,
    with_group: bool = False,
    layer_name: str | None = None,
    reporter: Reporter | None = None,
) -> Dict[str, Any]:
    """Polygons (and optionally a mask raster) for every prompt inside ``raster``.

    ``class_type`` is the OGR type of the class field (None: no class field). Returns counts:
    prompts, skipped, windows (= image embeddings computed), features.
    """
    from segment_anything import SamPredictor

    reporter = reporter or Reporter()
    for dest in filter(None, (output, output_raster)):
        check_destination(dest, [raster])
    ds = open_raster(raster)
    bands = sam_bands(ds, bands)
    grid = make_grid(ds, pixel_size)
    local, extents, skipped = _localise(prompts, grid, reporter)
    size = int(sam.image_encoder.img_size)
    windows = plan_windows(extents, grid.width, grid.height, size)
    reporter.info(
        f"{len(local)} prompt(s) in {len(windows)} window(s) of up to {size} x {size} pixels; "
        f"one image embedding per window."
    )
    source, predictor = ImageSource(ds, bands, grid), SamPredictor(sam)
    burner = _MaskBurner() if output_raster else None
    fields = _fields(with_group, class_type)
    with VectorWriter(output, grid.info.projection, ogr.wkbMultiPolygon, fields, layer_name) as out:
        emit = _Features(out, burner, with_group, class_type, reporter)
        for k, window in enumerate(windows):
            step = reporter.sub(k / len(windows), (k + 1) / len(windows))
            _segment_window(predictor, source, window, local, emit, step)
        mask = None
        if burner is not None:
            mask = burner.write(output_raster, grid.info, max((p.id for p in local), default=1))
        labels = {p.id: p.value if class_type is not None else None for p in emit.prompts}
        publish_masks(out, "class" if class_type is not None else None, mask, labels)
    predictor.reset_image()
    return {
        "prompts": len(local),
        "skipped": skipped,
        "windows": len(windows),
        "features": emit.written,
    }

"""Raster I/O in windows: open and check inputs, iterate blocks, write tiled GeoTIFFs safely.

Nothing here reads a whole raster: callers iterate ``windows()`` and read/write one block at a
time. Outputs are written beside the destination and renamed into place only on success, so a
failure or a cancel never leaves a half-written file where the user expects a result.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from osgeo import gdal, osr

from ..errors import MapSegError
from .staged import Move, StagedOutput, partial_path

Window = Tuple[int, int, int, int]  # xoff, yoff, xsize, ysize (pixels)

# A block of ~4 M cells keeps memory small while amortising GDAL's per-call overhead.
DEFAULT_BLOCK_CELLS = 1 << 22
DEFAULT_GEOTRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class RasterInfo:
    path: str
    width: int
    height: int
    count: int
    geotransform: Tuple[float, ...]
    projection: str
    nodata: List[float | None]
    dtypes: List[str]
    georeferenced: bool

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in map units squared (rotation terms included)."""
        gt = self.geotransform
        return abs(gt[1] * gt[5] - gt[2] * gt[4])

    @property
    def pixel_size(self) -> Tuple[float, float]:
        gt = self.geotransform
        return float(np.hypot(gt[1], gt[4])), float(np.hypot(gt[2], gt[5]))

    def srs(self) -> osr.SpatialReference | None:
        if not self.projection:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.projection)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return srs

    @property
    def is_geographic(self) -> bool:
        srs = self.srs()
        return bool(srs is not None and srs.IsGeographic())


def open_raster(path: str, update: bool = False) -> gdal.Dataset:
    """Open any GDAL-readable raster or raise a MapSegError that says what to do."""
    if not path:
        raise MapSegError("No input raster was given. Choose a raster layer or file.")
    try:
        ds = gdal.OpenEx(
            str(path), gdal.OF_RASTER | (gdal.OF_UPDATE if update else gdal.OF_READONLY)
        )
    except RuntimeError as err:
        raise MapSegError(
            f"GDAL cannot open the raster '{path}': {err}. Check that the file exists, is a "
            "raster format GDAL reads (GeoTIFF, VRT, JPEG, PNG, ...) and is not corrupt."
        ) from None
    if ds is None:
        raise MapSegError(f"GDAL cannot open the raster '{path}'. Check the path and format.")
    if ds.RasterXSize <= 0 or ds.RasterYSize <= 0 or ds.RasterCount == 0:
        raise MapSegError(
            f"The raster '{path}' is empty ({ds.RasterXSize} x {ds.RasterYSize} pixels, "
            f"{ds.RasterCount} bands). Choose a raster that holds data."
        )
    return ds


def raster_info(ds: gdal.Dataset) -> RasterInfo:
    gt = tuple(ds.GetGeoTransform(can_return_null=True) or DEFAULT_GEOTRANSFORM)
    projection = ds.GetProjection() or ""
    georeferenced = bool(projection) or gt != DEFAULT_GEOTRANSFORM
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    return RasterInfo(
        path=ds.GetDescription(),
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        count=ds.RasterCount,
        geotransform=gt,
        projection=projection,
        nodata=[b.GetNoDataValue() for b in bands],
        dtypes=[gdal.GetDataTypeName(b.DataType) for b in bands],
        georeferenced=georeferenced,
    )


def check_band(ds: gdal.Dataset, band: int, what: str = "input raster") -> gdal.Band:
    if band < 1 or band > ds.RasterCount:
        raise MapSegError(
            f"Band {band} does not exist: the {what} has {ds.RasterCount} band"
            f"{'s' if ds.RasterCount != 1 else ''}. Choose a band from 1 to {ds.RasterCount}."
        )
    return ds.GetRasterBand(band)


def block_size(ds: gdal.Dataset, max_cells: int = DEFAULT_BLOCK_CELLS) -> Tuple[int, int]:
    """A window size aligned with the file's natural blocks, about ``max_cells`` cells."""
    bw, bh = ds.GetRasterBand(1).GetBlockSize()
    width, height = ds.RasterXSize, ds.RasterYSize
    if bw >= width:  # strips or scanlines: whole rows, as many as fit
        rows = max(1, max_cells // max(width, 1))
        rows = max(bh, rows - rows % max(bh, 1))
        return width, min(rows, height)
    # tiled: a square of whole tiles
    n = max(1, int(np.sqrt(max_cells / float(bw * bh))))
    return min(width, bw * n), min(height, bh * n)


def windows(width: int, height: int, block_w: int, block_h: int) -> Iterator[Window]:
    """Row-major windows covering the raster; edge windows are clipped to the raster."""
    for yoff in range(0, height, block_h):
        ysize = min(block_h, height - yoff)
        for xoff in range(0, width, block_w):
            yield xoff, yoff, min(block_w, width - xoff), ysize


def read_window(band: gdal.Band, win: Window, dtype=None) -> np.ndarray:
    arr = band.ReadAsArray(win[0], win[1], win[2], win[3])
    return arr if dtype is None else arr.astype(dtype, copy=False)


def valid_mask(arr: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where a value is data: not the nodata value and not NaN."""
    mask = np.ones(arr.shape, dtype=bool)
    if nodata is not None:
        if np.isnan(nodata):
            mask &= ~np.isnan(arr)
        else:
            mask &= arr != np.asarray(nodata).astype(arr.dtype)
    if arr.dtype.kind == "f":
        mask &= np.isfinite(arr)
    return mask


def same_grid(a: RasterInfo, b: RasterInfo, tol: float = 1e-6, plain: bool = False) -> bool:
    """Same size, geotransform (within ``tol`` pixel) and CRS. With ``plain``, an image
    without georeferencing matches a raster of its size pixel for pixel."""
    if (a.width, a.height) != (b.width, b.height):
        return False
    if plain and (not a.georeferenced or not b.georeferenced):
        return True
    res = max(abs(a.geotransform[1]), abs(a.geotransform[5]), 1e-12)
    if any(abs(x - y) > tol * res for x, y in zip(a.geotransform, b.geotransform)):
        return False
    sa, sb = a.srs(), b.srs()
    return sa is None or sb is None or bool(sa.IsSame(sb))


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_destination(dest: str, inputs: Sequence[str] = ()) -> str:
    """Refuse to overwrite an input and fail early on a folder that cannot be written."""
    if not dest:
        raise MapSegError("No output file was given. Choose where to save the result.")
    dest = os.path.abspath(dest)
    for src in inputs:
        if src and (os.path.abspath(src) == dest or same_file(src, dest)):
            raise MapSegError(
                f"The output '{dest}' is the same file as the input. Choose another output "
                "file: MapSeg never overwrites its input."
            )
    folder = os.path.dirname(dest) or "."
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise MapSegError(
                f"Cannot create the output folder '{folder}': {err.strerror}. "
                "Choose a folder you can write to."
            ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MapSegError(
            f"The output folder '{folder}' is not writable. Choose a folder you can write to."
        )
    return dest


def smallest_int_type(max_value: int, min_value: int = 0) -> int:
    """The smallest GDAL integer type that holds ``[min_value, max_value]``."""
    if min_value >= 0:
        if max_value <= 255:
            return gdal.GDT_Byte
        if max_value <= 65535:
            return gdal.GDT_UInt16
        return gdal.GDT_UInt32
    if min_value >= -32768 and max_value <= 32767:
        return gdal.GDT_Int16
    return gdal.GDT_Int32


def _creation_options(gdal_type: int, width: int, height: int) -> List[str]:
    opts = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]
    opts.append("PREDICTOR=3" if gdal_type in (gdal.GDT_Float32, gdal.GDT_Float64) else "")
    if width < 256 or height < 256:
        opts.remove("TILED=YES")  # a tiny raster is one strip; tiles would only pad it
    return [o for o in opts if o]


class OutputRaster(StagedOutput):
    """A GeoTIFF written beside ``dest`` and moved into place by ``commit()``.

    Use as a context manager: leaving the block with an exception (a cancel included) deletes
    the partial file and leaves ``dest`` untouched.
    """

    def __init__(
        self,
        dest: str,
        width: int,
        height: int,
        gdal_type: int,
        bands: int = 1,
        geotransform: Sequence[float] = DEFAULT_GEOTRANSFORM,
        projection: str = "",
        nodata: float | None = None,
        color_table: dict | None = None,
        category_names: dict | None = None,
        descriptions: Sequence[str] | None = None,
        sparse: bool = False,
    ) -> None:
        self.dest = os.path.abspath(dest)
        self.tmp = partial_path(self.dest, ".tif")
        driver = gdal.GetDriverByName("GTiff")
        try:
            self.ds = driver.Create(
                self.tmp,
                width,
                height,
                bands,
                gdal_type,
                options=_creation_options(gdal_type, width, height)
                # sparse: blocks never written are not stored and read back as nodata, so a
                # huge raster touched in a few places costs only those blocks
                + (["SPARSE_OK=TRUE"] if sparse else []),
            )
        except RuntimeError as err:
            raise MapSegError(f"Cannot create the output raster '{dest}': {err}") from None
        self.ds.SetGeoTransform(list(geotransform))
        if projection:
            self.ds.SetProjection(projection)
        for i in range(bands):
            band = self.ds.GetRasterBand(i + 1)
            if nodata is not None:
                band.SetNoDataValue(nodata)
            if descriptions and i < len(descriptions):
                band.SetDescription(descriptions[i])
        if color_table:
            set_color_table(self.ds.GetRasterBand(1), color_table)
        if category_names:
            set_category_names(self.ds.GetRasterBand(1), category_names)
        self.style: str | None = None  # QML published beside the file as its default style

    def write(self, array: np.ndarray, xoff: int, yoff: int, band: int = 1) -> None:
        self.ds.GetRasterBand(band).WriteArray(array, xoff, yoff)

    def band(self, i: int = 1) -> gdal.Band:
        return self.ds.GetRasterBand(i)

    def finish(self) -> None:
        """Flush and close the partial file (and write the partial style), not yet in place."""
        if self.ds is not None:
            self.ds.FlushCache()
            self.ds = None
        self._write_style()

    def moves(self) -> List[Move]:
        """Renames that put the finished file in place (None: remove a stale .aux.xml, which
        would restyle the new file)."""
        aux = self.tmp + ".aux.xml"
        moves = [
            (self.tmp, self.dest),
            (aux if os.path.exists(aux) else None, self.dest + ".aux.xml"),
        ]
        return moves + self._style_moves()

    def discard(self) -> None:
        self.ds = None
        for path in (self.tmp, self.tmp + ".aux.xml", self.tmp + ".ovr", self._style_tmp):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        self._done = True


def set_color_table(band: gdal.Band, colors: dict) -> None:
    """``colors`` maps class value -> (r, g, b[, a])."""
    table = gdal.ColorTable()
    for value, rgb in sorted(colors.items()):
        rgba = tuple(int(c) for c in rgb) + ((255,) if len(rgb) == 3 else ())
        table.SetColorEntry(int(value), rgba)
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)


def set_category_names(band: gdal.Band, names: dict) -> None:
    """``names`` maps class value -> name; GDAL stores a list indexed by value."""
    if not names:
        return
    top = max(int(v) for v in names)
    band.SetCategoryNames([str(names.get(i, "")) for i in range(top + 1)])


def read_classes(band: gdal.Band) -> Tuple[dict, dict]:
    """Colours and category names carried by a class band: ({value: rgba}, {value: name})."""
    colors, names = {}, {}
    # GDAL 3.6: a GeoTIFF's category names live in its .aux.xml, which is only loaded once
    # something asks the dataset for PAM data; until then GetCategoryNames() returns None.
    ds = band.GetDataset()
    if ds is not None:
        ds.GetGeoTransform()
    table = band.GetRasterColorTable()
    cats = band.GetCategoryNames() or []
    if table is not None:
        for i in range(table.GetCount()):
            colors[i] = tuple(table.GetColorEntry(i))
    for i, name in enumerate(cats):
        if name:
            names[i] = name
    return colors, names


def scratch_raster(
    path: str, info: RasterInfo, gdal_type: int, nodata: float, fill: float | None = None
) -> gdal.Dataset:
    """A sparse, tiled working GeoTIFF on ``info``'s grid, filled with ``fill`` (or nodata)."""
    ds = gdal.GetDriverByName("GTiff").Create(
        path,
        info.width,
        info.height,
        1,
        gdal_type,
        options=["TILED=YES", "COMPRESS=DEFLATE", "SPARSE_OK=TRUE"],
    )
    ds.SetGeoTransform(list(info.geotransform))
    if info.projection:
        ds.SetProjection(info.projection)
    band = ds.GetRasterBand(1)
    band.SetNoDataValue(float(nodata))
    band.Fill(float(nodata if fill is None else fill))
    return ds

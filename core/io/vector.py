"""Vector output written by OGR: safe, transactional files and geodesic measures.

``VectorWriter`` mirrors ``core.io.raster.OutputRaster``: features go to a file beside the
destination (inside one transaction where the driver has them) and ``commit()`` renames it into
place, shapefile sidecars included. Leaving the block with an exception (a cancel included)
deletes the partial file and leaves the destination untouched.

``measure`` gives area and perimeter in metres for geographic CRSs (ellipsoidal, never degrees)
and in map units for projected ones, with numpy only.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
from typing import Iterable, List, Sequence, Tuple

import numpy as np
from osgeo import ogr, osr

from ..errors import MapSegError
from .geodesy import Ellipsoid

# Extension -> OGR driver. Keep in step with MapSegProvider.supportedOutputVectorLayerExtensions.
DRIVERS = {
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
}
SHAPEFILE_SIDECARS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")
_OGR_URI = re.compile(r"""^ogr:dbname=(['"]?)(?P<path>.+?)\1\s+table=(['"]?)(?P<table>[^'"]+)\3""")

Field = Tuple  # (name, ogr.OFT*) or (name, ogr.OFT*, width)


def driver_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in DRIVERS:
        known = ", ".join(sorted({e for e in DRIVERS if e != ".json"}))
        raise MapSegError(
            f"Cannot write vector output '{path}': the extension '{ext or '(none)'}' is not "
            f"supported. Use one of {known} (GeoPackage is the default)."
        )
    return DRIVERS[ext]


def split_destination(dest: str) -> Tuple[str, str | None]:
    """A QGIS ``ogr:dbname='x.gpkg' table="name"`` destination -> (path, layer name)."""
    match = _OGR_URI.match(dest or "")
    if match:
        return match.group("path"), match.group("table")
    return dest, None


def _files_of(base_path: str, driver: str) -> List[str]:
    stem, ext = os.path.splitext(base_path)
    if driver == "ESRI Shapefile":
        return [stem + e for e in SHAPEFILE_SIDECARS]
    # SQLite journals exist only while a GeoPackage is open; list them for discard().
    extra = ("-journal", "-wal", "-shm") if driver == "GPKG" else ()
    return [base_path] + [base_path + e for e in extra]


class VectorWriter:
    """One new layer in a new file, written beside ``dest`` and moved into place by ``commit``.

    ``fields`` are ``(name, ogr.OFTInteger | OFTReal | OFTString, [width])``. Use ``add`` per
    feature or ``layer`` for bulk writers such as ``gdal.Polygonize``.
    """

    def __init__(
        self,
        dest: str,
        srs_wkt: str | None,
        geom_type: int,
        fields: Sequence[Field],
        layer_name: str | None = None,
        layer_options: Iterable[str] = (),
    ) -> None:
        self.dest = os.path.abspath(dest)
        self.driver_name = driver_for(self.dest)
        folder, name = os.path.split(self.dest)
        stem, ext = os.path.splitext(name)
        # A unique name beside the destination: same filesystem, so the final rename is atomic.
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".partial" + ext, dir=folder)
        os.close(fd)
        os.unlink(tmp)  # OGR creates the file; mkstemp only reserved a unique name
        self.tmp = tmp
        self._done = False
        self._in_transaction = False
        self.layer_name = layer_name or stem
        self.ds = None
        try:
            driver = ogr.GetDriverByName(self.driver_name)
            self.ds = driver.CreateDataSource(self.tmp)
            srs = None
            if srs_wkt:
                srs = osr.SpatialReference()
                srs.ImportFromWkt(srs_wkt)
                srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            options = list(layer_options)
            if self.driver_name == "ESRI Shapefile":
                options.append("ENCODING=UTF-8")
            self.layer = self.ds.CreateLayer(self.layer_name, srs, geom_type, options=options)
            for spec in fields:
                fdef = ogr.FieldDefn(spec[0], spec[1])
                if len(spec) > 2 and spec[2]:
                    fdef.SetWidth(int(spec[2]))
                self.layer.CreateField(fdef)
            self.defn = self.layer.GetLayerDefn()
            self._names = [self.defn.GetFieldDefn(i).GetName() for i in range(len(fields))]
            if self.ds.TestCapability(ogr.ODsCTransactions):
                self.ds.StartTransaction()
                self._in_transaction = True
        except RuntimeError as err:
            self.discard()
            raise MapSegError(f"Cannot create the vector output '{dest}': {err}") from None

    def add(self, geometry: ogr.Geometry | None, values: dict) -> None:
        """Write one feature; ``values`` maps field name -> value (None leaves it null)."""
        feature = ogr.Feature(self.defn)
        for key, value in values.items():
            if value is not None:
                feature.SetField(key, value)
        if geometry is not None:
            feature.SetGeometry(geometry)
        self.layer.CreateFeature(feature)

    @property
    def field_names(self) -> List[str]:
        return list(self._names)

    def commit(self) -> str:
        """Commit the transaction, close and move the file(s) to ``dest``."""
        try:
            if self._in_transaction:
                self.ds.CommitTransaction()
                self._in_transaction = False
            self.layer = None
            self.ds.FlushCache()
            self.ds = None  # closes: FlatGeobuf and GeoJSON write their file here
        except RuntimeError as err:
            self.discard()
            raise MapSegError(f"Cannot finish writing '{self.dest}': {err}") from None
        new = _files_of(self.tmp, self.driver_name)
        old = _files_of(self.dest, self.driver_name)
        for src, dst in zip(new, old):
            if os.path.exists(src):
                os.replace(src, dst)
            elif os.path.exists(dst) and dst != self.dest:
                os.remove(dst)  # a stale sidecar (.qix, .cpg) would not match the new file
        for ext in (".aux.xml",):  # QGIS/GDAL side files of a replaced output
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.dest + ext)
        self._done = True
        return self.dest

    def discard(self) -> None:
        self.layer = None
        # No rollback: the file is deleted anyway, and a GeoPackage whose new table was rolled
        # back fails to restore its triggers on close.
        self.ds = None
        for path in _files_of(self.tmp, self.driver_name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self._done = True

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.discard()


# -- measures --------------------------------------------------------------------------------


def _rings(geom: ogr.Geometry) -> List[List[np.ndarray]]:
    """Polygons of a (multi)polygon as lists of (n, 2) vertex arrays, exterior ring first."""
    wkb = bytes(geom.ExportToIsoWkb(ogr.wkbNDR))
    polys: List[List[np.ndarray]] = []
    pos = 0

    def read_polygon(pos: int, dims: int) -> int:
        (nrings,) = struct.unpack_from("<I", wkb, pos)
        pos += 4
        rings = []
        for _ in range(nrings):
            (npts,) = struct.unpack_from("<I", wkb, pos)
            pos += 4
            pts = np.frombuffer(wkb, dtype="<f8", count=npts * dims, offset=pos)
            rings.append(pts.reshape(npts, dims)[:, :2])
            pos += 8 * npts * dims
        polys.append(rings)
        return pos

    def header(pos: int) -> Tuple[int, int, int]:
        (gtype,) = struct.unpack_from("<I", wkb, pos + 1)
        dims = {0: 2, 1: 3, 2: 3, 3: 4}[gtype // 1000]  # ISO: +1000 Z, +2000 M, +3000 ZM
        return gtype % 1000, dims, pos + 5

    gtype, dims, pos = header(pos)
    if gtype == 3:
        read_polygon(pos, dims)
    elif gtype == 6:
        (n,) = struct.unpack_from("<I", wkb, pos)
        pos += 4
        for _ in range(n):
            _, dims, pos = header(pos)
            pos = read_polygon(pos, dims)
    else:
        raise MapSegError(f"measure() expects polygons, got {geom.GetGeometryName()}.")
    return polys


def measure(geom: ogr.Geometry, srs: osr.SpatialReference | None) -> Tuple[float, float]:
    """(area, perimeter) of a (multi)polygon: m²/m on the ellipsoid for geographic CRSs,
    planar map units for projected or unknown CRSs. Holes are subtracted from the area and
    their boundaries counted in the perimeter."""
    if geom is None or geom.IsEmpty():
        return 0.0, 0.0
    if srs is None or not srs.IsGeographic():
        perimeter = 0.0
        for poly in _parts(geom):
            for i in range(poly.GetGeometryCount()):
                perimeter += poly.GetGeometryRef(i).Length()
        return geom.GetArea(), perimeter
    ell = Ellipsoid(srs.GetSemiMajor(), srs.GetInvFlattening())
    to_rad = srs.GetAngularUnits()  # radians per unit (degrees, grads...)
    area = perimeter = 0.0
    for rings in _rings(geom):
        for k, ring in enumerate(rings):
            lon, lat = ring[:, 0] * to_rad, ring[:, 1] * to_rad
            a = ell.ring_area(lon, lat)
            area += a if k == 0 else -a
            perimeter += ell.ring_length(lon, lat)
    return area, perimeter


def _parts(geom: ogr.Geometry):
    if ogr.GT_Flatten(geom.GetGeometryType()) == ogr.wkbMultiPolygon:
        return [geom.GetGeometryRef(i) for i in range(geom.GetGeometryCount())]
    return [geom]

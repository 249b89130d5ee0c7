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
from typing import Iterable, List, Sequence, Tuple

import numpy as np
from osgeo import ogr, osr

from ..errors import MapSegError
from .geodesy import Ellipsoid
from .staged import Move, StagedOutput, partial_path

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
    """A destination -> (path, layer name or None). QGIS gives a layer of a GeoPackage as
    ``ogr:dbname='x.gpkg' table="name" (geom)`` (Save to GeoPackage) or ``x.gpkg|layername=name``
    (what QGIS itself returns for such a layer)."""
    match = _OGR_URI.match(dest or "")
    if match:
        return match.group("path"), match.group("table")
    if dest and "|layername=" in dest:
        path, _, rest = dest.partition("|layername=")
        return path, rest.split("|")[0] or None
    return dest, None


def _files_of(base_path: str, driver: str) -> List[str]:
    stem, ext = os.path.splitext(base_path)
    if driver == "ESRI Shapefile":
        return [stem + e for e in SHAPEFILE_SIDECARS]
    # SQLite journals exist only while a GeoPackage is open; list them for discard().
    extra = ("-journal", "-wal", "-shm") if driver == "GPKG" else ()
    return [base_path] + [base_path + e for e in extra]


class VectorWriter(StagedOutput):
    """One new layer written beside ``dest`` and moved into place by ``commit``: a new file
    (replacing ``dest`` whole, as QGIS's own algorithms do), or, when ``layer_name`` names a
    layer of an existing GeoPackage, that layer added or replaced with the other layers kept.

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
        into_existing: bool | None = None,
    ) -> None:
        self.dest = os.path.abspath(dest)
        self.driver_name = driver_for(self.dest)
        stem = os.path.splitext(os.path.basename(self.dest))[0]
        # A unique name beside the destination: same filesystem, so the final rename is atomic.
        self.tmp = partial_path(self.dest, os.path.splitext(self.dest)[1])
        self._done = False
        self._in_transaction = False
        self.named_layer = bool(layer_name)
        self.layer_name = layer_name or stem
        # A named layer of an existing GeoPackage: written to a scratch GeoPackage, then copied
        # into the destination, whose other layers must survive (core.io.gpkg).
        if into_existing is None:
            into_existing = os.path.exists(self.dest)
        self.into_existing = self.named_layer and self.driver_name == "GPKG" and into_existing
        self.style: str | None = None  # QML: GeoPackage layer_styles row, else a .qml beside
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

    @property
    def uri(self) -> str:
        """What QGIS opens: the file, or ``x.gpkg|layername=name`` for a named layer."""
        if self.driver_name == "GPKG" and self.named_layer:
            return f"{self.dest}|layername={self.layer_name}"
        return self.dest

    def finish(self) -> None:
        """Commit the transaction, store the style and close: the partial file is complete."""
        if self.ds is None:
            return
        try:
            if self._in_transaction:
                self.ds.CommitTransaction()
                self._in_transaction = False
            self.layer = None
            if self.style and self.driver_name == "GPKG" and not self.into_existing:
                from .gpkg import set_default_style

                set_default_style(self.ds, self.layer_name, self.style)
            self.ds.FlushCache()
            self.ds = None  # closes: FlatGeobuf and GeoJSON write their file here
        except RuntimeError as err:
            self.discard()
            raise MapSegError(f"Cannot finish writing '{self.dest}': {err}") from None
        if self.driver_name != "GPKG":
            self._write_style()

    def moves(self) -> List[Move]:
        """Renames that put a whole new file in place (None: remove a stale sidecar such as
        .qix or .cpg, which would not match the new file)."""
        if self.into_existing:
            return []
        new = _files_of(self.tmp, self.driver_name)
        old = _files_of(self.dest, self.driver_name)
        moves = [(src if os.path.exists(src) else None, dst) for src, dst in zip(new, old)]
        moves = [(src, dst) for src, dst in moves if src or dst != self.dest]
        moves.append((None, self.dest + ".aux.xml"))  # GDAL side file of a replaced output
        return moves + self._style_moves()

    def layer_copies(self) -> List[Tuple[str, str, str, str | None]]:
        """(GeoPackage, layer name, scratch GeoPackage, style) for a layer of an existing
        file: copied into it in a transaction, the file's other layers untouched."""
        if not self.into_existing:
            return []
        return [(self.dest, self.layer_name, self.tmp, self.style)]

    def cleanup(self) -> None:
        """After publishing: remove the scratch file of a layer copied into a GeoPackage."""
        if self.into_existing:
            self._remove_partials()
        self._done = True

    def _remove_partials(self) -> None:
        for path in _files_of(self.tmp, self.driver_name) + [self._style_tmp]:
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

    def discard(self) -> None:
        self.layer = None
        # No rollback: the file is deleted anyway, and a GeoPackage whose new table was rolled
        # back fails to restore its triggers on close.
        self.ds = None
        self._remove_partials()
        self._done = True


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

"""All-or-nothing output sets: every output of a run lands, or none does.

An algorithm with several outputs (a depth raster, a filled DEM and sink polygons; classes and
probabilities) opens one ``OutputSet``, creates each writer through it, writes, and calls
``commit()`` once, after the last output was written::

    with OutputSet() as outputs:
        depth = outputs.raster(depth_dest, width, height, gdal.GDT_Float32, nodata=-9999.0,
                               geotransform=gt, projection=wkt)
        depth.write(block, x, y)                  # an OutputRaster (core.io.raster)
        outputs.style(depth, ramp_style(0, 3.2))  # QML text (core.io.styles), optional
        sinks = outputs.vector(sinks_dest, wkt, ogr.wkbMultiPolygon, fields)
        sinks.add(geometry, {"sink_id": 1})       # a VectorWriter (core.io.vector)
        outputs.style(sinks, graduated_style(...))
        uris = outputs.commit(reporter)           # what was written, in creation order

Until ``commit``, everything is written beside its destination under a hidden ``.partial``
name (same folder, so the final moves are renames on one filesystem). Leaving the block without
``commit`` (an error, ``CanceledError``) deletes every partial file: no destination is created or
changed. ``commit`` first closes every writer (an error there still changes nothing), then
publishes:

- a new layer of an existing GeoPackage (``ogr:dbname='x.gpkg' table="name"`` or
  ``x.gpkg|layername=name``) is copied into it inside one SQLite transaction per file, with its
  default style in ``layer_styles``; the file's other layers are not rewritten;
- every other file (GeoTIFF and its ``.aux.xml``, a whole GeoPackage, Shapefile sidecars,
  GeoJSON, FlatGeobuf, the ``.qml`` styles beside them) is renamed over its destination, the old
  file kept as a hard-linked backup until the end;
- if any step fails, the renamed files are put back from their backups and the transactions are
  rolled back, then the error is raised. Only a failure of the final transaction commit itself
  (a disk that fills at that instant) can leave earlier GeoPackage layers committed.

Styles are part of the set: ``style(output, qml)`` writes a ``.qml`` beside a raster or a
non-GeoPackage vector file (QGIS loads ``<name>.qml`` by itself) or the default-style row of a
GeoPackage layer, published with the data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Dict, List, Sequence, Tuple

from osgeo import ogr

from ..errors import MapSegError
from ..progress import Reporter
from .gdal_errors import gdal_exceptions
from .gpkg import replace_layer
from .raster import OutputRaster
from .vector import VectorWriter, split_destination


def qml_path(dest: str) -> str:
    """Where QGIS looks for a file's default style: ``x.tif`` -> ``x.qml``."""
    return os.path.splitext(dest)[0] + ".qml"


def _backup(dest: str) -> str | None:
    """Keep ``dest`` under a hidden name beside it; None when there is nothing to keep."""
    if not os.path.lexists(dest):
        return None
    folder, name = os.path.split(dest)
    fd, backup = tempfile.mkstemp(prefix=f".{name}.", suffix=".backup", dir=folder or ".")
    os.close(fd)
    os.unlink(backup)
    try:
        os.link(dest, backup)  # dest stays in place until the new file replaces it atomically
    except OSError:
        os.replace(dest, backup)  # no hard links here: a short moment without dest
    return backup


class _Published:
    """Renames done so far, with their backups, and open GeoPackage transactions."""

    def __init__(self) -> None:
        self.moved: List[Tuple[str, str | None]] = []
        self.transactions: Dict[str, ogr.DataSource] = {}

    def move(self, new: str | None, dest: str) -> None:
        if new is None and not os.path.lexists(dest):
            return
        if os.path.isdir(dest):
            raise IsADirectoryError(f"'{dest}' is a folder")
        backup = _backup(dest)
        self.moved.append((dest, backup))
        if new is None:
            os.remove(dest)
        else:
            os.replace(new, dest)

    def gpkg(self, path: str) -> ogr.DataSource:
        ds = self.transactions.get(path)
        if ds is None:
            ds = ogr.Open(path, 1)
            if ds is None:
                raise OSError(f"OGR cannot open '{path}' for writing")
            ds.StartTransaction()
            self.transactions[path] = ds
        return ds

    def undo(self) -> None:
        for dest, backup in reversed(self.moved):
            with contextlib.suppress(OSError):
                if backup is None:
                    os.remove(dest)
                else:
                    os.replace(backup, dest)
        for ds in self.transactions.values():
            with contextlib.suppress(RuntimeError):
                ds.FlushCache()  # GDAL writes deferred triggers now, not at close after rollback
                ds.RollbackTransaction()
        self.transactions.clear()

    def finish(self) -> None:
        for path in list(self.transactions):
            ds = self.transactions.pop(path)
            ds.FlushCache()
            ds.CommitTransaction()
            ds = None
        for _, backup in self.moved:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.remove(backup)


def publish(items: Sequence) -> None:
    """Move finished outputs (``OutputRaster``, ``VectorWriter``) into place, all or none."""
    with gdal_exceptions():
        _publish(items)


def _publish(items: Sequence) -> None:
    done = _Published()
    try:
        for item in items:
            for new, dest in item.moves():
                done.move(new, dest)
        # After the moves: a layer may go into a GeoPackage that another output of the set
        # has just put in place.
        for item in items:
            for target, name, scratch, qml in item.layer_copies():
                source_ds = ogr.Open(scratch)
                replace_layer(done.gpkg(target), source_ds.GetLayer(0), name, qml)
                source_ds = None
        done.finish()
    except (OSError, RuntimeError) as err:
        done.undo()
        raise MapSegError(
            f"Could not move the outputs into place ({err}); no output was changed. If a "
            "GeoPackage destination is open with unsaved edits in QGIS, save or close them."
        ) from None
    except BaseException:
        done.undo()
        raise
    finally:
        for item in items:
            item.cleanup()


def commit_alone(item) -> None:
    """Finish and publish one output on its own (``OutputRaster.commit``,
    ``VectorWriter.commit``); on failure it is discarded and the destination unchanged."""
    try:
        item.finish()
        publish([item])
    except BaseException:
        item.discard()
        raise


class OutputSet:
    """The outputs of one run, published together by ``commit`` (see the module docstring)."""

    def __init__(self) -> None:
        self.items: List = []
        self._done = False

    def raster(self, dest: str, *args, **kwargs) -> OutputRaster:
        """An ``OutputRaster(dest, width, height, gdal_type, ...)`` that is part of the set."""
        self._check_new(os.path.abspath(dest), None)
        out = OutputRaster(dest, *args, **kwargs)
        self.items.append(out)
        return out

    def vector(
        self,
        dest: str,
        srs_wkt: str | None,
        geom_type: int,
        fields: Sequence,
        layer_options: Sequence[str] = (),
    ) -> VectorWriter:
        """A ``VectorWriter`` for ``dest``: a file, or a layer of a GeoPackage given as
        ``ogr:dbname='x.gpkg' table="name"`` or ``x.gpkg|layername=name``."""
        path, layer = split_destination(dest)
        self._check_new(os.path.abspath(path), layer)
        # A second layer of a GeoPackage that this set creates goes into it once it is there.
        shared = layer is not None and any(
            isinstance(item, VectorWriter) and item.dest == os.path.abspath(path)
            for item in self.items
        )
        out = VectorWriter(path, srs_wkt, geom_type, fields, layer, layer_options, shared or None)
        self.items.append(out)
        return out

    @staticmethod
    def style(output, qml: str | None) -> None:
        """Publish ``qml`` (QGIS style XML) as ``output``'s default style."""
        output.style = qml

    def add(self, output):
        """Make a writer opened elsewhere (an ``OutputRaster`` or ``VectorWriter`` created by
        an engine's own loop) part of the set; returns it. Adding None does nothing."""
        if output is not None:
            self._check_new(output.dest, getattr(output, "layer_name", None))
            self.items.append(output)
        return output

    def _check_new(self, path: str, layer: str | None) -> None:
        for item in self.items:
            same_layer = layer is None or getattr(item, "layer_name", None) == layer
            if item.dest == path and same_layer:
                raise MapSegError(
                    f"Two outputs would be written to '{path}'"
                    + (f" (layer '{layer}')" if layer else "")
                    + ". Give each output its own file or layer."
                )

    def commit(self, reporter: Reporter | None = None) -> List[str]:
        """Close every output and move them all into place; a cancel asked for before this
        point still discards everything. Returns each output's path (a GeoPackage layer:
        ``x.gpkg|layername=name``, what QGIS opens), in creation order."""
        if reporter is not None:
            reporter.check()
        try:
            for item in self.items:
                item.finish()
            publish(self.items)
        except BaseException:
            self.discard()
            raise
        self._done = True
        return [item.uri for item in self.items]

    def discard(self) -> None:
        for item in self.items:
            item.discard()
        self._done = True

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.discard()

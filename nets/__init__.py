"""Segmentation networks: a registry of builders, one architecture per module.

``import mapseg.nets`` does not import torch: ``REGISTRY`` holds ``"module:function"`` strings
that are imported only when a network is built, so QGIS can list architectures (e.g. in a
parameter's choices) on a machine without PyTorch.
"""

from __future__ import annotations

import importlib
import inspect
import json
import numbers
from typing import TYPE_CHECKING, Any, Callable, Dict, List

from ..core.errors import MapSegError

if TYPE_CHECKING:
    from torch import nn

# name -> "module:function" inside this package. A builder has the signature
# build(in_channels: int, num_classes: int, *, <keyword-only kwargs with defaults>) -> nn.Module.
REGISTRY: Dict[str, str] = {
    "unet": "unet:build",
    "deeplabv3": "deeplabv3:build",
    "fcn": "fcn:build",
    "refinenet": "refinenet:build",
    "sam": "sam:build",
}

# The two positional arguments every builder takes; everything else is an architecture kwarg.
_POSITIONAL = ("in_channels", "num_classes")


def available() -> List[str]:
    """Names of the known architectures, sorted."""
    return sorted(REGISTRY)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder function for ``name`` (imports its module, hence torch)."""
    if name not in REGISTRY:
        raise MapSegError(
            f"Unknown network architecture {name!r}. Known architectures: {', '.join(available())}."
        )
    module_name, func_name = REGISTRY[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, func_name)


def build_network(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with random weights (nothing is ever downloaded).

    The module returned maps (N, in_channels, H, W) float input to (N, num_classes, H, W)
    logits for any H, W. It carries ``mapseg_arch = {"name", "in_channels", "num_classes",
    "kwargs"}``, with every kwarg resolved to its value (defaults included) so a model file
    rebuilds the same network even if a default changes later:
    ``build_network(a["name"], a["in_channels"], a["num_classes"], **a["kwargs"])``.
    """
    builder = get_builder(name)
    in_channels = _check_count("in_channels", in_channels, "input bands")
    num_classes = _check_count("num_classes", num_classes, "classes")
    signature = inspect.signature(builder)
    try:
        bound = signature.bind(in_channels, num_classes, **kwargs)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p not in _POSITIONAL]
        raise MapSegError(
            f"Network {name!r} got unexpected options {sorted(kwargs)} ({exc}). "
            f"It accepts: {', '.join(accepted) or 'no options'}."
        ) from exc
    bound.apply_defaults()
    resolved = {k: v for k, v in bound.arguments.items() if k not in _POSITIONAL}
    try:
        # The kwargs end up in the model file's JSON metadata; refuse what would not survive it.
        json.dumps(resolved)
    except TypeError as exc:
        raise MapSegError(
            f"Options for network {name!r} must be plain numbers, strings or booleans: {exc}."
        ) from exc
    model = builder(*bound.args, **bound.kwargs)
    model.mapseg_arch = {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "kwargs": resolved,
    }
    return model


def _check_count(what: str, value: Any, meaning: str) -> int:
    # numpy integers are welcome (band counts from arrays) and become plain ints for the JSON
    # metadata; bool is an int subclass, but True bands is a caller bug, not a count.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise MapSegError(
            f"{what} (the number of {meaning}) must be an integer >= 1, not {value!r}."
        )
    return int(value)

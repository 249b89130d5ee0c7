"""Pretrained encoder weights from a local file (``ENCODER_WEIGHTS``); never downloads.

The file is one of torchvision's own ImageNet state dicts, downloaded once by the user (e.g.
``resnet18-f37072fd.pth``, ``resnet34-b627a593.pth``, ``resnet50-0676ba61.pth``,
``mobilenet_v3_large-8738ca79.pth``), loaded with ``weights_only=True`` (no code runs). Its
tensors are matched to the network's backbone by key name: ``conv1.weight``, ``layer1.0.bn1.
running_mean``... for ResNets (DeepLabV3, FCN, RefineNet) and ``features.0.0.weight``... for
MobileNetV3 (DeepLabV3). The first convolution is adapted to the band count: 3-band weights
are copied for 3 bands, averaged for 1, and repeated cyclically and scaled by 3/N for N bands
(so the first activations keep about their RGB scale). Every backbone tensor must be found
with its shape, or the file is refused with what is missing.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from ..core.errors import MapSegError

# Where each network keeps its torchvision backbone: (prefix in the state dict, rename).
_REFINENET = [(r"^body\.stem\.0\.", "conv1."), (r"^body\.stem\.1\.", "bn1.")]


def _torchvision_key(key: str) -> str | None:
    """The torchvision name of one of our backbone's state-dict keys (None: not backbone)."""
    if key.startswith("body.backbone."):
        rest = key[len("body.backbone.") :]
        return "features." + rest if rest[0].isdigit() else rest  # MobileNetV3 / ResNet
    for pattern, new in _REFINENET:
        if re.match(pattern, key):
            return re.sub(pattern, new, key)
    match = re.match(r"^body\.layers\.(\d)\.(.*)$", key)
    if match:
        return f"layer{int(match.group(1)) + 1}.{match.group(2)}"
    return None


def _read(path: str) -> dict:
    if not os.path.isfile(path):
        raise MapSegError(f"ENCODER_WEIGHTS '{path}' does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, not a torch file, truncated...
        raise MapSegError(
            f"ENCODER_WEIGHTS '{os.path.basename(path)}' is not a PyTorch state dict that can "
            f"be loaded safely ({str(err).splitlines()[0][:160]}). Give torchvision's .pth "
            "file of the backbone, e.g. resnet18-f37072fd.pth."
        ) from None
    for key in ("state_dict", "model"):  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MapSegError(
            f"ENCODER_WEIGHTS '{os.path.basename(path)}' does not hold a state dict of tensors."
        )
    return state


def _adapt_first_conv(weight: torch.Tensor, bands: int) -> torch.Tensor:
    """RGB filters (O, 3, k, k) for ``bands`` input bands."""
    if weight.shape[1] == bands:
        return weight
    if bands == 1:
        return weight.mean(dim=1, keepdim=True)
    index = torch.arange(bands) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / bands)


def load_encoder_weights(model: nn.Module, path: str) -> str:
    """Copy the backbone tensors of torchvision state dict ``path`` into ``model``; returns a
    log line. Raises MapSegError for a file that does not fit the backbone."""
    name = os.path.basename(path)
    own = model.state_dict()
    wanted = {k: _torchvision_key(k) for k in own}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if not wanted:
        raise MapSegError(
            f"ENCODER_WEIGHTS needs a network with a torchvision backbone (deeplabv3, fcn or "
            f"refinenet), not {model.mapseg_arch['name']}."
        )
    state = _read(path)
    missing = [v for v in wanted.values() if v not in state]
    first = next(k for k in own if k.endswith("weight") and own[k].dim() == 4)
    wrong = [
        v
        for k, v in wanted.items()
        if v in state and k != first and tuple(state[v].shape) != tuple(own[k].shape)
    ]
    if missing or wrong:
        arch = model.mapseg_arch
        backbone = arch["kwargs"].get("backbone", "")
        what = f"{len(missing)} tensor(s) missing (e.g. {missing[:3]})" if missing else ""
        what += f"{'; ' if what else ''}{len(wrong)} of another shape (e.g. {wrong[:3]})"
        raise MapSegError(
            f"ENCODER_WEIGHTS '{name}' does not fit the {arch['name']} backbone {backbone}: "
            f"{what if wrong else what.split(';')[0]}. Give torchvision's ImageNet weights of "
            f"{backbone} (e.g. {backbone}-*.pth), or choose the backbone the file is for "
            "(ARCH_OPTIONS backbone=...)."
        )
    bands = own[first].shape[1]
    loaded = {k: state[v] for k, v in wanted.items()}
    loaded[first] = _adapt_first_conv(state[wanted[first]], bands)
    with torch.no_grad():
        for k, v in loaded.items():
            own[k].copy_(v.to(own[k].dtype))
    how = "as is" if state[wanted[first]].shape[1] == bands else f"adapted to {bands} band(s)"
    return (
        f"Loaded {len(loaded)} pretrained backbone tensors from {name} (first convolution "
        f"{how}); the rest of the network starts from random weights."
    )

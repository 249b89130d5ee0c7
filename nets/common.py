"""Pieces shared by the architectures: input-conv adaptation, pad-and-crop, option checks."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as nnf
from torch import nn

from ..core.errors import MapSegError


class PadCrop(nn.Module):
    """Run ``body`` on the input padded to a multiple of ``multiple``, crop the logits back.

    Why: an encoder that downsamples by ``multiple`` needs sizes divisible by it, or skip
    connections mismatch (U-Net, RefineNet) and strided features drift off the pixel grid
    before the final resize (torchvision models). Odd tiles (97x97, the last row of windows)
    are routine in rasters, so the network pads and crops itself and always returns logits
    of exactly the input size.

    Padding goes on the bottom/right only so the stride grid stays anchored at the top-left
    pixel. It mirrors (reflect) the tile: zeros would be a fake edge in normalised data that
    convolutions react to, while mirrored content continues the texture. Reflect needs the
    pad to be smaller than the side, so tiny inputs fall back to replicating the edge.
    """

    def __init__(self, body: nn.Module, multiple: int, out_key: str | None = None):
        super().__init__()
        self.body = body
        self.multiple = multiple
        # torchvision segmentation models return {"out": logits, ...}; we return a tensor.
        self.out_key = out_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = nnf.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        out = self.body(x)
        if self.out_key is not None:
            out = out[self.out_key]
        if pad_h or pad_w:
            out = out[..., :h, :w].contiguous()
        return out


def init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """He initialisation as torchvision's backbones use, so a replaced conv matches its peers."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first Conv2d of ``model`` for one taking ``in_channels`` bands.

    torchvision backbones hard-code 3 (RGB) input channels; rasters have 1, 4, 7... bands.
    No pretrained weights exist here, so the new conv is freshly initialised (nothing to
    average or copy). ``named_modules`` yields modules in registration order, which for
    ResNet and MobileNet puts the stem conv first.
    """
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ValueError("model has no Conv2d to adapt")
    name, module = found
    if module.in_channels == in_channels:
        return model
    if module.groups != 1:
        raise ValueError("first conv is grouped; cannot change its input channels")
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        kernel_size=module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
    init_conv(new)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return model


def check_choice(option: str, value: object, choices: Iterable) -> str:
    """Raise a MapSegError naming the valid values when ``value`` is not one of them."""
    choices = list(choices)
    if value not in choices:
        listing = ", ".join(str(c) for c in choices)
        raise MapSegError(f"{option} must be one of {listing}, not {value!r}.")
    return value  # type: ignore[return-value]


def check_positive_int(option: str, value: object) -> int:
    """Raise a MapSegError unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MapSegError(f"{option} must be an integer >= 1, not {value!r}.")
    return value


# ResNet stride of each output stage: the stem and layer1 reach 1/4, then each stage halves.
RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}


def resnet(name: str, in_channels: int, output_stride: int = 32) -> nn.Module:
    """A torchvision ResNet (random init, nothing downloaded) reading ``in_channels`` bands,
    with its last stages dilated instead of strided down to ``output_stride`` (32, 16 or 8).

    torchvision refuses dilation in ResNet-18/34's BasicBlock, so the strides and dilations are
    set on the built convolutions: every 3x3 conv of a dilated stage gets stride 1, dilation
    and padding d (sizes are kept), and its shortcut stride 1.
    """
    from torchvision import models

    check_choice("backbone", name, RESNET_CHANNELS)
    check_choice("output_stride", output_stride, (8, 16, 32))
    net = getattr(models, name)(weights=None)  # looked up at call time (tests spy on it)
    replace_first_conv(net, in_channels)
    stages = {32: [], 16: [(net.layer4, 2)], 8: [(net.layer3, 2), (net.layer4, 4)]}
    for layer, d in stages[output_stride]:
        for block in layer:
            for conv in block.modules():
                if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                    conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    return net

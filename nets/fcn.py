"""FCN (Long et al. 2015) on a ResNet; never downloads.

``resnet18`` / ``resnet34`` (default ``resnet18``): FCN-8s as in the paper, the class scores of
the stride-32 features upsampled and summed with scores of the stride-16 and stride-8 features,
so the logits keep detail at small tiles and the network stays light enough for a CPU.
``resnet50``: torchvision's FCN (a dilated ResNet-50, stride 8, no skips), kept for users with
ImageNet ResNet-50 weights (``ENCODER_WEIGHTS``); too heavy to train from scratch on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn
from torchvision.models import segmentation
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCNHead

from .common import RESNET_CHANNELS, PadCrop, check_choice, replace_first_conv, resnet

BACKBONES = ("resnet18", "resnet34", "resnet50")
# torchvision's FCN dilates the last two ResNet stages: features at 1/8 of the input.
STRIDE_RESNET50 = 8
STRIDE = 32  # FCN-8s on an undilated ResNet


class FCN8s(nn.Module):
    """Scores at strides 32, 16 and 8, upsampled and summed, then resized to the input."""

    def __init__(self, in_channels: int, num_classes: int, backbone: str):
        super().__init__()
        _, c2, c3, c4 = RESNET_CHANNELS[backbone]
        net = resnet(backbone, in_channels)
        layers = {"layer2": "s8", "layer3": "s16", "layer4": "s32"}
        self.backbone = IntermediateLayerGetter(net, layers)
        self.head = FCNHead(c4, num_classes)
        self.score16 = nn.Conv2d(c3, num_classes, 1)
        self.score8 = nn.Conv2d(c2, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        out = self.head(f["s32"])
        for key, score in (("s16", self.score16), ("s8", self.score8)):
            skip = score(f[key])
            out = skip + nnf.interpolate(
                out, size=skip.shape[-2:], mode="bilinear", align_corners=False
            )
        return nnf.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build(in_channels: int, num_classes: int, *, backbone: str = "resnet18") -> nn.Module:
    """FCN returning (N, num_classes, H, W) logits for any band count; ``backbone``
    resnet18|resnet34 (FCN-8s) or resnet50 (torchvision's dilated FCN)."""
    check_choice("backbone", backbone, BACKBONES)
    if backbone != "resnet50":
        return PadCrop(FCN8s(in_channels, num_classes, backbone), STRIDE)
    # weights=None, weights_backbone=None: random init, nothing fetched from the internet.
    model = segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    replace_first_conv(model.backbone, in_channels)
    return PadCrop(model, STRIDE_RESNET50, out_key="out")

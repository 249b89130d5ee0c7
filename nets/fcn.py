"""FCN (Long et al. 2015) with a dilated ResNet-50 from torchvision; never downloads."""

from __future__ import annotations

from torch import nn
from torchvision.models import segmentation

from .common import PadCrop, replace_first_conv

# torchvision's FCN dilates the last two ResNet stages: features at 1/8 of the input.
STRIDE = 8


def build(in_channels: int, num_classes: int) -> nn.Module:
    """FCN ResNet-50 returning (N, num_classes, H, W) logits for any band count."""
    # weights=None, weights_backbone=None: random init, nothing fetched from the internet.
    model = segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    replace_first_conv(model.backbone, in_channels)
    return PadCrop(model, STRIDE, out_key="out")

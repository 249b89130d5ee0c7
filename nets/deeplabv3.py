"""DeepLabV3 (Chen et al. 2017) from torchvision, adapted to any band count; never downloads."""

from __future__ import annotations

from torch import nn
from torchvision.models import segmentation
from torchvision.models.segmentation.deeplabv3 import ASPPPooling

from .common import PadCrop, check_choice, replace_first_conv

# backbone -> (torchvision constructor name, output stride). Both use dilated last stages:
# MobileNetV3 stops at 1/16, the ResNet-50 at 1/8.
BACKBONES = {
    "mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", 16),
    "resnet50": ("deeplabv3_resnet50", 8),
}
# Groups for the image-pooling branch's GroupNorm (its 256 channels divide evenly).
POOL_GROUPS = 32


def build(in_channels: int, num_classes: int, *, backbone: str = "mobilenet_v3_large") -> nn.Module:
    """DeepLabV3 returning (N, num_classes, H, W) logits; backbone mobilenet_v3_large|resnet50."""
    check_choice("backbone", backbone, BACKBONES)
    constructor, stride = BACKBONES[backbone]
    # Looked up on the module at call time (tests spy on it). weights=None and
    # weights_backbone=None: random init, nothing fetched from the internet.
    model = getattr(segmentation, constructor)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    replace_first_conv(model.backbone, in_channels)
    for module in model.modules():
        if isinstance(module, ASPPPooling):
            # The ASPP image-pooling branch batch-normalises globally pooled 1x1 features, i.e.
            # one value per sample: a training batch of 1 is refused outright, and a batch of 2
            # normalises to about +-1 whatever the input, far from the running stats used at
            # inference. GroupNorm normalises each sample on its own: same in train and eval.
            norm = module[2]
            module[2] = nn.GroupNorm(POOL_GROUPS, norm.num_features)
    return PadCrop(model, stride, out_key="out")

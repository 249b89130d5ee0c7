"""DeepLabV3 (Chen et al. 2017) adapted to any band count; never downloads.

Two families of backbones:
- ``resnet18`` / ``resnet34`` (the default is ``resnet18``): a light DeepLabV3 for training
  from scratch at small tiles on a CPU. The ResNet is dilated to ``output_stride`` 16 (or 8),
  the ASPP uses rates suited to 128-256 px tiles (a 128-px tile gives an 8 x 8 feature map at
  stride 16, where torchvision's rates 12/24/36 only see padding) and 128 channels, and a small
  decoder (as in DeepLabV3+) adds the stride-4 features of ``layer1`` so the logits are not
  8x8 blobs blown up to the tile. From scratch the stride-16 logits alone predicted one class
  at 64-px tiles in the README's NC benchmark.
- ``mobilenet_v3_large`` (stride 16) and ``resnet50`` (stride 8): torchvision's DeepLabV3
  exactly, for users with ImageNet weights for those backbones (``ENCODER_WEIGHTS``).
In both, the ASPP image-pooling branch uses GroupNorm instead of batch-norm (see below).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn
from torchvision.models import segmentation
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, ASPPPooling

from .common import RESNET_CHANNELS, PadCrop, check_choice, replace_first_conv, resnet

# torchvision backbone -> (constructor name, output stride). Both use dilated last stages.
TORCHVISION = {
    "mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", 16),
    "resnet50": ("deeplabv3_resnet50", 8),
}
LIGHT = ("resnet18", "resnet34")
BACKBONES = (*LIGHT, *TORCHVISION)
# Groups for the image-pooling branch's GroupNorm (its 256 or 128 channels divide evenly).
POOL_GROUPS = 32
ASPP_CHANNELS = 128
LOW_CHANNELS = 32
RATES = {16: (3, 6, 9), 8: (6, 12, 18)}


def _group_norm_pooling(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, ASPPPooling):
            # The ASPP image-pooling branch batch-normalises globally pooled 1x1 features, i.e.
            # one value per sample: a training batch of 1 is refused outright, and a batch of 2
            # normalises to about +-1 whatever the input, far from the running stats used at
            # inference. GroupNorm normalises each sample on its own: same in train and eval.
            norm = module[2]
            module[2] = nn.GroupNorm(POOL_GROUPS, norm.num_features)


def _conv_bn(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LightDeepLab(nn.Module):
    """Dilated ResNet-18/34, ASPP, and a decoder joining the stride-4 features."""

    def __init__(self, in_channels: int, num_classes: int, backbone: str, output_stride: int):
        super().__init__()
        c1, _, _, c4 = RESNET_CHANNELS[backbone]
        net = resnet(backbone, in_channels, output_stride)
        self.backbone = IntermediateLayerGetter(net, {"layer1": "low", "layer4": "out"})
        self.aspp = ASPP(c4, RATES[output_stride], ASPP_CHANNELS)
        self.low = _conv_bn(c1, LOW_CHANNELS, 1)
        self.head = nn.Sequential(
            _conv_bn(ASPP_CHANNELS + LOW_CHANNELS, ASPP_CHANNELS, 3),
            _conv_bn(ASPP_CHANNELS, ASPP_CHANNELS, 3),
            nn.Conv2d(ASPP_CHANNELS, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        low = self.low(feats["low"])
        deep = nnf.interpolate(
            self.aspp(feats["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        out = self.head(torch.cat([deep, low], dim=1))
        return nnf.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build(
    in_channels: int, num_classes: int, *, backbone: str = "resnet18", output_stride: int = 16
) -> nn.Module:
    """DeepLabV3 returning (N, num_classes, H, W) logits; ``backbone`` resnet18|resnet34
    (light, ``output_stride`` 16|8) or mobilenet_v3_large|resnet50 (torchvision's, fixed
    stride)."""
    check_choice("backbone", backbone, BACKBONES)
    if backbone in LIGHT:
        check_choice("output_stride", output_stride, (8, 16))
        model = LightDeepLab(in_channels, num_classes, backbone, output_stride)
        _group_norm_pooling(model)
        return PadCrop(model, output_stride)
    constructor, stride = TORCHVISION[backbone]
    # Looked up on the module at call time (tests spy on it). weights=None and
    # weights_backbone=None: random init, nothing fetched from the internet.
    model = getattr(segmentation, constructor)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )
    replace_first_conv(model.backbone, in_channels)
    _group_norm_pooling(model)
    return PadCrop(model, stride, out_key="out")

"""RefineNet (Lin et al. 2017): a ResNet encoder and a cascade of four RefineNet blocks.

Each block refines its inputs with residual conv units (RCU), fuses paths of different
resolutions (multi-resolution fusion) and gathers context with chained residual pooling (CRP).
The cascade starts at the coarsest ResNet stage (1/32) and ends at 1/4, where a small head
predicts the logits that are upsampled to the input size.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as nnf
from torch import nn
from torchvision import models

from .common import PadCrop, check_choice, check_positive_int, replace_first_conv

# The ResNet stem and four stages downsample by 32 in all.
STRIDE = 32
# backbone -> channels of layer1..layer4 outputs.
BACKBONES = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}
# Pooling blocks in each chained residual pooling, as in the paper's figure.
CRP_BLOCKS = 2


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    # No batch-norm inside the refinement path, as in the paper: the ResNet stages are normalised.
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class RCU(nn.Module):
    """Residual conv unit: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in-place: x is still needed for the residual sum.
        return x + self.conv2(nnf.relu(self.conv1(nnf.relu(x))))


class ChainedResidualPooling(nn.Module):
    """ReLU, then a chain of (5x5 max-pool stride 1 -> 3x3 conv) whose outputs are all summed."""

    def __init__(self, channels: int, blocks: int = CRP_BLOCKS):
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nnf.relu(x)
        out, path = x, x
        for conv in self.convs:
            path = conv(nnf.max_pool2d(path, 5, stride=1, padding=2))
            out = out + path
        return out


class RefineBlock(nn.Module):
    """Two RCUs per input path, multi-resolution fusion, chained residual pooling, one RCU."""

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        # Backbone stages are reduced to ``channels`` first; the previous block's output already
        # has that width and goes straight into its RCUs, as in the paper.
        self.adapt = nn.ModuleList(
            nn.Identity() if c == channels else conv3x3(c, channels) for c in in_channels
        )
        self.rcus = nn.ModuleList(nn.Sequential(RCU(channels), RCU(channels)) for _ in in_channels)
        # Fusion convs only matter when there is more than one path to bring to one scale.
        paths = len(in_channels) if len(in_channels) > 1 else 0
        self.fuse = nn.ModuleList(conv3x3(channels, channels) for _ in range(paths))
        self.crp = ChainedResidualPooling(channels)
        self.out = RCU(channels)

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        paths = [rcu(adapt(x)) for x, adapt, rcu in zip(xs, self.adapt, self.rcus)]
        if len(paths) > 1:
            size = max((p.shape[-2:] for p in paths), key=lambda s: s[0] * s[1])
            fused = 0
            for path, conv in zip(paths, self.fuse):
                path = conv(path)
                if path.shape[-2:] != size:
                    path = nnf.interpolate(path, size=size, mode="bilinear", align_corners=False)
                fused = fused + path
            x = fused
        else:
            x = paths[0]
        return self.out(self.crp(x))


class RefineNet(nn.Module):
    """4-cascaded RefineNet on a torchvision ResNet (random init)."""

    def __init__(self, in_channels: int, num_classes: int, backbone: str, width: int):
        super().__init__()
        # Looked up on the module at call time (tests spy on it); weights=None: random init.
        resnet = getattr(models, backbone)(weights=None)
        replace_first_conv(resnet, in_channels)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layers = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        c1, c2, c3, c4 = BACKBONES[backbone]
        # Coarsest first: refine4 sees layer4 alone, each later block adds a finer stage.
        self.refine4 = RefineBlock([c4], width)
        self.refine3 = RefineBlock([c3, width], width)
        self.refine2 = RefineBlock([c2, width], width)
        self.refine1 = RefineBlock([c1, width], width)
        self.head = nn.Sequential(RCU(width), RCU(width), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = []
        y = self.stem(x)
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        f1, f2, f3, f4 = feats
        y = self.refine4([f4])
        y = self.refine3([f3, y])
        y = self.refine2([f2, y])
        y = self.refine1([f1, y])
        return nnf.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)


def build(
    in_channels: int, num_classes: int, *, backbone: str = "resnet18", width: int = 64
) -> nn.Module:
    """RefineNet; ``backbone`` resnet18|resnet34|resnet50, ``width`` the refinement channels.

    Defaults (ResNet-18, width 64) keep a training step on 128-px tiles within a CPU's budget:
    the refinement convolutions run at stride 4, where width 128 costs 4x as much."""
    check_choice("backbone", backbone, BACKBONES)
    check_positive_int("width", width)
    return PadCrop(RefineNet(in_channels, num_classes, backbone, width), STRIDE)

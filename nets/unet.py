"""U-Net (Ronneberger et al. 2015): five levels, two 3x3 conv + batch-norm + ReLU per level."""

from __future__ import annotations

import torch
from torch import nn

from .common import PadCrop, check_choice, check_positive_int

# Four 2x downsamplings between the five levels: input sides must be multiples of 16.
STRIDE = 16
UPSAMPLING = ("bilinear", "transpose")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> batch-norm -> ReLU) twice; the conv bias is redundant before batch-norm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample 2x halving the channels, concatenate the skip, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, upsampling: str):
        super().__init__()
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            # Bilinear + 1x1 conv: same widths as the transposed conv, no checkerboard artefacts.
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Encoder widths base_width * (1, 2, 4, 8, 16); input sides must be multiples of 16."""

    def __init__(self, in_channels: int, num_classes: int, base_width: int, upsampling: str):
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1])) for i in range(4)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], upsampling) for i in reversed(range(4))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


def build(
    in_channels: int, num_classes: int, *, base_width: int = 32, upsampling: str = "bilinear"
) -> nn.Module:
    """U-Net; ``base_width`` is the first level's width, ``upsampling`` bilinear|transpose."""
    check_positive_int("base_width", base_width)
    check_choice("upsampling", upsampling, UPSAMPLING)
    return PadCrop(UNet(in_channels, num_classes, base_width, upsampling), STRIDE)

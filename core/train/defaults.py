"""Device-suited defaults: a network and tile size that give hundreds to thousands of steps in
a few minutes on the device at hand, with the log saying what was chosen and why.

On 2 idle CPU cores a U-Net of width 16 on 128-px windows, batch 8, runs about 2.8 steps/s
(issue 11's reference: 499 steps in 3 minutes), so 5 minutes give several hundred steps;
width 32 on 256-px tiles is 8x the work per step, i.e. too few steps to learn in minutes. A CUDA
GPU affords the larger network and tiles (and twice the batch) at a similar step count.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.device import is_cuda

# device kind -> (tile size, U-Net base width, batch size)
DEFAULTS = {"cpu": (128, 16, 8), "cuda": (256, 32, 16)}


@dataclass
class Chosen:
    tile_size: int
    batch_size: int
    arch_kwargs: dict
    notes: list


def device_defaults(
    device: str, architecture: str, tile_size: int, batch_size: int, arch_kwargs: dict
) -> Chosen:
    """Fill the values left at 0 (tile size, batch size) or unset (U-Net width) for ``device``;
    ``notes`` say what was chosen and why, for the log."""
    kind = "cuda" if is_cuda(device) else "cpu"
    tile, width, batch = DEFAULTS[kind]
    why = (
        "sized for hundreds to thousands of steps in a few minutes on a CPU"
        if kind == "cpu"
        else "a CUDA GPU affords larger tiles and networks"
    )
    notes, kwargs = [], dict(arch_kwargs)
    if not tile_size:
        tile_size = tile
        notes.append(f"tile size {tile} px")
    if not batch_size:
        batch_size = batch
        notes.append(f"batch size {batch}")
    if architecture == "unet" and "base_width" not in kwargs:
        kwargs["base_width"] = width
        notes.append(f"U-Net width {width}")
    if notes:
        notes = [f"Defaults for {kind.upper()}: {', '.join(notes)} ({why}; set TILE_SIZE, "
                 "BATCH_SIZE or ARCH_OPTIONS to override)."]  # fmt: skip
    return Chosen(tile_size, batch_size, kwargs, notes)

"""Training augmentation: the same flips and 90-degree rotations of images and labels, and
photometric changes of images only. Shared by supervised and label-free training."""

from __future__ import annotations


def flip_rotate(x, y, params):
    """Per-sample flips and 90-degree rotations (square tiles) of images and labels alike.

    ``params`` is an (n, 3) tensor of uniform draws: horizontal flip, vertical flip, rotation.
    """
    import torch

    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if params[i, 0] < 0.5:
            xi, yi = xi.flip(-1), yi.flip(-1)
        if params[i, 1] < 0.5:
            xi, yi = xi.flip(-2), yi.flip(-2)
        k = int(params[i, 2] * 4) % 4
        if k and xi.shape[-1] == xi.shape[-2]:
            xi, yi = torch.rot90(xi, k, (-2, -1)), torch.rot90(yi, k, (-2, -1))
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def augment_batch(x, y, gen):
    """Random flips, 90-degree rotations (square tiles) and brightness/contrast per sample."""
    import torch

    n = x.shape[0]
    params = torch.rand((n, 5), generator=gen)  # drawn on the CPU: same on every device
    x, y = flip_rotate(x, y, params[:, :3])
    gain = (0.8 + 0.4 * params[:, 3]).to(x.device, x.dtype).view(n, 1, 1, 1)
    shift = (0.1 * (params[:, 4] - 0.5)).to(x.device, x.dtype).view(n, 1, 1, 1)
    return x * gain + shift, y

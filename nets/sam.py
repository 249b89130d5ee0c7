"""Segment Anything as a fine-tunable segmentation network (background / object).

``SamSegmenter`` wraps a loaded ``Sam``: its image and prompt encoders are frozen, its mask
decoder trains. Every tile is prompted with a box covering the whole tile, so the network maps
(N, 3, H, W) MapSeg-normalised tiles (each band scaled to [0, 1]) to (N, 2, H, W) logits
(background, object) like any other MapSeg net, and the generic training loop and Segment Raster
use it unchanged.

Building: ``build_network("sam", 3, 2, checkpoint="sam_vit_b_01ec64.pth")`` loads the
checkpoint and records the encoder config and the checkpoint's identity (file name, size,
SHA-256) in ``mapseg_arch["kwargs"]`` (``config``, ``checkpoint_id``). Only the mask decoder is
trained, so only it is in the network's ``state_dict`` and in the MapSeg model file (about 16 MB
for ViT-B instead of 375 MB); rebuilding from the model file (``checkpoint_id`` given) takes the
frozen encoders from ``checkpoint`` again and refuses any file but the one trained from. Model
files written before this held the whole SAM: with ``config`` and no ``checkpoint_id`` the
network is built with random weights that the model file's full state dict then replaces.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as nnf
from torch import nn

from ..core.errors import MapSegError
from ..core.sam.checkpoint import build_sam, checkpoint_identity, load_sam, require_checkpoint

TRAINED = "sam.mask_decoder."  # the only part that learns, and the only part saved


class SamSegmenter(nn.Module):
    def __init__(
        self,
        sam: nn.Module,
        config: Dict[str, Any],
        num_classes: int = 2,
        checkpoint_id: Dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.sam = sam
        self.config = dict(config)
        self.num_classes = num_classes
        # None: an older model file that holds the whole SAM (its state dict is saved whole).
        self.checkpoint_id = dict(checkpoint_id) if checkpoint_id else None
        for module in (sam.image_encoder, sam.prompt_encoder):
            for p in module.parameters():
                p.requires_grad_(False)

    # build_network assigns mapseg_arch after building: complete it with the encoder config
    # read from the checkpoint and the checkpoint's identity, so the model file says what
    # rebuilds this network.
    @property
    def mapseg_arch(self) -> Dict[str, Any]:
        return self._mapseg_arch

    @mapseg_arch.setter
    def mapseg_arch(self, arch: Dict[str, Any]) -> None:
        arch = dict(arch)
        kwargs = dict(arch.get("kwargs") or {}, config=dict(self.config))
        if self.checkpoint_id is not None:
            kwargs["checkpoint_id"] = dict(self.checkpoint_id)
        arch["kwargs"] = kwargs
        self._mapseg_arch = arch

    def state_dict(self, *args, **kwargs):
        """The trained mask decoder only: the frozen encoders are the checkpoint's."""
        state = super().state_dict(*args, **kwargs)
        if self.checkpoint_id is not None:
            prefix = kwargs.get("prefix", "")
            trained = prefix + TRAINED
            frozen = [
                k for k in state if k.startswith(prefix + "sam.") and not k.startswith(trained)
            ]
            for key in frozen:
                del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A decoder-only state dict (what ``state_dict`` gives) or a whole one."""
        if self.checkpoint_id is not None:
            state_dict = {**nn.Module.state_dict(self), **state_dict}  # encoders: as loaded
        return super().load_state_dict(state_dict, strict, assign)

    def train(self, mode: bool = True) -> SamSegmenter:
        super().train(mode)
        self.sam.image_encoder.eval()  # frozen: keep it in inference mode
        self.sam.prompt_encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise MapSegError(f"SAM takes 3 bands (RGB); the input has {x.shape[1]}.")
        n, _, h, w = x.shape
        size = self.sam.image_encoder.img_size
        scale = size / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        # MapSeg tiles are scaled to [0, 1]; SAM normalises 0..255 RGB with its own mean/std.
        img = nnf.interpolate(x * 255.0, (nh, nw), mode="bilinear", align_corners=False)
        img = self.sam.preprocess(img)
        with torch.no_grad():
            embeddings = self.sam.image_encoder(img)
            box = torch.tensor([[0.0, 0.0, nw, nh]], device=x.device).expand(n, 4)
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=box, masks=None)
            pe = self.sam.prompt_encoder.get_dense_pe()
        low = torch.cat(
            [
                self.sam.mask_decoder(
                    image_embeddings=embeddings[i : i + 1],
                    image_pe=pe,
                    sparse_prompt_embeddings=sparse[i : i + 1],
                    dense_prompt_embeddings=dense[i : i + 1],
                    multimask_output=False,
                )[0]
                for i in range(n)
            ]
        )
        logits = self.sam.postprocess_masks(low, (nh, nw), (h, w))
        if self.num_classes == 1:
            return logits
        # softmax([-l/2, l/2]) = (1 - sigmoid(l), sigmoid(l)): the object logit of SAM itself.
        return torch.cat([-0.5 * logits, 0.5 * logits], dim=1)


def build(
    in_channels: int,
    num_classes: int,
    *,
    checkpoint: str = "",
    config: dict | None = None,
    checkpoint_id: dict | None = None,
) -> nn.Module:
    """SAM with a trainable mask decoder, from ``checkpoint`` (a SAM .pth; with
    ``checkpoint_id``, it must be that file) or, for older whole-SAM model files, ``config``."""
    if in_channels != 3:
        raise MapSegError(
            f"The SAM network takes exactly 3 bands (RGB); {in_channels} were given. Choose "
            "three bands of the raster."
        )
    if num_classes not in (1, 2):
        raise MapSegError(
            f"The SAM network segments one object class against background (2 classes); "
            f"{num_classes} classes were given. Train one SAM model per class."
        )
    if checkpoint_id:  # a fine-tuned decoder: the encoders come from its own checkpoint
        sam, config = load_sam(require_checkpoint(checkpoint, checkpoint_id))
    elif config:
        sam = build_sam(config)  # an older model file: its state dict holds the whole SAM
    elif checkpoint:
        sam, config = load_sam(checkpoint)
        checkpoint_id = checkpoint_identity(checkpoint)
    else:
        raise MapSegError(
            "The SAM network needs a Segment Anything checkpoint (CHECKPOINT, a .pth file)."
        )
    return SamSegmenter(sam, config, num_classes, checkpoint_id)

"""Segment Anything (SAM) checkpoints: read safely, recognise the encoder, build the model.

Official checkpoints (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``)
are plain state dicts. They are read with ``torch.load(..., weights_only=True)`` (a file that
carries pickled code is refused) and the architecture is read off the tensors themselves, so
ViT-B/L/H and any other consistent size (the tiny models the tests build included) load through
the same function. Nothing here imports qgis; torch and segment_anything are imported lazily.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Dict, Tuple

from ..errors import MapSegError
from ..io.checksum import file_sha256

# (embed_dim, depth) -> official name and the global-attention blocks Meta's builder uses.
VARIANTS = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}
ENCODER_PREFIX = "image_encoder."
REQUIRED_KEYS = (
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.pos_embed",
    "image_encoder.neck.0.weight",
    "prompt_encoder.mask_downscaling.0.weight",
    "mask_decoder.mask_tokens.weight",
    "mask_decoder.iou_token.weight",
)
# Not stored in checkpoints (shape-free); every published SAM uses these values.
DECODER_HEADS = 8
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]

CHECKPOINT_HINT = (
    "Download an official checkpoint from Meta's segment-anything release (for example "
    "sam_vit_b_01ec64.pth, about 375 MB) and choose that .pth file."
)


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The state dict of a SAM checkpoint file (an official ``.pth`` or one saved like it)."""
    import torch

    if not path or not os.path.isfile(path):
        raise MapSegError(f"The SAM checkpoint '{path}' does not exist. {CHECKPOINT_HINT}")
    if not zipfile.is_zipfile(path):
        raise MapSegError(
            f"'{path}' is not a PyTorch checkpoint (not a torch.save archive). {CHECKPOINT_HINT}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MapSegError(
            f"Refusing to load '{path}': it carries pickled Python objects or code, which a SAM "
            f"checkpoint never does, and loading it could run that code. {CHECKPOINT_HINT}"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise MapSegError(f"Cannot read the SAM checkpoint '{path}': {err}") from None
    if isinstance(state, dict) and state.get("format") == "mapseg-model":
        raise MapSegError(
            f"'{path}' is a MapSeg model file, not a Segment Anything checkpoint. Use it with "
            f"Segment Raster, or choose a SAM checkpoint. {CHECKPOINT_HINT}"
        )
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # some fine-tuning scripts wrap the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MapSegError(
            f"'{path}' does not hold a Segment Anything state dict (a mapping of tensor names "
            f"to weights). {CHECKPOINT_HINT}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise MapSegError(
            f"'{path}' is not a Segment Anything checkpoint: it lacks {', '.join(missing[:3])}. "
            f"{CHECKPOINT_HINT}"
        )
    return state


def _count(state: Dict[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _shape(state: Dict[str, Any], key: str, dim: int = 0) -> int:
    return int(state[key].shape[dim])


def _attention(state: Dict[str, Any], embed_dim: int, depth: int, grid: int) -> Dict[str, Any]:
    """Heads, window size and global-attention blocks, read off the relative positions.

    A block's ``rel_pos_h`` holds 2 * side - 1 rows: side = the grid for a global block, the
    window size otherwise. Without relative positions the heads leave no trace in the shapes.
    """
    use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h" in state
    global_idx, window_size, num_heads = [], 0, None
    for i in range(depth if use_rel_pos else 0):
        rel = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
        num_heads = embed_dim // int(rel.shape[1])
        side = (int(rel.shape[0]) + 1) // 2
        if side == grid:
            global_idx.append(i)
        else:
            window_size = side
    if num_heads is None:
        known = VARIANTS.get((embed_dim, depth))
        num_heads = {"vit_b": 12, "vit_l": 16, "vit_h": 16}.get(known, max(1, embed_dim // 64))
    if not global_idx and not window_size:
        global_idx = list(range(depth))
    return {
        "num_heads": int(num_heads),
        "use_rel_pos": use_rel_pos,
        "window_size": int(window_size),
        "global_attn_indexes": global_idx,
    }


def _encoder_config(state: Dict[str, Any]) -> Dict[str, Any]:
    """The image encoder's settings (ViT width, depth, patches, attention) from its tensors."""
    proj = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = int(proj.shape[0]), int(proj.shape[2])
    grid = _shape(state, "image_encoder.pos_embed", 1)
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    mlp_hidden = _shape(state, "image_encoder.blocks.0.mlp.lin1.weight")
    return {
        "variant": VARIANTS.get((embed_dim, depth), "custom"),
        "img_size": grid * patch_size,
        "patch_size": patch_size,
        "in_chans": int(proj.shape[1]),
        "embed_dim": embed_dim,
        "depth": depth,
        "mlp_ratio": mlp_hidden / embed_dim,
        "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in state,
        **_attention(state, embed_dim, depth, grid),
        "out_chans": _shape(state, "image_encoder.neck.0.weight"),
    }


def _decoder_config(state: Dict[str, Any]) -> Dict[str, Any]:
    """The prompt encoder's and mask decoder's settings from their tensors."""
    tokens = state["mask_decoder.mask_tokens.weight"]
    decoder_dim = int(tokens.shape[1])
    return {
        "mask_in_chans": _shape(state, "prompt_encoder.mask_downscaling.0.weight") * 4,
        "decoder_dim": decoder_dim,
        "decoder_depth": _count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        "decoder_mlp_dim": _shape(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight"),
        "decoder_heads": DECODER_HEADS if decoder_dim % (2 * DECODER_HEADS) == 0 else 1,
        "num_multimask_outputs": int(tokens.shape[0]) - 1,
        "iou_head_depth": _count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        "iou_head_hidden_dim": _shape(state, "mask_decoder.iou_prediction_head.layers.0.weight"),
    }


def config_from_state_dict(state: Dict[str, Any]) -> Dict[str, Any]:
    """The SAM architecture (JSON-serialisable) that the tensors of ``state`` belong to."""
    try:
        config = {**_encoder_config(state), **_decoder_config(state)}
    except (KeyError, IndexError, AttributeError, ZeroDivisionError) as err:
        raise MapSegError(
            f"The checkpoint looks like Segment Anything but its tensors are inconsistent "
            f"({err}). {CHECKPOINT_HINT}"
        ) from None
    empty = config["depth"] == 0 or config["decoder_depth"] == 0
    if empty or config["embed_dim"] % config["num_heads"]:
        raise MapSegError(f"The SAM checkpoint's encoder is inconsistent. {CHECKPOINT_HINT}")
    return config


# Constructor argument -> config key, for the modules of ``segment_anything.modeling`` whose
# arguments are plain settings: the one place where the config meets SAM's constructors.
ENCODER_ARGS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "out_chans",
    "qkv_bias",
    "use_rel_pos",
    "window_size",
)  # named as in the config
TRANSFORMER_ARGS = {
    "depth": "decoder_depth",
    "embedding_dim": "decoder_dim",
    "mlp_dim": "decoder_mlp_dim",
    "num_heads": "decoder_heads",
}
DECODER_ARGS = {
    "num_multimask_outputs": "num_multimask_outputs",
    "transformer_dim": "decoder_dim",
    "iou_head_depth": "iou_head_depth",
    "iou_head_hidden_dim": "iou_head_hidden_dim",
}


def _args(config: Dict[str, Any], names: Dict[str, str] | Tuple[str, ...]) -> Dict[str, Any]:
    pairs = names.items() if isinstance(names, dict) else zip(names, names)
    return {arg: config[key] for arg, key in pairs}


def build_sam(config: Dict[str, Any]):
    """A ``segment_anything`` ``Sam`` with random weights, shaped as ``config`` says."""
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    size = config["img_size"]
    grid = size // config["patch_size"]
    encoder = ImageEncoderViT(
        **_args(config, ENCODER_ARGS),
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        global_attn_indexes=tuple(config["global_attn_indexes"]),
    )
    prompt_encoder = PromptEncoder(
        embed_dim=config["decoder_dim"],
        image_embedding_size=(grid, grid),
        input_image_size=(size, size),
        mask_in_chans=config["mask_in_chans"],
    )
    transformer = TwoWayTransformer(**_args(config, TRANSFORMER_ARGS))
    decoder = MaskDecoder(transformer=transformer, **_args(config, DECODER_ARGS))
    return Sam(encoder, prompt_encoder, decoder, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)


def load_sam(path: str, device: str = "cpu") -> Tuple[Any, Dict[str, Any]]:
    """(Sam in eval mode on ``device``, its config) from a checkpoint file."""
    state = read_checkpoint(path)
    config = config_from_state_dict(state)
    sam = build_sam(config)
    try:
        sam.load_state_dict(state)
    except RuntimeError as err:
        raise MapSegError(
            f"The weights in '{path}' do not fit the SAM architecture read from them "
            f"({str(err).splitlines()[0]}). {CHECKPOINT_HINT}"
        ) from None
    return sam.to(device).eval(), config


def describe(config: Dict[str, Any]) -> str:
    name = {"vit_b": "ViT-B", "vit_l": "ViT-L", "vit_h": "ViT-H"}.get(config["variant"], "custom")
    return (
        f"SAM {name}: encoder width {config['embed_dim']}, {config['depth']} blocks, "
        f"{config['num_heads']} heads, input {config['img_size']} px"
    )


# A fine-tuned SAM model file holds only the trained mask decoder; its frozen image and prompt
# encoders are the checkpoint's. The file records which checkpoint by name, size and SHA-256, so
# the right file is recognised wherever it lies (a renamed copy included) and any other refused.
_IDENTITIES: Dict[Tuple[str, int, int], Dict[str, Any]] = {}


def checkpoint_identity(path: str) -> Dict[str, Any]:
    """``{"name", "size", "sha256"}`` of a checkpoint file (hashed once per file version)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = {"sha256": file_sha256(path)}
    return {"name": os.path.basename(path), "size": st.st_size, **_IDENTITIES[key]}


def _describe_file(identity: Dict[str, Any]) -> str:
    return f"{identity['name']} ({identity['size']:,} bytes, SHA-256 {identity['sha256'][:16]}...)"


def require_checkpoint(path: str, expected: Dict[str, Any]) -> str:
    """``path`` when it is the checkpoint ``expected`` describes; otherwise a clear error."""
    wanted = _describe_file(expected)
    if not path:
        raise MapSegError(
            "This model fine-tuned Segment Anything's mask decoder: its file holds only that "
            "decoder, and the image encoder comes from the SAM checkpoint it was trained "
            f"from, {wanted}. Choose that file as CHECKPOINT."
        )
    if not os.path.isfile(path):
        raise MapSegError(f"The SAM checkpoint '{path}' does not exist. Choose {wanted}.")
    got = checkpoint_identity(path)
    if (got["size"], got["sha256"]) != (int(expected["size"]), expected["sha256"]):
        raise MapSegError(
            f"'{path}' is not the SAM checkpoint this model was fine-tuned from: that was "
            f"{wanted}; this file is {_describe_file(got)}. A fine-tuned decoder only works "
            f"with the encoder it was trained with: choose {expected['name']} as CHECKPOINT."
        )
    return path

"""The SAM network for fine-tuning: decoder-only training, model files, balanced tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_sam

from mapseg.core.errors import MapSegError
from mapseg.core.sam.finetune import balanced_weights, object_fractions


def sam_meta(arch_kwargs: dict) -> dict:
    """Model metadata for a SAM network with ``arch_kwargs`` (object against background)."""
    from mapseg.core.model.modelfile import new_meta

    return new_meta(
        architecture="sam",
        arch_kwargs=arch_kwargs,
        in_bands=3,
        band_stats=[{"offset": 0.0, "scale": 1.0, "low": 0.0, "high": 1.0}] * 3,
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "object"}],
        tile_size=64,
    )


def test_sam_net_trains_only_the_decoder_and_rebuilds_with_its_checkpoint(
    tmp_path, tiny_sam_checkpoint
):
    import hashlib
    import shutil

    from mapseg.core.model.modelfile import build_model, load_model, save_model
    from mapseg.nets import build_network

    ckpt = tmp_path / "copy.pth"
    shutil.copy(tiny_sam_checkpoint, ckpt)
    net = build_network("sam", 3, 2, checkpoint=str(ckpt)).train()
    kwargs = net.mapseg_arch["kwargs"]
    assert kwargs["checkpoint"] == str(ckpt) and kwargs["config"]["embed_dim"] == 32
    assert kwargs["checkpoint_id"] == {
        "name": "copy.pth",
        "size": ckpt.stat().st_size,
        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
    }
    x = torch.rand(2, 3, 45, 70)
    out = net(x)
    assert out.shape == (2, 2, 45, 70) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 0], -out[:, 1])
    torch.nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 45, 70))).backward()
    grads = {n for n, p in net.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("sam.mask_decoder.") for n in grads)
    assert not any(p.requires_grad for p in net.sam.image_encoder.parameters())
    # Only the decoder is saved: every one of its tensors, nothing of the frozen encoders.
    state = net.state_dict()
    decoder = {f"sam.{k}" for k in torch.load(ckpt, weights_only=True) if "mask_decoder." in k}
    assert set(state) == decoder
    with torch.no_grad():  # a decoder that moved away from the checkpoint's
        for p in net.sam.mask_decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    meta = sam_meta(kwargs)
    save_model(str(tmp_path / "m.pt"), meta, net.state_dict())
    ckpt.unlink()
    meta2, state2 = load_model(str(tmp_path / "m.pt"))
    assert set(state2) == decoder
    # The checkpoint is asked for by name, and recognised by its content wherever it lies.
    with pytest.raises(MapSegError, match=r"only that decoder.*copy\.pth.*CHECKPOINT"):
        build_model(meta2, state2)
    renamed = tmp_path / "sam_tiny_renamed.pth"
    shutil.copy(tiny_sam_checkpoint, renamed)
    again = build_model(meta2, state2, checkpoint=str(renamed)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), net.eval()(x))
    # Another SAM of the same shape is refused: its encoder is not the one trained with.
    other = tmp_path / "other.pth"
    torch.save(build_tiny_sam(seed=1).state_dict(), other)
    with pytest.raises(MapSegError, match=r"not the SAM checkpoint this model was fine-tuned"):
        build_model(meta2, state2, checkpoint=str(other))


def test_whole_sam_model_files_still_load_without_checkpoint(tmp_path, tiny_sam_checkpoint):
    """Model files written before decoder-only saving hold the whole SAM and no checkpoint id."""
    from mapseg.core.model.modelfile import build_model, load_model, save_model
    from mapseg.nets import build_network

    net = build_network("sam", 3, 2, checkpoint=str(tiny_sam_checkpoint)).eval()
    whole = torch.nn.Module.state_dict(net)
    kwargs = {"checkpoint": "", "config": net.config}
    meta = sam_meta(kwargs)
    save_model(str(tmp_path / "old.pt"), meta, whole)
    again = build_model(*load_model(str(tmp_path / "old.pt"))).eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))
    assert set(again.state_dict()) == set(whole)


def test_vit_b_fine_tune_holds_under_20_mb():
    """The decoder of ViT-B is what a ViT-B fine-tune file holds (meta tensors: shapes only)."""
    from segment_anything import sam_model_registry

    from mapseg.core.sam.checkpoint import config_from_state_dict
    from mapseg.nets.sam import SamSegmenter

    with torch.device("meta"):
        sam = sam_model_registry["vit_b"]()
    config = config_from_state_dict(sam.state_dict())
    identity = {"name": "sam_vit_b_01ec64.pth", "size": 375042383, "sha256": "0" * 64}
    net = SamSegmenter(sam, config, 2, identity)
    saved = sum(v.numel() * v.element_size() for v in net.state_dict().values())
    whole = sum(v.numel() * v.element_size() for v in torch.nn.Module.state_dict(net).values())
    assert saved < 20e6 and whole > 350e6
    assert all(k.startswith("sam.mask_decoder.") for k in net.state_dict())


def test_sam_net_refuses_wrong_bands_or_classes(tiny_sam_checkpoint):
    from mapseg.nets import build_network

    with pytest.raises(MapSegError, match="exactly 3 bands"):
        build_network("sam", 4, 2, checkpoint=str(tiny_sam_checkpoint))
    with pytest.raises(MapSegError, match="one object class"):
        build_network("sam", 3, 5, checkpoint=str(tiny_sam_checkpoint))
    with pytest.raises(MapSegError, match="needs a Segment Anything checkpoint"):
        build_network("sam", 3, 2)


def test_balanced_weights_draw_positive_and_negative_tiles_equally():
    labels = [np.zeros((4, 4), np.uint8) for _ in range(8)]
    labels[0][0, 0] = 1
    labels[1][:2] = 1
    labels[2][:] = 255  # nothing labelled: a negative
    fractions = object_fractions(labels)
    assert fractions[:3] == pytest.approx([1 / 16, 0.5, 0.0])
    weights = balanced_weights(fractions)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[:2].sum() == pytest.approx(0.5) and weights[2:].sum() == pytest.approx(0.5)
    assert balanced_weights([0.2, 0.3]) == pytest.approx([0.5, 0.5])
    assert balanced_weights(fractions, 0.5, min_fraction=0.1)[1] == pytest.approx(0.5)

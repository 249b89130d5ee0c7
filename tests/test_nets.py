"""Networks: shapes at odd tiles and band counts, gradients, determinism, rebuild, no downloads."""

from __future__ import annotations

import inspect
import io
import json
import subprocess
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
import torchvision
from torch import nn

from mapseg.core.errors import MapSegError
from mapseg.nets import REGISTRY, available, build_network, get_builder
from mapseg.nets.common import PadCrop, replace_first_conv

ROOT = Path(__file__).resolve().parents[1]

# (bands, classes, (height, width)): odd and non-square tiles on purpose.
Case = Tuple[int, int, Tuple[int, int]]


@pytest.fixture(autouse=True)
def no_downloads(tmp_path, monkeypatch):
    """Empty TORCH_HOME, and any attempt to fetch weights fails loudly; it must stay empty."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network tried to download weights: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    yield
    assert list(home.rglob("*")) == []


def pytest_generate_tests(metafunc):
    # Each NetTester subclass lists its own cases; the generic tests run over them.
    if "case" in metafunc.fixturenames:
        cases = metafunc.cls.CASES
        metafunc.parametrize("case", cases, ids=[f"b{b}-c{c}-{h}x{w}" for b, c, (h, w) in cases])


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


class NetTester:
    """Generic checks for one architecture; subclasses set NAME, KWARGS, CASES, SPIED."""

    NAME: ClassVar[str]
    KWARGS: ClassVar[Dict[str, Any]] = {}
    CASES: ClassVar[List[Case]]
    # torchvision constructors (module, attribute) the builder must call with weights=None.
    SPIED: ClassVar[List[Tuple[Any, str]]] = []

    def build(self, bands: int, classes: int) -> nn.Module:
        return build_network(self.NAME, bands, classes, **self.KWARGS)

    def test_forward_backward(self, case: Case):
        bands, classes, (h, w) = case
        torch.manual_seed(0)
        model = self.build(bands, classes).train()
        assert first_conv(model).in_channels == bands
        x = torch.randn(2, bands, h, w)
        out = model(x)
        assert out.shape == (2, classes, h, w)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        if classes == 1:
            loss = nnf.binary_cross_entropy_with_logits(out, torch.rand(2, 1, h, w).round())
        else:
            loss = nnf.cross_entropy(out, torch.randint(0, classes, (2, h, w)))
        loss.backward()
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None, f"{name} got no gradient"
                assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        # The adapted input conv learns too (a frozen or detached stem would show zeros here).
        assert first_conv(model).weight.grad.abs().sum() > 0

    def test_train_step_with_batch_of_one(self):
        # The last batch of an epoch can hold a single tile; training must not refuse it.
        bands, classes, (h, w) = self.CASES[0]
        model = self.build(bands, classes).train()
        out = model(torch.randn(1, bands, h, w))
        assert out.shape == (1, classes, h, w)
        out.mean().backward()

    def test_eval_deterministic_and_per_sample(self):
        bands, classes, (h, w) = self.CASES[0]
        torch.manual_seed(0)
        model = self.build(bands, classes).eval()
        x = torch.randn(2, bands, h, w)
        with torch.no_grad():
            first, second, alone = model(x), model(x), model(x[1:])
        assert torch.equal(first, second)
        # Eval mode uses running statistics: a sample's logits do not depend on its batch.
        # Up to rounding: oneDNN picks other kernels for other batch sizes, so float32 sums run
        # in another order, about sqrt(n) * 1.2e-7 relative per conv of n <= 4608 terms (8e-6),
        # compounding over ~50 layers to ~6e-5 of the activations' scale (measured: 2.8e-5 on
        # an AMD EPYC). 1e-3 of the logits' scale is 15x that; batch-dependent outputs differ
        # by far more (checked below in train mode, where batch-norm uses the batch).
        tol = 1e-3 * first.abs().max().item()
        torch.testing.assert_close(alone, first[1:], rtol=0, atol=tol)
        model.train()
        with torch.no_grad():
            leak = (model(x[1:]) - model(x)[1:]).abs().max().item()
        assert leak > 10 * tol

    def test_rebuild_from_arch_gives_identical_outputs(self):
        bands, classes, (h, w) = self.CASES[-1]
        torch.manual_seed(0)
        model = self.build(bands, classes)
        with torch.no_grad():
            model.train()(torch.randn(2, bands, h, w))  # move batch-norm running stats off init
        model.eval()
        x = torch.randn(1, bands, h, w)
        with torch.no_grad():
            expected = model(x)

        # As a model file does it: JSON metadata, state dict through torch.save/weights_only.
        arch = json.loads(json.dumps(model.mapseg_arch))
        assert arch == {
            "name": self.NAME,
            "in_channels": bands,
            "num_classes": classes,
            "kwargs": arch["kwargs"],
        }
        assert self.KWARGS.items() <= arch["kwargs"].items()
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)

        torch.manual_seed(1)  # a different random init: only the state dict can make them equal
        rebuilt = build_network(
            arch["name"], arch["in_channels"], arch["num_classes"], **arch["kwargs"]
        ).eval()
        with torch.no_grad():
            assert not torch.equal(rebuilt(x), expected)
            rebuilt.load_state_dict(state, strict=True)
            assert torch.equal(rebuilt(x), expected)

    def test_torchvision_builders_get_weights_none(self, monkeypatch):
        calls = []
        for module, attr in self.SPIED:
            original = getattr(module, attr)

            def spy(*args, _original=original, _attr=attr, **kwargs):
                calls.append((_attr, kwargs))
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, attr, spy)
        self.build(3, 2)
        assert [attr for attr, _ in calls] == [attr for _, attr in self.SPIED]
        for attr, kwargs in calls:
            assert "weights" in kwargs and kwargs["weights"] is None, attr
            if attr.startswith(("deeplabv3", "fcn")):
                assert "weights_backbone" in kwargs and kwargs["weights_backbone"] is None, attr


class TestUNet(NetTester):
    NAME = "unet"
    KWARGS = {"base_width": 8}
    CASES = [(1, 2, (64, 64)), (3, 5, (97, 97)), (7, 2, (65, 130)), (4, 1, (33, 47))]


class TestUNetTranspose(NetTester):
    NAME = "unet"
    KWARGS = {"base_width": 8, "upsampling": "transpose"}
    CASES = [(3, 5, (97, 97)), (7, 2, (65, 130))]


class TestDeepLabV3MobileNet(NetTester):
    NAME = "deeplabv3"
    KWARGS = {"backbone": "mobilenet_v3_large"}
    CASES = [(1, 2, (64, 64)), (3, 5, (97, 97)), (7, 2, (65, 130))]
    SPIED = [(torchvision.models.segmentation, "deeplabv3_mobilenet_v3_large")]


class TestDeepLabV3ResNet50(NetTester):
    NAME = "deeplabv3"
    KWARGS = {"backbone": "resnet50"}
    CASES = [(4, 3, (57, 64))]
    SPIED = [(torchvision.models.segmentation, "deeplabv3_resnet50")]


class TestDeepLabV3Light(NetTester):  # the default: ResNet-18 at stride 16 with a decoder
    NAME = "deeplabv3"
    CASES = [(1, 2, (64, 64)), (3, 5, (97, 97)), (7, 2, (65, 130))]
    SPIED = [(torchvision.models, "resnet18")]


class TestDeepLabV3Stride8(NetTester):
    NAME = "deeplabv3"
    KWARGS = {"backbone": "resnet34", "output_stride": 8}
    CASES = [(4, 3, (57, 64))]
    SPIED = [(torchvision.models, "resnet34")]


class TestFCN(NetTester):  # the default: FCN-8s on ResNet-18
    NAME = "fcn"
    CASES = [(7, 5, (64, 71)), (1, 2, (33, 47))]
    SPIED = [(torchvision.models, "resnet18")]


class TestFCNResNet50(NetTester):
    NAME = "fcn"
    KWARGS = {"backbone": "resnet50"}
    CASES = [(7, 5, (64, 71))]
    SPIED = [(torchvision.models.segmentation, "fcn_resnet50")]


class TestRefineNet(NetTester):
    NAME = "refinenet"
    KWARGS = {"backbone": "resnet18", "width": 16}
    CASES = [(1, 2, (64, 64)), (3, 5, (97, 97)), (7, 2, (65, 130)), (4, 1, (64, 64))]
    SPIED = [(torchvision.models, "resnet18")]


class TestRefineNetResNet50(NetTester):
    NAME = "refinenet"
    KWARGS = {"backbone": "resnet50", "width": 16}
    CASES = [(3, 5, (64, 64))]
    SPIED = [(torchvision.models, "resnet50")]


# -- registry -------------------------------------------------------------------------------


def test_registry_lists_every_architecture():
    assert available() == ["deeplabv3", "fcn", "refinenet", "sam", "unet"] == sorted(REGISTRY)
    for name in available():
        params = list(inspect.signature(get_builder(name)).parameters.values())
        assert [p.name for p in params[:2]] == ["in_channels", "num_classes"], name
        # Options keyword-only with defaults: build_network can record every resolved value.
        for p in params[2:]:
            assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, (name, p.name)


def test_numpy_counts_become_plain_ints():
    model = build_network("unet", np.int64(4), np.int32(3), base_width=4)
    assert model.mapseg_arch["in_channels"] == 4 and type(model.mapseg_arch["in_channels"]) is int
    assert type(model.mapseg_arch["num_classes"]) is int
    json.dumps(model.mapseg_arch)
    assert model.eval()(torch.randn(1, 4, 16, 16)).shape == (1, 3, 16, 16)


def test_default_kwargs_are_recorded():
    model = build_network("unet", 3, 2, base_width=4)
    assert model.mapseg_arch["kwargs"] == {"base_width": 4, "upsampling": "bilinear"}
    # Issue 11: lighter defaults (ResNet-18, width 64) so RefineNet trains on a CPU budget.
    model = build_network("refinenet", 3, 2, backbone="resnet18")
    assert model.mapseg_arch["kwargs"] == {"backbone": "resnet18", "width": 64}
    model = build_network("deeplabv3", 3, 2)
    assert model.mapseg_arch["kwargs"] == {"backbone": "resnet18", "output_stride": 16}


def test_unknown_name_lists_known_ones():
    with pytest.raises(MapSegError, match="Unknown network architecture 'segformer'") as info:
        build_network("segformer", 3, 2)
    for name in available():
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("unet", {"depth": 4}, "accepts: base_width, upsampling"),
        # Issue 11: FCN now offers light backbones (it accepted no options before).
        ("fcn", {"backbone": "resnet101"}, "backbone must be one of resnet18, resnet34, resnet50"),
        ("deeplabv3", {"output_stride": 4}, "output_stride must be one of 8, 16"),
        ("unet", {"upsampling": "nearest"}, "upsampling must be one of bilinear, transpose"),
        ("unet", {"base_width": 0}, "base_width must be an integer >= 1"),
        ("deeplabv3", {"backbone": "vgg16"}, "one of resnet18, resnet34, mobilenet_v3_large"),
        ("refinenet", {"backbone": "resnet101"}, "backbone must be one of resnet18"),
        ("refinenet", {"width": 2.5}, "width must be an integer >= 1"),
        ("unet", {"base_width": [8]}, "base_width must be an integer"),
    ],
)
def test_bad_options_raise_mapseg_error(name, kwargs, message):
    with pytest.raises(MapSegError, match=message):
        build_network(name, 3, 2, **kwargs)


@pytest.mark.parametrize(("bands", "classes"), [(0, 2), (3, 0), (True, 2), (3, 2.0), ("3", 2)])
def test_bad_counts_raise_mapseg_error(bands, classes):
    with pytest.raises(MapSegError, match="must be an integer >= 1"):
        build_network("unet", bands, classes, base_width=4)


def test_import_does_not_import_torch():
    code = (
        "import sys; import mapseg.nets as n; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(','.join(n.available()))"
    )
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deeplabv3,fcn,refinenet,sam,unet"


# -- common ---------------------------------------------------------------------------------


class ShapeRecorder(nn.Module):
    """Identity that remembers the input shapes it saw."""

    def __init__(self):
        super().__init__()
        self.seen: List[Tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x


def test_pad_crop_pads_bottom_right_with_reflection_and_crops_back():
    body = ShapeRecorder()
    wrapped = PadCrop(body, 16)
    x = torch.arange(2 * 1 * 17 * 30, dtype=torch.float32).reshape(2, 1, 17, 30)
    assert torch.equal(wrapped(x), x)  # top-left anchored: cropping returns the input itself
    assert body.seen == [(2, 1, 32, 32)]
    padded = nnf.pad(x, (0, 2, 0, 15), mode="reflect")
    assert torch.equal(padded[..., 17, :30], x[..., 15, :])  # mirrored, not zeros
    x64 = torch.randn(1, 3, 64, 48)
    assert torch.equal(wrapped(x64), x64)
    assert body.seen[-1] == (1, 3, 64, 48)  # no padding when already a multiple


def test_pad_crop_falls_back_to_replicate_for_tiny_tiles():
    body = ShapeRecorder()
    x = torch.randn(1, 2, 5, 40)  # a pad of 27 rows cannot be mirrored from 5 rows
    assert torch.equal(PadCrop(body, 32)(x), x)
    assert body.seen == [(1, 2, 32, 64)]


def test_pad_crop_returns_dict_entry():
    class DictBody(nn.Module):
        def forward(self, x):
            return {"out": x * 2, "aux": x}

    x = torch.randn(1, 1, 9, 9)
    torch.testing.assert_close(PadCrop(DictBody(), 8, out_key="out")(x), x * 2)


def test_replace_first_conv_keeps_geometry():
    model = torchvision.models.resnet18(weights=None)
    replace_first_conv(model, 7)
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels) == (7, 64)
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7), (2, 2), (3, 3))
    assert conv.bias is None
    assert model.eval()(torch.randn(1, 7, 32, 32)).shape == (1, 1000)


# -- pretrained encoders from a local file (ENCODER_WEIGHTS) ----------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "torchvision_net", "bands"),
    [
        ("deeplabv3", {}, "resnet18", 4),
        ("fcn", {"backbone": "resnet34"}, "resnet34", 1),
        ("refinenet", {}, "resnet18", 3),
        ("deeplabv3", {"backbone": "mobilenet_v3_large"}, "mobilenet_v3_large", 5),
    ],
)
def test_encoder_weights_load_from_a_torchvision_state_dict(
    tmp_path, name, kwargs, torchvision_net, bands
):
    from mapseg.nets.pretrained import load_encoder_weights

    torch.manual_seed(5)
    source = getattr(torchvision.models, torchvision_net)(weights=None)
    with torch.no_grad():  # distinctive values, so a copied tensor cannot match by chance
        for p in source.parameters():
            p.add_(torch.rand_like(p))
    state = source.state_dict()  # torchvision's exact key layout
    path = tmp_path / f"{torchvision_net}.pth"
    torch.save(state, path)
    model = build_network(name, bands, 3, **kwargs)
    message = load_encoder_weights(model, str(path))
    assert "pretrained backbone tensors" in message
    own = model.state_dict()
    first_key = next(k for k in own if own[k].dim() == 4)
    rgb = state["features.0.0.weight" if "mobilenet" in torchvision_net else "conv1.weight"]
    first = own[first_key]
    if bands == 3:
        assert torch.equal(first, rgb)
    elif bands == 1:
        torch.testing.assert_close(first, rgb.mean(dim=1, keepdim=True))
    else:  # repeated cyclically, scaled by 3/N so activations keep their scale
        torch.testing.assert_close(first[:, :3] * bands / 3, rgb)
        torch.testing.assert_close(first[:, 3:] * bands / 3, rgb[:, : bands - 3])
    # Every other backbone tensor is the file's, by torchvision key name.
    probe = "features.5.block.0.0.weight" if "mobilenet" in torchvision_net else "layer3.1.bn2.bias"
    assert any(torch.equal(v, state[probe]) for v in own.values())
    assert model.eval()(torch.randn(1, bands, 64, 64)).shape == (1, 3, 64, 64)


def test_wrong_encoder_weights_are_refused_clearly(tmp_path):
    from mapseg.nets.pretrained import load_encoder_weights

    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(MapSegError, match="does not fit the deeplabv3 backbone resnet18"):
        load_encoder_weights(build_network("deeplabv3", 3, 2), str(wrong))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(MapSegError, match="not a PyTorch state dict"):
        load_encoder_weights(build_network("fcn", 3, 2), str(junk))
    with pytest.raises(MapSegError, match="needs a network with a torchvision backbone"):
        load_encoder_weights(build_network("unet", 3, 2, base_width=4), str(wrong))
    with pytest.raises(MapSegError, match="does not exist"):
        load_encoder_weights(build_network("fcn", 3, 2), str(tmp_path / "none.pth"))

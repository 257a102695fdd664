"""feature_info: shapes, channels and reductions from a dry run, checked against real forwards;
and the dry run's promises: no buffer changed, no real memory, a fallback that says so."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from featwrap import (
    Capture,
    DryRunWarning,
    FeatureInfo,
    FeatureModel,
    FeatwrapError,
    feature_info,
)
from tests.models import Conditional, KwargsOnly, Loop, ReuseReLU
from tests.reference import reference


def real_shapes(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    with torch.no_grad():
        _, calls = reference(model, paths, x)
    return {p: tuple(calls[p][-1].shape[1:]) for p in paths}


def test_resnet_shapes_channels_reductions(resnet18) -> None:
    layers = ["relu", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    fm = FeatureModel(resnet18, layers)
    info = fm.feature_info((3, 96, 128))  # not square: both spatial dims count
    assert isinstance(info, FeatureInfo)
    assert list(info) == ["logits", *layers]
    expected = real_shapes(resnet18, layers, torch.randn(1, 3, 96, 128))
    for path in layers:
        assert info[path].shape == expected[path]
        assert info[path].path == path
        assert info[path].dtype == torch.float32
    assert info["logits"].shape == (1000,)
    assert info["logits"].channels == 1000
    assert info["logits"].reduction is None
    # channels and reductions of the layer keys only (what an FPN takes), from the real shapes
    assert info.channels() == [expected[p][0] for p in layers]
    assert info.reduction()[:5] == [96 // expected[p][1] for p in layers[:5]] == [2, 4, 8, 16, 32]
    assert info.reduction(["avgpool"]) == [96]  # pooled to one pixel: the whole input
    assert info.layer_keys() == layers
    assert not info.real_forward
    assert "layer4" in repr(info)
    assert "(512, 3, 4)" in repr(info)


def test_leaves_the_model_as_it_was() -> None:
    """Train mode: BatchNorm would update running stats and num_batches_tracked; nothing moves,
    and no hook, attribute or mode changes."""
    model = tvm.resnet18().train()
    fm = FeatureModel(model, ["layer1", "fc:input"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    hooks = {
        n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()
    }
    info = fm.feature_info(64)
    assert info["fc:input"].shape == (512,)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
        assert type(v) is torch.Tensor, k
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    assert all(m.training for m in model.modules())
    after = {
        n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()
    }
    assert after == hooks
    out = fm(torch.randn(2, 3, 64, 64))  # the FeatureModel still works, with real tensors
    assert out["layer1"].shape == (2, 64, 16, 16)
    assert int(model.bn1.num_batches_tracked) == 1  # the real forward did count


def test_no_real_memory_for_a_huge_input() -> None:
    """A 16384x16384 input: a real forward would need ~70 GB for the first feature map alone."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 8, 3, stride=4))
    info = FeatureModel(model, ["0", "2"]).feature_info((3, 16384, 16384))
    assert info["0"].shape == (64, 16384, 16384)
    assert info["2"].shape == (8, 4096, 4096)
    assert info["2"].reduction == 4
    assert not info.real_forward


class CachesOnItself(nn.Module):
    """Keeps tensors made during the forward on the module: an attribute and a dict entry."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.grid: torch.Tensor | None = None
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grid is None:
            self.grid = torch.ones(x.shape[-2:])
        key = str(x.shape[-1])
        if key not in self.cache:
            self.cache[key] = torch.full(x.shape[-2:], 2.0)
        return self.conv(x) * self.grid * self.cache[key]


def test_cached_tensors_do_not_leak_out_of_the_dry_run() -> None:
    model = CachesOnItself()
    info = feature_info(model, (3, 8, 8), layers=["conv"])
    assert info["conv"].shape == (4, 8, 8)
    assert model.grid is None
    assert model.cache == {}
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(model(x), model.conv(x) * 2)  # a real forward works afterwards


@pytest.mark.parametrize("factory", [Conditional, Loop])
def test_falls_back_to_a_real_forward_and_says_so(factory: type[nn.Module]) -> None:
    """Data-dependent control flow cannot run on fake tensors."""
    model = factory()
    fm = FeatureModel(model, ["stem" if factory is Conditional else "block"])
    rng = torch.get_rng_state()
    with pytest.warns(DryRunWarning, match="could not run on fake tensors.*real forward"):
        info = fm.feature_info((4,))
    assert info.real_forward
    key = next(iter(fm.layers))
    assert info[key].shape == (4,)
    assert info[key].channels == 4
    assert info["logits"].shape in {(2,), (3,)}
    assert torch.equal(torch.get_rng_state(), rng)


class BranchyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        return y if y.sum() > 0 else -y


def test_fallback_restores_buffers() -> None:
    model = BranchyBN().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(DryRunWarning):
        info = feature_info(model, (3, 5, 5), layers=["bn"])
    assert info["bn"].shape == (3, 5, 5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_real_error_is_raised_not_hidden() -> None:
    model = tvm.resnet18()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no misleading fallback warning
        with pytest.raises(RuntimeError, match="channels"):
            FeatureModel(model, ["layer1"]).feature_info((4, 32, 32))


def test_channels_last_and_tokens() -> None:
    """torchvision's Swin returns NHWC maps; a ViT returns tokens with a class token."""
    swin = tvm.swin_t()
    info = FeatureModel(swin, ["features.1", "features.7", "norm"]).feature_info(64)
    real = real_shapes(swin, ["features.1", "features.7"], torch.randn(1, 3, 64, 64))
    assert info["features.1"].shape == real["features.1"] == (16, 16, 96)
    assert info["features.1"].layout == "NHWC"
    assert info.channels(["features.1", "features.7"]) == [96, 768]
    assert info.reduction(["features.1", "features.7"]) == [4, 32]
    vit = tvm.vit_b_32(image_size=64)
    info = FeatureModel(vit, ["encoder.layers.encoder_layer_0", "conv_proj"]).feature_info()
    assert info.input_size == (3, 64, 64)  # the model's own size
    tokens = info["encoder.layers.encoder_layer_0"]
    assert tokens.shape == (1 + (64 // 32) ** 2, 768)
    assert (tokens.layout, tokens.channels, tokens.reduction) == ("NLC", 768, 32)
    assert info["conv_proj"].layout == "NCHW"


def test_timm_default_input_size() -> None:
    model = timm.create_model("convnext_atto", pretrained=False)
    info = FeatureModel(model, ["stages.3"]).feature_info()
    assert info.input_size == tuple(model.pretrained_cfg["input_size"])
    assert info["stages.3"].shape == (320, 7, 7)


def test_structures_repeats_and_inputs_given() -> None:
    attn = nn.MultiheadAttention(8, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x)[0]

    fm = FeatureModel(Net(), ["attn", Capture("attn", key="w", select=1)])
    info = fm.feature_info(inputs=torch.randn(1, 5, 8))
    assert info["attn"].shape is None
    assert info["attn"].shapes == ((5, 8), (5, 5))
    assert info["w"].shape == (5, 5)
    assert info.input_size is None
    reuse = FeatureModel(ReuseReLU(), ["relu"], repeats="all").feature_info((4,))
    assert reuse["relu"].shapes == [(8,), (8,), (8,)]
    kw = FeatureModel(KwargsOnly(), ["img", "txt"], output_key="out")
    info = kw.feature_info(inputs={"image": torch.randn(2, 4), "text": torch.randn(2, 3)})
    assert info["txt"].shape == (4,)
    assert info["out"].shapes == {"score": (2,), "image_embedding": (4,)}


def test_argument_errors(resnet18) -> None:
    fm = FeatureModel(resnet18, ["layer1"])
    with pytest.raises(ValueError, match=r"input_size=\(224, 224, 3, 0\) is not a size"):
        fm.feature_info((224, 224, 3, 0))
    with pytest.raises(ValueError, match="input_size='big'"):
        fm.feature_info("big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        fm.feature_info((3, 32, 32), inputs=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="needs layers="):
        feature_info(resnet18, 32)
    with pytest.raises(ValueError, match="has its layers already"):
        feature_info(fm, 32, layers=["layer2"])
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        fm.feature_info(inputs=[torch.randn(1, 3, 8, 8)])
    with pytest.raises(FeatwrapError, match="lazy module"):
        feature_info(nn.Sequential(nn.LazyLinear(3)), (4,), layers=["0"])

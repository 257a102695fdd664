"""output_fmt: tokens, channels-last and channels-first maps, against timm's forward_intermediates
(the same model object, so the same weights) and hand-computed layouts."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from featwrap import Capture, FeatureModel, FeatwrapError, Tokens
from tests.reference import reference


def vit(**kwargs: object) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4, **kwargs
    ).eval()


@pytest.mark.parametrize(
    ("kwargs", "prefix"),
    [({}, 1), ({"reg_tokens": 4}, 5), ({"class_token": False, "global_pool": "avg"}, 0)],
)
def test_vit_tokens_as_maps_equal_timm(kwargs: dict[str, object], prefix: int) -> None:
    model = vit(**kwargs)
    x = torch.randn(2, 3, 64, 64)
    layers = [f"blocks.{i}" for i in range(4)]
    fm = FeatureModel(model, layers, output_key=None, output_fmt="NCHW", prefix_tokens=True)
    with torch.no_grad():
        out = fm(x)
        pairs = model.forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
    assert len(pairs) == 4
    for i, path in enumerate(layers):
        want = pairs[i][0] if prefix else pairs[i]
        assert out[path].shape == (2, 192, 4, 4)
        assert torch.equal(out[path], want), path
        if prefix:
            assert torch.equal(out[path + ":prefix"], pairs[i][1]), path
            assert out[path + ":prefix"].shape == (2, prefix, 192)
        else:
            assert path + ":prefix" not in out


def test_deit_distilled_prefix_and_nlc() -> None:
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=2
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    fm = FeatureModel(model, ["blocks.1"], output_key=None, output_fmt="NLC")
    with torch.no_grad():
        out = fm(x)["blocks.1"]
        want = model.forward_intermediates(
            x, indices=[1], output_fmt="NLC", intermediates_only=True
        )
    assert out.shape == (1, 16, 192)  # 2 prefix tokens (class, distillation) left out
    assert torch.equal(out, want[0])


def test_swin_channels_last_to_nchw_and_back() -> None:
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    layers = [f"layers.{i}" for i in range(4)]
    nchw = FeatureModel(model, layers, output_key=None, output_fmt="NCHW")
    nhwc = FeatureModel(model, layers, output_key=None, output_fmt="NHWC")
    with torch.no_grad():
        got = nchw(x)
        raw = reference(model, layers, x)[1]
        back = nhwc(x)
        want = model.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
    for path, theirs in zip(layers, want, strict=True):
        assert torch.equal(got[path], theirs), path
        assert torch.equal(back[path], raw[path][-1]), path  # NHWC already: returned as is


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x)).flatten(1)


def test_nchw_map_to_every_format_and_per_layer_override() -> None:
    model = Conv().eval()
    x = torch.randn(2, 3, 16, 12)
    with torch.no_grad():
        conv = model.conv(x)
        fm = FeatureModel(model, ["conv", Capture("conv", key="tokens", output_fmt="NLC")])
        out = fm(x)
        nhwc = FeatureModel(model, ["conv"], output_fmt="NHWC")(x)["conv"]
    assert torch.equal(out["conv"], conv)  # no format: as returned
    assert torch.equal(out["tokens"], conv.flatten(2).transpose(1, 2))
    assert torch.equal(nhwc, conv.permute(0, 2, 3, 1))
    assert torch.equal(out["logits"], model(x))


class Unrolled(nn.Module):
    """Tokens kept column by column, with one prefix token: to_grid puts them back."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 2, stride=2)
        self.block = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.embed(x)  # (B, C, H, W)
        cols = m.permute(0, 3, 2, 1).flatten(1, 2)  # (B, W*H, C), column-major
        return self.block(torch.cat([cols[:, :1] * 0, cols], 1))


def test_tokens_to_grid_and_fixed_grid() -> None:
    model = Unrolled()
    x = torch.randn(1, 3, 8, 12)
    grid = model.embed(x)

    def to_grid(t: torch.Tensor) -> torch.Tensor:  # (B, W*H, C) column-major -> (B, H, W, C)
        return t.reshape(t.shape[0], 6, 4, t.shape[2]).transpose(1, 2)

    layout = Tokens(prefix=1, to_grid=to_grid)
    fm = FeatureModel(model, [Capture("block", layout=layout)], output_key=None, output_fmt="NCHW")
    assert torch.equal(fm(x)["block"], grid)
    # a fixed grid, whatever the input (here raster order of the transposed map)
    fixed = Capture("block", layout=Tokens(prefix=1, grid=(6, 4)), output_fmt="NCHW")
    assert torch.equal(FeatureModel(model, [fixed])(x)["block"], grid.transpose(2, 3))


def test_inferred_prefix_and_patch() -> None:
    model = vit(reg_tokens=3)
    x = torch.randn(1, 3, 64, 64)
    inferred = FeatureModel(model, ["blocks.0"], output_fmt="NCHW", prefix_tokens=True)
    with torch.no_grad():
        out = inferred(x)
        want = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    assert torch.equal(out["blocks.0"], want)
    assert out["blocks.0:prefix"].shape == (1, 4, 192)


def test_feature_info_reports_converted_shapes() -> None:
    model = vit()
    fm = FeatureModel(model, ["blocks.1", "blocks.3"], output_key=None, output_fmt="NCHW")
    info = fm.feature_info((3, 64, 64))
    assert info["blocks.1"].shape == (192, 4, 4)
    assert info.channels() == [192, 192]
    assert info.reduction() == [16, 16]
    with_prefix = FeatureModel(model, ["blocks.1"], output_fmt="NHWC", prefix_tokens=True)
    assert with_prefix.feature_info((3, 64, 64)).shapes() == {
        "logits": (1000,),
        "blocks.1": (4, 4, 192),
        "blocks.1:prefix": (1, 192),
    }


def test_repeats_all_and_missing() -> None:
    block = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(block, block)  # one module called twice
    x = torch.randn(1, 3, 4, 4)
    fm = FeatureModel(model, ["0"], repeats="all", output_fmt="NHWC")
    out = fm(x)["0"]
    with torch.no_grad():
        first = block(x)
        second = block(first)
    assert torch.equal(out[0], first.permute(0, 2, 3, 1))
    assert torch.equal(out[1], second.permute(0, 2, 3, 1))


def test_errors_name_the_value_and_the_way_out() -> None:
    model = vit()
    with pytest.raises(ValueError, match=r"output_fmt='NWHC' is not a layout.*'NCHW'"):
        FeatureModel(model, ["blocks.0"], output_fmt="NWHC")
    with pytest.raises(ValueError, match=r"Capture layout='tokens' is not a layout.*Tokens"):
        Capture("blocks.0", layout="tokens")
    with pytest.raises(ValueError, match=r"Tokens\(prefix=-1\)"):
        Tokens(prefix=-1)
    with pytest.raises(ValueError, match=r"Tokens\(grid=\(4,\)\) must be a pair"):
        Tokens(grid=(4,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefix_tokens must be True or False"):
        FeatureModel(model, ["blocks.0"], output_fmt="NCHW", prefix_tokens="yes")  # type: ignore[arg-type]
    x = torch.randn(1, 3, 64, 64)
    bad = Capture("blocks.0", layout=Tokens(prefix=1, patch_size=8), output_fmt="NCHW")
    with pytest.raises(FeatwrapError, match=r"'blocks.0' returned 17 tokens.*Tokens\(prefix="):
        FeatureModel(model, [bad])(x)
    with pytest.raises(
        ValueError, match=r"'head' returned a tensor of shape \(1, 1000\).*per layer"
    ):
        FeatureModel(model, ["blocks.0", "head"], output_fmt="NCHW")(x)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    seq = torch.randn(1, 4, 8)
    fm = FeatureModel(_SelfAttn(attn), ["attn"], output_fmt="NLC")
    with pytest.raises(TypeError, match=r"returned a tuple of length 2.*select=0"):
        fm(seq)


class _SelfAttn(nn.Module):
    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class Embedder(nn.Module):
    """Token ids in, tokens out: no image size, so the grid must be declared."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids))


def test_token_ids_need_a_declared_grid() -> None:
    model = Embedder()
    ids = torch.randint(0, 32, (2, 7))
    with pytest.raises(ValueError, match=r"7 tokens, but the input has no image size.*grid="):
        FeatureModel(model, ["proj"], output_fmt="NCHW")(ids)
    layer = Capture("proj", layout=Tokens(prefix=1, grid=(2, 3)), output_fmt="NCHW")
    out = FeatureModel(model, [layer], output_key=None)(ids)["proj"]
    with torch.no_grad():
        tokens = model(ids)
    assert torch.equal(out, tokens[:, 1:].reshape(2, 2, 3, 8).permute(0, 3, 1, 2))


def test_export() -> None:
    model = vit()
    fm = FeatureModel(model, ["blocks.1"], output_key=None, output_fmt="NCHW")
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(fm, (x,))
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    assert torch.equal(exported.module()(x)["blocks.1"], want)


@pytest.mark.slow
def test_compile_fullgraph() -> None:
    model = vit()
    fm = FeatureModel(model, ["blocks.1", "blocks.3"], output_fmt="NCHW", prefix_tokens=True)
    compiled = torch.compile(fm, fullgraph=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = compiled(x)
        want = fm(x)
    assert list(got) == list(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key])

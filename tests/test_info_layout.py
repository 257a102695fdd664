"""feature_info on tokens and the nominal stride: channels are the hidden size of ``(B, L, D)``
outputs whatever the input; reduction() is the stride timm's ``feature_info`` states (timm's own
table for timm models; otherwise what the measured sizes round to), the measured ratio kept in
``measured_reduction``. Checked against real forwards and against timm's ``feature_info``."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from featwrap import Capture, FeatureModel, feature_info, stages
from tests.reference import reference


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.fc = nn.Linear(32, 48)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids))


class TextEncoder(nn.Module):
    """Token ids -> a small nn.TransformerEncoder -> per-token logits."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(ids)))


def real_last_dims(model: nn.Module, paths: list[str], *args: torch.Tensor) -> list[int]:
    with torch.no_grad():
        _, calls = reference(model, paths, *args)
    return [calls[p][-1].shape[-1] for p in paths]


def test_token_ids_give_the_hidden_size_as_channels() -> None:
    """The issue's case: (2, 7) token ids used to report channels [7]."""
    model = TokenModel()
    ids = torch.randint(100, (2, 7))
    info = feature_info(model, inputs=ids, layers=["emb", "fc"])
    assert info.channels() == real_last_dims(model, ["emb", "fc"], ids) == [32, 48]
    assert [info[k].layout for k in ("emb", "fc")] == ["NLC", "NLC"]
    assert info.reduction() == [None, None]
    assert info["fc"].shape == (7, 48)


def test_a_transformer_encoder_on_token_ids() -> None:
    model = TextEncoder().eval()
    ids = torch.randint(50, (3, 11))
    paths = ["emb", "encoder.layers.0", "encoder.layers.1", "head"]
    info = FeatureModel(model, paths).feature_info(inputs=ids)
    assert info.channels() == real_last_dims(model, paths, ids) == [24, 24, 24, 5]
    assert info["logits"].channels == 5
    # the same model on embeddings (a float (N, L, D) input): the same channels
    info = feature_info(model.encoder, inputs=torch.randn(3, 11, 24), layers=["layers.1"])
    assert info.channels() == [24]


@pytest.mark.parametrize(
    ("name", "prefix"), [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)]
)
def test_timm_vit_blocks_channels_grid_and_prefix(name: str, prefix: int) -> None:
    model = timm.create_model(name, pretrained=False, img_size=64)
    paths = ["blocks.0", "blocks.11"]
    info = FeatureModel(model, paths, output_key=None).feature_info((3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    assert info.channels() == real_last_dims(model, paths, x) == [192, 192]
    assert info.reduction() == [16, 16]
    meta = info["blocks.11"]
    assert (meta.layout, meta.grid, meta.prefix_tokens) == ("NLC", (4, 4), prefix)
    assert meta.prefix_tokens == model.num_prefix_tokens
    timm_info = {d["module"]: d for d in model.feature_info}
    assert [timm_info[p]["num_chs"] for p in paths] == info.channels()
    assert [timm_info[p]["reduction"] for p in paths] == info.reduction()


def test_inception_v3_stages_give_the_nominal_stride() -> None:
    """torchvision's inception_v3 (no timm table): convolutions without padding make the measured
    ratios 2.03 ... 37.38 at 299 px; the strides are 2 ... 32, as timm's inception_v3 states."""
    model = tvm.inception_v3(weights=None, init_weights=False, aux_logits=False).eval()
    paths = stages(model)
    info = FeatureModel(model, paths, output_key=None).feature_info((3, 299, 299))
    assert info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        _, calls = reference(model, paths, torch.randn(1, 3, 299, 299))
    sizes = [calls[p][0].shape[-1] for p in paths]
    assert sizes == [147, 71, 35, 17, 8]
    measured = [info[p].measured_reduction for p in paths]
    assert measured == [round(299 / s, 2) for s in sizes] == [2.03, 4.21, 8.54, 17.59, 37.38]
    timm_model = timm.create_model("inception_v3", pretrained=False)
    assert info.reduction() == [d["reduction"] for d in timm_model.feature_info]


#: a sample of timm families: channels first and last, tokens, odd input sizes
TIMM_SAMPLE = [
    ("resnet18", None),
    ("resnet18", 97),
    ("convnext_atto", None),
    ("efficientnet_b0", 300),
    ("mobilenetv3_small_050", None),
    ("regnetx_002", 200),
    ("inception_v3", None),
    ("swin_tiny_patch4_window7_224", None),
    ("vit_tiny_patch16_224", None),
    ("dla34", None),
]


@pytest.mark.parametrize(("name", "size"), TIMM_SAMPLE, ids=lambda v: str(v))
def test_agrees_with_timm_feature_info(name: str, size: int | None) -> None:
    """channels() and reduction() equal timm's; and the rounding rule alone (the model wrapped in
    an nn.Sequential, so timm's table is not read) gives timm's strides from the measured sizes."""
    kwargs = {"img_size": size} if size and name.startswith(("swin", "vit")) else {}
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    input_size = None if size is None else (3, size, size)
    want_channels = [d["num_chs"] for d in model.feature_info]
    want_reduction = [d["reduction"] for d in model.feature_info]
    info = FeatureModel(model, stages(model), output_key=None).feature_info(input_size)
    assert info.channels() == want_channels
    assert info.reduction() == want_reduction
    wrapped = nn.Sequential(model)
    paths = [  # stages may be Captures (tokens laid out as maps): the same, one level down
        dataclasses.replace(p, path=f"0.{p.path}") if isinstance(p, Capture) else f"0.{p}"
        for p in stages(model)
    ]
    size_ = input_size or tuple(model.pretrained_cfg["input_size"])
    by_rule = feature_info(wrapped, size_, layers=paths)
    assert by_rule.reduction() == want_reduction
    assert by_rule.channels() == want_channels

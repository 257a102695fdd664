"""featwrap against the independent reference on torchvision and timm models.

A few models always run; the whole registries run with ``-m zoo``."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision.models as tvm
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from featwrap import FeatureModel
from tests.reference import reference
from tests.zoo import TV_KWARGS, TV_SIZE, check_against_reference, sample_layers

TV_QUICK = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "vit_b_16"]
TV_ALL = sorted(tvm.list_models(module=tvm))
TIMM_QUICK = ["resnet18", "convnext_atto", "vit_tiny_patch16_224"]
TIMM_ALL = [
    "resnet18",
    "resnet50d",
    "resnext26ts",
    "convnext_atto",
    "convnextv2_atto",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "mobilenetv4_conv_small",
    "regnetx_002",
    "regnety_002",
    "densenet121",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "levit_128s",
    "mixer_s32_224",
    "efficientformer_l1",
    "fastvit_t8",
    "ghostnet_100",
    "hrnet_w18_small",
]


# convolutional timm models that run on a small input; the others need their configured size
TIMM_SMALL_INPUT = {
    "resnet18",
    "resnet50d",
    "resnext26ts",
    "convnext_atto",
    "convnextv2_atto",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "mobilenetv4_conv_small",
    "regnetx_002",
    "regnety_002",
    "densenet121",
    "ghostnet_100",
    "hrnet_w18_small",
    "fastvit_t8",
}


def build_tv(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    model = tvm.get_model(name, weights=None, **TV_KWARGS.get(name, {}))
    size = TV_SIZE.get(name, 64)
    return model.eval(), torch.randn(1, 3, size, size)


def build_timm(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    model = timm.create_model(name, pretrained=False)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    if name in TIMM_SMALL_INPUT:
        size = 64
    return model.eval(), torch.randn(1, 3, size, size)


@pytest.mark.parametrize("name", TV_QUICK)
def test_torchvision_quick(name: str) -> None:
    model, x = build_tv(name)
    check_against_reference(model, x, sample_layers(model))


@pytest.mark.parametrize("name", TIMM_QUICK)
def test_timm_quick(name: str) -> None:
    model, x = build_timm(name)
    check_against_reference(model, x, sample_layers(model))


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in TV_ALL if n not in TV_QUICK])
def test_torchvision_zoo(name: str) -> None:
    model, x = build_tv(name)
    check_against_reference(model, x, sample_layers(model))


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in TIMM_ALL if n not in TIMM_QUICK])
def test_timm_zoo(name: str) -> None:
    model, x = build_timm(name)
    check_against_reference(model, x, sample_layers(model))


def after_forward(
    model: torch.nn.Module, paths: list[str], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The first output tensor of each module itself (not a copy), as it is after the forward."""
    raw: dict[str, torch.Tensor] = {}

    def keep(path: str, output: torch.Tensor) -> None:
        raw.setdefault(path, output)

    handles = [
        model.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: keep(p, o)) for p in paths
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return raw


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf"]
)
def test_create_feature_extractor_agrees_where_it_is_right(name: str) -> None:
    """On every module FX can return, featwrap equals the reference. FX equals both except on
    outputs modified in place later in the forward: there FX returns the modified value."""
    model, x = build_tv(name)
    _, eval_nodes = get_graph_node_names(model)
    nodes = [p for p, _ in model.named_modules() if p and p in set(eval_nodes)]
    assert len(nodes) > 10
    fx = create_feature_extractor(model, {p: p for p in nodes})
    with torch.no_grad():
        fx_out = fx(x)
        fm_out = FeatureModel(model, nodes, repeats="first")(x)
        _, calls = reference(model, nodes, x)
        raw = after_forward(model, nodes, x)
    fx_wrong = []
    for p in nodes:
        assert torch.equal(fm_out[p], calls[p][0]), p
        if not torch.equal(fx_out[p], calls[p][0]):
            fx_wrong.append(p)
            assert torch.equal(fx_out[p], raw[p]), p  # FX: the value after in-place changes
    if name in ("resnet18", "mobilenet_v3_small"):
        assert fx_wrong  # these have in-place activations after a requested layer

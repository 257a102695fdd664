"""featwrap.stages: timm's own feature_info modules, torchvision families, out_indices, errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision.models as tvm

from featwrap import Capture, FeatureModel, FeatwrapError, Tokens, stages
from tests.models import InplaceChain, KwargsOnly


def test_torchvision_resnet(resnet18) -> None:
    assert stages(resnet18) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert stages(FeatureModel(resnet18, "fc")) == stages(resnet18)


def test_out_indices(resnet18) -> None:
    assert stages(resnet18, out_indices=(1, 2, 3, 4)) == ["layer1", "layer2", "layer3", "layer4"]
    assert stages(resnet18, out_indices=[-1, 0]) == ["layer4", "relu"]
    assert stages(resnet18, out_indices=2) == ["layer3", "layer4"]  # the last two
    with pytest.raises(ValueError, match=r"out_indices \[5\] out of range: ResNet has 5 stages"):
        stages(resnet18, out_indices=(1, 5))
    with pytest.raises(ValueError, match="the last 6"):
        stages(resnet18, out_indices=6)
    with pytest.raises(TypeError, match="out_indices must be"):
        stages(resnet18, out_indices="layer1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["resnet18", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224"]
)
def test_timm_uses_its_own_feature_info(name: str) -> None:
    model = timm.create_model(name, pretrained=False)
    assert paths(stages(model)) == [d["module"] for d in model.feature_info]
    assert paths(stages(model, out_indices=(0, -1))) == [
        model.feature_info[0]["module"],
        model.feature_info[-1]["module"],
    ]


def paths(specs: list[str | Capture]) -> list[str]:
    return [s.path if isinstance(s, Capture) else s for s in specs]


def test_timm_maps_are_plain_paths_and_tokens_captures() -> None:
    """NCHW stages stay plain paths; ViT blocks become Captures that lay tokens out as maps."""
    assert all(isinstance(s, str) for s in stages(timm.create_model("resnet18")))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, reg_tokens=2, depth=2)
    assert stages(vit) == [
        Capture(f"blocks.{i}", layout=Tokens(prefix=3, patch_size=16), output_fmt="NCHW")
        for i in range(2)
    ]


def test_timm_features_only_wrapper() -> None:
    """A features_only model keeps timm's names; FeatureModel over it equals its own output."""
    net = timm.create_model("resnet18", pretrained=False, features_only=True).eval()
    paths = stages(net)
    assert paths == ["act1", "layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = FeatureModel(net, paths, output_key=None)(x)
        theirs = net(x)
    assert len(theirs) == len(ours)
    for got, want in zip(ours.values(), theirs, strict=True):
        assert torch.equal(got, want)


def test_timm_model_whose_features_live_elsewhere() -> None:
    """HRNet's feature_info names modules of timm's features wrapper; the model's own are found."""
    model = timm.create_model("hrnet_w18_small", pretrained=False)
    assert stages(model) == ["act1", *(f"incre_modules.{i}" for i in range(4))]


def test_torchvision_channels_last_and_vit() -> None:
    assert stages(tvm.swin_t()) == ["features.1", "features.3", "features.5", "features.7"]
    vit = tvm.vit_b_32(image_size=32)
    assert stages(vit) == [f"encoder.layers.encoder_layer_{i}" for i in range(12)]


def test_unknown_model_error_lists_what_to_pass() -> None:
    with pytest.raises(FeatwrapError, match="no preset for InplaceChain") as info:
        stages(InplaceChain())
    message = str(info.value)
    assert "ResNet" in message
    assert "featwrap.summary(model)" in message
    # the last module at each stride of this very model, as a starting point
    assert "The last module at each stride" in message
    assert "'pool'" not in message  # pooled to one pixel: not a stage
    with pytest.raises(ValueError, match="no preset for KwargsOnly") as info:
        stages(KwargsOnly())  # cannot even run on an image: the plain message
    assert "stride" not in str(info.value).split("summary")[-1]
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module"):
        stages("resnet18")  # type: ignore[arg-type]

"""examples/multiscale_fpn.py: FeatureModel(backbone, stages(backbone)) -> FPN trains end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

EXAMPLE = Path(__file__).parents[1] / "examples" / "multiscale_fpn.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("multiscale_fpn", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "build",
    [
        lambda: tvm.resnet18(weights=None),
        lambda: timm.create_model("convnext_atto", pretrained=False),
    ],
    ids=["torchvision-resnet18", "timm-convnext_atto"],
)
def test_fpn_trains_and_the_loss_decreases(build) -> None:  # type: ignore[no-untyped-def]
    example = load_example()
    backbone: nn.Module = build()
    before = [p.detach().clone() for p in backbone.parameters()]
    losses = example.train(backbone, steps=6, image_size=32, batch=2)
    assert len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    # the gradients reached the backbone through the captured stages
    changed = [not torch.equal(a, b) for a, b in zip(before, backbone.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2


def test_fpn_channels_come_from_feature_info() -> None:
    example = load_example()
    model = example.SegmentationFPN(tvm.resnet18(weights=None), num_classes=3, image_size=32)
    assert list(model.body.layers) == ["layer1", "layer2", "layer3", "layer4"]
    in_channels = [block.in_channels for block in model.fpn.inner_blocks.modules()
                   if isinstance(block, nn.Conv2d)]  # fmt: skip
    assert in_channels == [64, 128, 256, 512]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)

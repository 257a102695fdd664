"""Recipe: FeatureModel(backbone, stages(backbone)) -> FPN -> segmentation head (examples/multi_scale.py)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from tests.examples import load_example
from tests.reference import reference

recipe = load_example("multi_scale")

# name: the model and its classifier head, which the early-stopping forward never runs
BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "torchvision-resnet18": lambda: tvm.resnet18(weights=None),
    "torchvision-mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(weights=None),
    "timm-convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False),
}
HEADS = {
    "torchvision-resnet18": "fc",
    "torchvision-mobilenet_v3_small": "classifier",
    "timm-convnext_atto": "head",
}


@pytest.mark.parametrize("name", ["torchvision-resnet18", "timm-convnext_atto"])
def test_trains_and_the_loss_decreases(name: str) -> None:
    backbone = BACKBONES[name]()
    before = [p.detach().clone() for p in backbone.parameters()]
    losses = recipe.train(backbone, steps=6, image_size=32, batch=2)
    assert len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    # the gradients reached the backbone through the captured stages
    changed = [not torch.equal(a, b) for a, b in zip(before, backbone.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_fpn_gets_the_stages_that_reference_hooks_see(name: str) -> None:
    """The FPN's inputs: the outputs of the backbone's last four stride stages, recorded by
    independent cloning hooks, with the channels the FPN was built for; the forward stops there."""
    torch.manual_seed(0)
    model = recipe.SegmentationFPN(BACKBONES[name]().eval(), num_classes=3, image_size=64)
    model.eval()
    backbone, paths = model.body.backbone, list(model.body.layers.values())
    x = torch.randn(2, 3, 64, 64)
    seen: list[OrderedDict[str, torch.Tensor]] = []
    handle = model.fpn.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    head = backbone.get_submodule(HEADS[name])
    head_calls: list[int] = []
    head_handle = head.register_forward_pre_hook(lambda *_: head_calls.append(1))
    with torch.no_grad():
        out = model(x)
        assert head_calls == []  # output_key=None: the backbone stopped after the last stage
        _, wanted = reference(backbone, paths, x)
    handle.remove()
    head_handle.remove()
    assert out.shape == (2, 3, 64, 64)
    fed = list(seen[0].values())
    assert len(fed) == 4
    strides = []
    for value, path in zip(fed, paths, strict=True):
        torch.testing.assert_close(value, wanted[path][-1])
        strides.append(64 // value.shape[-1])
    assert strides == [4, 8, 16, 32]
    channels = [m.in_channels for m in model.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)]
    assert channels == [value.shape[1] for value in fed]

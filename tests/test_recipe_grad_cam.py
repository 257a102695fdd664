"""Recipe: Grad-CAM (examples/grad_cam.py), against the grad-cam package (pytorch-grad-cam)."""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision.models import resnet18

from featwrap import FeatureModel
from tests.examples import load_example

recipe = load_example("grad_cam")


@pytest.mark.parametrize("layer", ["layer4", "layer3.1", "layer2.0.bn2"])
def test_heat_map_equals_the_grad_cam_package(layer: str) -> None:
    """Same model, layer and targets; layer2.0.bn2 is modified later by `+=` and an in-place
    ReLU (the package's own hooks keep a detached alias there, so it is compared on an in-place
    free copy of that block)."""
    model = resnet18().eval()
    images = torch.rand(2, 3, 64, 64)
    classes = torch.tensor([3, 817])
    theirs_model = copy.deepcopy(model)
    if layer == "layer2.0.bn2":  # the package's activation must not see the later writes
        block = theirs_model.layer2[0]
        block.relu.inplace = False
        block.forward = lambda x: _out_of_place_block(block, x)
    with GradCAM(theirs_model, [theirs_model.get_submodule(layer)]) as cam:
        expected = cam(images, [ClassifierOutputTarget(int(c)) for c in classes])
    fm = FeatureModel(model, [layer])
    got = recipe.grad_cam(fm, images, classes, layer)
    assert got.shape == (2, 64, 64)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=0, atol=2e-5)


def _out_of_place_block(block, x):  # type: ignore[no-untyped-def]
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    return block.relu(out + identity)


def test_main_runs() -> None:
    cam = recipe.main()
    assert cam.shape == (2, 224, 224)
    assert cam.min() >= 0
    assert cam.max() <= 1

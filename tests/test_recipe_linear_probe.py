"""Recipe: dataset features and a linear probe (examples/linear_probe.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.nn import functional as F
from torchvision.models import resnet18

from featwrap import load_features
from tests.examples import load_example
from tests.reference import reference

recipe = load_example("linear_probe")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRANSFORM = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recipe.make_images(tmp_path_factory.mktemp("probe") / "images", per_class=6, size=32)


def test_the_probed_features_are_the_backbone_activations(images: Path, tmp_path: Path) -> None:
    """Rows of the extraction = avg-pooled activations seen by cloning hooks, image by image."""
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    layers = ("layer1", "layer3", "avgpool")
    recipe.main(str(images), str(tmp_path / "f"), model, layers=layers, transform=TRANSFORM)
    features = load_features(tmp_path / "f")
    assert list(features) == list(layers)
    classes = sorted(os.listdir(images))  # ImageFolder's rule, computed here
    assert features.classes == classes
    assert len(features.ids) == 3 * 6
    for row, (name, target) in enumerate(zip(features.ids, features.targets, strict=True)):
        assert classes[target] == name.split("/")[0]
        x = TRANSFORM(Image.open(images / name).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            _, seen = reference(model, list(layers), x)
        for layer in layers:
            wanted = seen[layer][0].mean(dim=(2, 3)).flatten()
            torch.testing.assert_close(features[layer][row], wanted, rtol=1e-4, atol=1e-5)


def test_the_probe_reaches_the_optimum_of_its_convex_objective() -> None:
    """L-BFGS's probe: zero gradient, and no higher objective than a long Adam run from zero."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 10, generator=g) + 1.5 * F.one_hot(y, 10).float()
    x = 3.0 * x + 5.0  # unstandardized: the probe standardizes itself
    probe = recipe.fit_probe(x, y, num_classes=3, weight_decay=1e-2)
    linear = probe[-1]
    z = (x - x.mean(0)) / x.std(0)
    torch.testing.assert_close(probe(x), linear(z))
    loss = recipe.probe_loss(linear, z, y, 1e-2)
    grads = torch.autograd.grad(loss, list(linear.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-4

    other = torch.nn.Linear(10, 3)
    adam = torch.optim.Adam(other.parameters(), lr=0.05)
    for _ in range(3000):
        adam.zero_grad()
        ref = recipe.probe_loss(other, z, y, 1e-2)
        ref.backward()
        adam.step()
    assert loss.item() <= ref.item() + 1e-5
    assert loss.item() == pytest.approx(ref.item(), abs=1e-3)


def test_the_probe_beats_chance_and_a_second_run_reuses_the_extraction(tmp_path: Path) -> None:
    images = recipe.make_images(tmp_path / "images", per_class=40, size=48)
    torch.manual_seed(0)
    model = resnet18(weights=None)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    first = recipe.main(str(images), str(tmp_path / "f"), model, image_size=48)
    assert calls  # the extraction ran
    assert [r.layer for r in first] == list(recipe.LAYERS)
    by_layer = {r.layer: r for r in first}
    # texture classes and random weights: the early layers hold the answer (chance: 1/3;
    # 0.83 to 0.93 over three seeds of images and weights)
    assert by_layer["layer1"].val_accuracy >= 0.7
    assert all(r.train_accuracy >= r.val_accuracy for r in first)
    calls.clear()
    again = recipe.main(str(images), str(tmp_path / "f"), model, image_size=48)
    assert calls == []  # nothing extracted twice
    assert again == first


def test_features_without_classes_are_refused(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(4):
        Image.new("RGB", (16, 16), (k * 60, 0, 0)).save(flat / f"{k}.png")
    features = recipe.extract(
        torch.nn.Conv2d(3, 2, 3), str(flat), ["logits"], pool="avg", transform=T.ToTensor()
    )
    assert features.targets is None
    with pytest.raises(ValueError, match="one subfolder per class"):
        recipe.probe_layers(features)

"""output_key=None: the forward stops once every requested layer has its value."""

from __future__ import annotations

import torch
from torch import nn

from featwrap import FeatureModel
from tests.reference import assert_same, reference


def count_calls(model: nn.Module, paths: list[str]) -> tuple[dict[str, int], list]:  # type: ignore[type-arg]
    counts = dict.fromkeys(paths, 0)
    handles = [
        model.get_submodule(p).register_forward_pre_hook(
            lambda m, a, p=p: counts.__setitem__(p, counts[p] + 1)
        )
        for p in paths
    ]
    return counts, handles


def test_later_modules_do_not_run(resnet18) -> None:
    x = torch.randn(1, 3, 32, 32)
    _, calls = reference(resnet18, ["layer2", "bn1"], x)
    fm = FeatureModel(resnet18, ["layer2", "bn1"], output_key=None)
    counts, handles = count_calls(resnet18, ["layer1", "layer2", "layer3", "layer4", "fc"])
    try:
        for _ in range(2):
            out = fm(x)
    finally:
        for h in handles:
            h.remove()
    assert list(out) == ["layer2", "bn1"]
    assert_same(out["layer2"], calls["layer2"][0])
    assert_same(out["bn1"], calls["bn1"][0])
    assert counts == {"layer1": 2, "layer2": 2, "layer3": 0, "layer4": 0, "fc": 0}


def test_repeated_layer_waits_for_its_parent(resnet18) -> None:
    """BasicBlock calls its relu twice: with repeats='last' or 'all' the stop waits for the
    block to return, so the value is the last call's; then the next block does not run."""
    x = torch.randn(1, 3, 32, 32)
    path = "layer1.0.relu"
    _, calls = reference(resnet18, [path], x)
    counts, handles = count_calls(resnet18, ["layer1.1", "layer2"])
    try:
        last = FeatureModel(resnet18, path, output_key=None)(x)[path]
        every = FeatureModel(resnet18, path, output_key=None, repeats="all")(x)[path]
        first = FeatureModel(resnet18, path, output_key=None, repeats="first")(x)[path]
    finally:
        for h in handles:
            h.remove()
    assert_same(last, calls[path][1])
    assert len(every) == 2
    assert all(torch.equal(a, b) for a, b in zip(every, calls[path], strict=True))
    assert_same(first, calls[path][0])
    assert counts == {"layer1.1": 0, "layer2": 0}


def test_early_stop_keeps_gradients(resnet18) -> None:
    x = torch.randn(1, 3, 32, 32)
    resnet18.zero_grad()
    FeatureModel(resnet18, "layer1", output_key=None)(x)["layer1"].sum().backward()
    assert resnet18.conv1.weight.grad is not None
    assert resnet18.layer2[0].conv1.weight.grad is None
    resnet18.zero_grad()


def test_early_stop_inside_user_try_except() -> None:
    """A model whose forward swallows `Exception` still stops (the signal is no Exception)."""

    class Guarded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)
            self.ran_b = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                x = self.a(x)
            except Exception:
                x = torch.zeros_like(x)
            self.ran_b = True
            return self.b(x)

    model = Guarded()
    x = torch.randn(1, 2)
    out = FeatureModel(model, "a", output_key=None)(x)
    assert torch.equal(out["a"], model.a(x))
    assert not model.ran_b

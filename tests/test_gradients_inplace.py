"""Gradients at every captured activation, also where a later in-place op modifies it: against the
same model with every in-place op switched off (tests/reference.py: inplace=False on every
module, functional ``x += y`` and ``F.relu(x, inplace=True)`` run out of place)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision import models as tvm

from featwrap import CheckpointWarning, FeatureModel, GradientWarning, list_layers
from tests.reference import CountWrites, reference, reference_grads


def target(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, 3]


def returns_its_input(model: nn.Module, x: torch.Tensor) -> set[str]:
    """The modules whose output is their input or shares its memory (nn.Identity, dropout in
    eval mode, in-place activations, views), found by plain hooks on one forward."""
    found: set[str] = set()

    def root(t: torch.Tensor) -> torch.Tensor:
        return t if t._base is None else t._base

    handles = [
        module.register_forward_hook(
            lambda m, args, out, path=path: (
                found.add(path)
                if isinstance(out, torch.Tensor)
                and any(isinstance(a, torch.Tensor) and root(a) is root(out) for a in args)
                else None
            )
        )
        for path, module in model.named_modules()
        if path
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def check_every_layer(model: nn.Module, x: torch.Tensor, extra: tuple[str, ...] = ()) -> None:
    """Every module's output (and ``extra`` keys), captured at once: each value is exact and
    torch.autograd.grad and retain_grad give the reference's gradient; the model's output is
    what it is without featwrap. A module that returns its input (or a view of it) gets no twin
    (that would change what the model computes): where a later in-place op modifies it, its
    gradient is lost, which featwrap says (GradientWarning); only such modules may be said."""
    model = model.eval()
    keys = [*list_layers(model), *extra]
    values, grads, writes = reference_grads(model, keys, x, target)
    assert writes == [], writes[:5]  # the reference really ran without in-place ops
    with torch.no_grad():
        plain = model(x)
    fm = FeatureModel(model, keys, missing="skip")
    counter = CountWrites()
    with counter, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fm(x)
    assert counter.writes, "the model under test has in-place ops (else the test proves nothing)"
    torch.testing.assert_close(out["logits"], plain, rtol=0, atol=0)
    assert {k for k in keys if k in out} == set(values)  # the same modules ran
    said = re.compile(r"layer '([^']+)' shares memory")
    lost = {
        m.group(1)
        for w in caught
        if issubclass(w.category, GradientWarning) and (m := said.search(str(w.message)))
    }
    assert lost <= returns_its_input(model, x), lost
    keys = [k for k in keys if k in values and values[k].requires_grad]
    for key in lost:
        assert torch.equal(out[key], values[key]), key  # the value is still exact
    keys = [k for k in keys if k not in lost]
    assert len(keys) > 0.8 * len(values)
    got = torch.autograd.grad(target(out["logits"]), [out[k] for k in keys], allow_unused=True)
    for key, g in zip(keys, got, strict=True):
        assert torch.equal(out[key], values[key]), key
        expected = grads[key]
        if expected is None:
            assert g is None or not g.any(), key
        else:
            assert g is not None, key
            torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7, msg=key)
    out = fm(x)  # retain_grad: the same gradients land in .grad
    for key in keys:
        out[key].retain_grad()
    target(out["logits"]).backward()
    for key in keys:
        expected = grads[key]
        if expected is not None:
            torch.testing.assert_close(out[key].grad, expected, rtol=1e-5, atol=1e-7, msg=key)


def test_resnet18_bn1_gradient(resnet18) -> None:
    """The issue's example: bn1 and layer1.0.bn2, which in-place ops modify later."""
    x = torch.randn(1, 3, 32, 32)
    keys = ["bn1", "layer1.0.bn2", "layer4"]
    values, grads, _ = reference_grads(resnet18, keys, x, target)
    out = FeatureModel(resnet18, keys)(x)
    got = torch.autograd.grad(target(out["logits"]), [out[k] for k in keys])
    for key, g in zip(keys, got, strict=True):
        assert torch.equal(out[key], values[key])
        assert key == "layer4" or (out[key] < 0).any()  # bn1, bn2: before the ReLU
        torch.testing.assert_close(g, grads[key], rtol=1e-5, atol=1e-7)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: tvm.resnet18(),
    "mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(),
    "timm-resnet10t": lambda: timm.create_model("resnet10t"),
}
ZOO: dict[str, Callable[[], nn.Module]] = {
    "densenet121": lambda: tvm.densenet121(),
    "timm-mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050"),
    "timm-efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
}


@pytest.mark.parametrize("name", MODELS)
def test_every_layer(name: str) -> None:
    check_every_layer(MODELS[name](), torch.randn(1, 3, 32, 32))


@pytest.mark.zoo
@pytest.mark.parametrize("name", ZOO)
def test_every_layer_zoo(name: str) -> None:
    check_every_layer(ZOO[name](), torch.randn(1, 3, 32, 32))


def test_module_inputs_modified_by_the_module() -> None:
    """``relu:input`` (the in-place ReLU overwrites it) and ``fc:input``."""
    model = tvm.resnet18()
    check_every_layer(model, torch.randn(1, 3, 32, 32), ("relu:input", "fc:input"))


class CheckpointedInplace(nn.Module):
    """A block run under activation checkpointing, with an in-place ReLU after a captured layer."""

    def __init__(self, use_reentrant: bool) -> None:
        super().__init__()
        self.use_reentrant = use_reentrant
        self.stem = nn.Linear(4, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(self.stem(x))
        h = checkpoint(self.block, h, use_reentrant=self.use_reentrant)
        return self.head(h)


def test_non_reentrant_checkpoint_is_exact() -> None:
    model = CheckpointedInplace(use_reentrant=False)
    x = torch.randn(2, 4, requires_grad=True)
    keys = ["stem", "block.0", "block.1", "block"]
    values, grads, _ = reference_grads(model, keys, x, target)
    fm = FeatureModel(model, keys)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to warn about
            out = fm(x)
        got = torch.autograd.grad(target(out["logits"]), [out[k] for k in keys])
        for key, g in zip(keys, got, strict=True):
            assert torch.equal(out[key], values[key]), key
            torch.testing.assert_close(g, grads[key], msg=key)


def test_reentrant_checkpoint_warns_once_per_layer() -> None:
    model = CheckpointedInplace(use_reentrant=True)
    x = torch.randn(2, 4, requires_grad=True)
    fm = FeatureModel(model, ["stem", "block.0", "head"])
    _, calls = reference(model, ["block.0"], x)
    with pytest.warns(CheckpointWarning, match=r"'block\.0'.*use_reentrant=False") as caught:
        out = fm(x)
    assert len(caught) == 1
    assert torch.equal(out["block.0"], calls["block.0"][0])  # exact, but without a graph
    assert not out["block.0"].requires_grad
    assert out["stem"].requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        fm(x)


def test_no_grad_inside_the_model_does_not_warn() -> None:
    """A frozen part run under no_grad by the model is not a checkpoint: no warning."""

    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                h = self.enc(x)
            return self.head(h)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = FeatureModel(Frozen(), ["enc"])(torch.randn(2, 4))
    assert not out["enc"].requires_grad


class ReusedInplace(nn.Module):
    """One module called twice; each call's output is modified in place afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h += 1
        h = self.fc(h)
        h.mul_(2)
        return self.head(h)


@pytest.mark.parametrize("repeats", ["all", "first", "last"])
def test_every_call_of_a_repeated_layer(repeats: str) -> None:
    model = ReusedInplace()
    x = torch.randn(2, 6)
    h0 = model.fc(x)  # the same forward, written out without in-place ops
    h1 = model.fc(h0 + 1)
    expected = torch.autograd.grad(target(model.head(h1 * 2)), [h0, h1])
    out = FeatureModel(model, ["fc"], repeats=repeats)(x)
    got = out["fc"] if repeats == "all" else [out["fc"]]
    wanted = {"all": [0, 1], "first": [0], "last": [1]}[repeats]
    grads = torch.autograd.grad(target(out["logits"]), got)
    for value, grad, call in zip(got, grads, wanted, strict=True):
        assert torch.equal(value, (h0, h1)[call])
        torch.testing.assert_close(grad, expected[call])

"""Captured values are what the module returned, whatever in-place op comes later; and no copy is
paid where none follows."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from featwrap import FeatureModel
from tests.models import ConditionalInplace, InplaceChain, Structured
from tests.reference import assert_same, reference


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_inplace_chain(train: bool, grad: bool) -> None:
    model = InplaceChain().train(train)
    layers = ["bn", "act", "conv2", "clip", "pool"]
    fm = FeatureModel(model, layers)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.set_grad_enabled(grad):
            out = fm(x)
        model.load_state_dict(state)  # BatchNorm running stats: rerun from the same state
        with torch.set_grad_enabled(grad):
            expected, calls = reference(model, layers, x)
        model.load_state_dict(state)
        with torch.no_grad():
            model(x)  # keep the running stats moving as a single forward would
        assert torch.equal(out["logits"], expected)
        for name in layers:
            assert_same(out[name], calls[name][0])
        assert (out["bn"] < 0).any()  # pre-ReLU
        assert (out["conv2"] < 0).any()  # before `+=` and the clip


@pytest.mark.parametrize(
    "options",
    [{}, {"output_key": None}, {"repeats": "first"}, {"repeats": "all"}],
    ids=["default", "early-stop", "first", "all"],
)
def test_inference_mode(options: dict[str, Any]) -> None:
    """Inference tensors count no versions: their snapshots are returned, right after in-place ops."""
    model = InplaceChain().eval()
    layers = ["bn", "act", "conv2", "pool"]
    fm = FeatureModel(model, layers, **options)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        with torch.inference_mode():
            out = fm(x)
        _, calls = reference(model, layers, x)
        for name in layers:
            got = out[name]
            assert_same(got[0] if options.get("repeats") == "all" else got, calls[name][0])


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_copy_only_where_an_inplace_op_follows(resnet18, grad: bool) -> None:
    """A layer nothing modifies later is returned as the very tensor the module produced (same
    object, same memory, no copy), from the first call on; bn1, which the in-place ReLU modifies,
    is returned as it was before the ReLU: without grad a snapshot (the ReLU's write copied the
    memory), with grad the module's own tensor (the ReLU wrote to the twin the model got)."""
    x = torch.randn(1, 3, 32, 32)
    layers = ["maxpool", "layer3.0.downsample.1", "avgpool", "bn1"]
    fm = FeatureModel(resnet18, layers)
    raw: dict[str, torch.Tensor] = {}

    def keep(path: str, output: torch.Tensor) -> None:
        raw[path] = output

    handles = [  # prepended: they see what the module returned, before featwrap's hook
        resnet18.get_submodule(p).register_forward_hook(
            lambda m, a, o, p=p: keep(p, o), prepend=True
        )
        for p in layers
    ]
    try:
        for _ in range(2):
            with torch.set_grad_enabled(grad):
                out = fm(x)
            for p in ["maxpool", "layer3.0.downsample.1", "avgpool"]:
                assert out[p] is raw[p], p
                assert out[p].data_ptr() == raw[p].data_ptr(), p
            assert (out["bn1"] < 0).any()
            if grad:
                assert out["bn1"] is raw["bn1"]
            else:
                assert out["bn1"] is not raw["bn1"]
                assert out["bn1"].data_ptr() != raw["bn1"].data_ptr()
                assert (raw["bn1"] >= 0).all()
    finally:
        for h in handles:
            h.remove()


def test_structures_modified_in_place_later() -> None:
    model = Structured()
    layers = ["tup", "dic", "named", "dc"]
    fm = FeatureModel(model, layers)
    for _ in range(3):
        x = torch.randn(2, 4)
        out = fm(x)
        expected, calls = reference(model, layers, x)
        assert torch.equal(out["logits"], expected)
        for name in layers:
            assert_same(out[name], calls[name][0])
        assert len(out["dc"].extra) == 2  # the list the parent appended to is not the captured one


def test_data_dependent_inplace_op() -> None:
    """An in-place op that happens only for some inputs: every call is right, in any order."""
    model = ConditionalInplace()
    fm = FeatureModel(model, ["stem"])
    neg = -torch.ones(2, 4)  # mean < 0: no in-place op
    pos = torch.ones(2, 4)  # mean > 0: the stem output is negated in place
    _, ref_neg = reference(model, ["stem"], neg)
    _, ref_pos = reference(model, ["stem"], pos)
    for x, ref in [(neg, ref_neg), (neg, ref_neg), (pos, ref_pos), (neg, ref_neg), (pos, ref_pos)]:
        assert torch.equal(fm(x)["stem"], ref["stem"][0])
    for _ in range(5):  # random inputs flip the branch at random
        x = torch.randn(2, 4)
        _, ref = reference(model, ["stem"], x)
        assert torch.equal(fm(x)["stem"], ref["stem"][0])


def test_identity_module_returning_its_input() -> None:
    """nn.Identity returns its input tensor itself; the parent then modifies it in place."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.id = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.id(self.lin(x))
            h.relu_()
            return h

    model = M()
    fm = FeatureModel(model, ["lin", "id"])
    for _ in range(2):
        x = torch.randn(4, 3)
        out = fm(x)
        _, calls = reference(model, ["lin", "id"], x)
        assert (out["id"] < 0).any()
        assert torch.equal(out["id"], calls["id"][0])
        assert torch.equal(out["lin"], calls["lin"][0])

"""Captured values are what the module returned, whatever in-place op comes later; and no copy is
paid where none follows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featwrap import FeatureModel, FeatureModifiedError
from tests.models import ConditionalInplace, InplaceChain, Structured
from tests.reference import assert_same, recording, reference


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


def test_inference_mode() -> None:
    model = InplaceChain().eval()
    layers = ["bn", "act", "conv2", "pool"]
    fm = FeatureModel(model, layers)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        with torch.inference_mode():
            out = fm(x)
        _, calls = reference(model, layers, x)
        for name in layers:
            assert_same(out[name], calls[name][0])


def test_no_copy_where_no_inplace_op_follows(resnet18) -> None:
    """After the first call, a layer nothing modifies is returned as the very tensor the module
    produced: same storage, no copy."""
    x = torch.randn(1, 3, 32, 32)
    layers = ["maxpool", "layer3.0.downsample.1", "avgpool", "bn1"]
    fm = FeatureModel(resnet18, layers)
    fm(x)  # the first call in a mode learns which outputs later ops modify
    with recording(resnet18, []) as _:
        pass
    seen: dict[str, int] = {}
    handles = [
        resnet18.get_submodule(p).register_forward_hook(
            lambda m, a, o, p=p: seen.__setitem__(p, o.data_ptr())
        )
        for p in layers
    ]
    try:
        out = fm(x)
    finally:
        for h in handles:
            h.remove()
    for p in ["maxpool", "layer3.0.downsample.1", "avgpool"]:
        assert out[p].data_ptr() == seen[p], p  # the module's own tensor
    assert out["bn1"].data_ptr() != seen["bn1"]  # copied: the in-place ReLU would clobber it


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


def test_data_dependent_inplace_is_never_returned_silently() -> None:
    """An in-place op that happens only for some inputs: the first time it happens after the
    probe, featwrap raises rather than return a wrong value; from then on it copies."""
    model = ConditionalInplace()
    fm = FeatureModel(model, ["stem"])
    neg = -torch.ones(2, 4)  # mean < 0: no in-place op
    pos = torch.ones(2, 4)  # mean > 0: the stem output is negated in place
    _, ref_neg = reference(model, ["stem"], neg)
    _, ref_pos = reference(model, ["stem"], pos)
    assert torch.equal(fm(neg)["stem"], ref_neg["stem"][0])
    assert torch.equal(fm(neg)["stem"], ref_neg["stem"][0])
    with pytest.raises(FeatureModifiedError, match="'stem' was modified in place") as info:
        fm(pos)
    assert isinstance(info.value, RuntimeError)
    assert torch.equal(fm(pos)["stem"], ref_pos["stem"][0])
    assert torch.equal(fm(neg)["stem"], ref_neg["stem"][0])


def test_probe_catches_the_inplace_op_on_first_call() -> None:
    model = ConditionalInplace()
    fm = FeatureModel(model, ["stem"])
    pos = torch.ones(2, 4)
    _, ref_pos = reference(model, ["stem"], pos)
    assert torch.equal(fm(pos)["stem"], ref_pos["stem"][0])
    assert torch.equal(fm(pos)["stem"], ref_pos["stem"][0])


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

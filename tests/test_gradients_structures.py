"""Gradients at every tensor of every capture, not only bare outputs: whole structured outputs
(tuple, dict, namedtuple, dataclass) and module inputs picked by a callable ``select``, each
tensor modified in place later. Against the same forward written out by hand without in-place
ops. And the model itself is never changed: a capture that shares memory with a module's input
(``nn.Identity``, ``nn.Flatten``, an in-place activation) keeps that sharing."""

from __future__ import annotations

import warnings
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from featwrap import Capture, FeatureModel, GradientWarning
from tests.reference import reference_grads

Pair = namedtuple("Pair", ["low", "high"])


@dataclass
class Out:
    features: torch.Tensor
    extra: list[torch.Tensor]


class TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y, y * 2


class DictBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": x.sum(1, keepdim=True), "neg": -x}


class NamedBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> Pair:
        return Pair(x - 1, x + 1)


class DataclassBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> Out:
        return Out(x * 3, [x + 5, x * x])


class Mix(nn.Module):
    """Modifies its first input in place."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.relu_()
        return x + y


class StructuredInplace(nn.Module):
    """Structured outputs whose tensors the parent modifies in place and then uses."""

    def __init__(self) -> None:
        super().__init__()
        self.tup = TupleBlock()
        self.dic = DictBlock()
        self.named = NamedBlock()
        self.dc = DataclassBlock()
        self.mix = Mix()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.tup(x)
        a.relu_()
        b += a
        d = self.dic(b)
        d["neg"].mul_(2)
        p = self.named(d["neg"] + d["sum"])
        p.high.tanh_()
        o = self.dc(p.high * p.low)
        o.extra[1].sub_(1)
        h = self.mix(o.features, y=o.extra[1])
        h += o.extra[0]
        return self.head(h + a)

    def forward_written_out(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The same forward without in-place ops; every captured tensor, by key and place."""
        y = self.tup.lin(x)
        a0, b0 = y, y * 2
        a = a0.relu()
        b = b0 + a
        d_sum, d_neg0 = b.sum(1, keepdim=True), -b
        d_neg = d_neg0 * 2
        low, high0 = d_neg + d_sum - 1, d_neg + d_sum + 1
        high = high0.tanh()
        m = high * low
        features, extra0, extra1_0 = m * 3, m + 5, m * m
        extra1 = extra1_0 - 1
        h = (features.relu() + extra1) + extra0
        parts = {
            "tup.0": a0,
            "tup.1": b0,
            "dic.sum": d_sum,
            "dic.neg": d_neg0,
            "named.low": low,
            "named.high": high0,
            "dc.features": features,
            "dc.extra.0": extra0,
            "dc.extra.1": extra1_0,
            "mix:input.x": features,
            "mix:input.y": extra1,
        }
        return self.head(h + a), parts


def leaves(out: dict[str, object]) -> dict[str, torch.Tensor]:
    """The captured tensors of ``StructuredInplace``'s FeatureModel, named as in the reference."""
    tup, dic, named, dc, mix = (out[k] for k in ("tup", "dic", "named", "dc", "mix:input"))
    return {
        "tup.0": tup[0],
        "tup.1": tup[1],
        "dic.sum": dic["sum"],
        "dic.neg": dic["neg"],
        "named.low": named.low,
        "named.high": named.high,
        "dc.features": dc.features,
        "dc.extra.0": dc.extra[0],
        "dc.extra.1": dc.extra[1],
        "mix:input.x": mix[0],
        "mix:input.y": mix[1],
    }


def both_inputs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y


@pytest.mark.parametrize("repeats", ["last", "all"])
def test_structured_outputs_and_selected_inputs(repeats: str) -> None:
    """Whole structured outputs (no select) and a module input picked by a callable select:
    values as the module returned them, gradients of the written-out forward, by
    torch.autograd.grad and by retain_grad."""
    torch.manual_seed(0)
    model = StructuredInplace()
    x = torch.randn(5, 4)
    logits, parts = model.forward_written_out(x)
    names = list(parts)
    expected = torch.autograd.grad(logits[0, 1], [parts[n] for n in names], allow_unused=True)
    layers = ["tup", "dic", "named", "dc", Capture("mix", input=True, select=both_inputs)]
    fm = FeatureModel(model, layers, repeats=repeats)
    for _ in range(2):
        out = fm(x)
        if repeats == "all":
            out = {k: v[0] if isinstance(v, list) else v for k, v in out.items()}
        torch.testing.assert_close(out["logits"], logits, rtol=0, atol=0)
        got = leaves(out)
        for name in names:
            torch.testing.assert_close(got[name], parts[name], rtol=0, atol=0, msg=name)
        grads = torch.autograd.grad(out["logits"][0, 1], [got[n] for n in names], allow_unused=True)
        for name, g, e in zip(names, grads, expected, strict=True):
            if e is None:
                assert g is None or not g.any(), name
            else:
                assert g is not None, name
                torch.testing.assert_close(g, e, msg=name)
    out = fm(x)
    if repeats == "last":
        got = leaves(out)
        for name in names:
            got[name].retain_grad()
        out["logits"][0, 1].backward()
        for name, e in zip(names, expected, strict=True):
            if e is not None:
                torch.testing.assert_close(got[name].grad, e, msg=name)


def test_selected_part_shared_with_another_part_is_not_twinned() -> None:
    """A tuple whose two parts are one tensor: writes through one reach the other, as without
    featwrap (a twin of one part would break that); the value stays exact."""

    class Twice(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = x * 2
            return y, y

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.twice = Twice()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p, q = self.twice(self.lin(x))
            p.add_(1)
            return q * 3

    model = Net()
    x = torch.randn(2, 3)
    expected = model(x)  # (2 * lin(x) + 1) * 3: q sees the write to p
    for layers in (["twice"], [Capture("twice", select=0)]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = FeatureModel(model, layers)(x)
        torch.testing.assert_close(out["logits"], expected, rtol=0, atol=0)
        value = out["twice"][0] if isinstance(out["twice"], tuple) else out["twice"]
        torch.testing.assert_close(value, model.lin(x) * 2, rtol=0, atol=0)
        assert [w.category for w in caught] == [GradientWarning], caught


class Aliasing(nn.Module):
    """Module outputs that are their input (nn.Identity) or a view of it (nn.Flatten), written in
    place later while the input is read again: what the model computes depends on the sharing."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.id = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.flat = nn.Flatten(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = self.act(self.id(h))  # writes h
        self.flat(y).mul_(2)  # writes y, hence h
        return y + h


@pytest.mark.parametrize("layer", ["id", "act", "flat"])
def test_captures_sharing_memory_with_the_input_do_not_change_the_model(layer: str) -> None:
    """With grad, no copy-on-write twin where a module's output shares memory with its input:
    the model computes what it computes without featwrap. The value is exact; where a later
    in-place op modified it, its gradient is not available and featwrap says so, once."""
    model = Aliasing()
    x = torch.randn(2, 3)
    expected = model(x)
    h = model.lin(x)
    fm = FeatureModel(model, [layer])
    with pytest.warns(GradientWarning, match=rf"layer '{layer}' shares memory.*inplace=False"):
        out = fm(x)
    torch.testing.assert_close(out["logits"], expected, rtol=0, atol=0)
    value = {"id": h, "act": h.relu(), "flat": h.relu().flatten(0)}[layer]
    torch.testing.assert_close(out[layer], value, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer
        fm(x)


class Placeholder(nn.Module):
    """timm's pattern: BatchNorm, an nn.Identity placeholder (drop block), an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.drop(self.bn(self.lin(x)))))


def test_identity_after_a_captured_layer_gets_its_exact_gradient() -> None:
    """nn.Identity returns its input, which is the twin featwrap handed on for ``bn``: its value
    is ``bn``'s own tensor, with ``bn``'s exact gradient, although the ReLU writes to it."""
    model = Placeholder().eval()
    x = torch.randn(5, 4)
    keys = ["bn", "drop"]
    values, grads, writes = reference_grads(model, keys, x, lambda logits: logits[0, 1])
    assert writes == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing lost: no warning
        out = FeatureModel(model, keys)(x)
    torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)
    got = torch.autograd.grad(out["logits"][0, 1], [out[k] for k in keys])
    for key, g in zip(keys, got, strict=True):
        assert torch.equal(out[key], values[key]), key
        assert (out[key] < 0).any(), key  # before the in-place ReLU
        torch.testing.assert_close(g, grads[key], msg=key)

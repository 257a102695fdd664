"""Capturing a module's input ("fc:input", Capture(input=True)) and parts of structured outputs
(Capture(select=...)), checked against hand-written hooks that clone at the moment of the call."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from featwrap import Capture, FeatureModel, LayerNotFoundError, LayerSpecError
from tests.models import InplaceChain, ReuseReLU, Structured
from tests.reference import assert_same, deep_clone, reference


@contextmanager
def inputs_recorded(model: nn.Module, paths: list[str]) -> Iterator[dict[str, list[Any]]]:
    """An independent reference for inputs: a pre-hook cloning (args, kwargs) of every call."""
    calls: dict[str, list[Any]] = {p: [] for p in paths}
    handles = []
    for path in paths:

        def hook(mod: nn.Module, args: Any, kwargs: Any, path: str = path) -> None:
            calls[path].append((deep_clone(args), deep_clone(kwargs)))

        module = model.get_submodule(path)
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_inputs_are_what_the_module_received(resnet18, train: bool, grad: bool) -> None:
    """The input of fc is the pooled embedding; the input of an in-place ReLU is the
    pre-activation, although the ReLU itself overwrites it."""
    model = resnet18.train(train)
    fm = FeatureModel(model, ["fc:input", "relu:input", "layer1.0.relu:input", "layer4"])
    try:
        for _ in range(3):  # the probing call, then the learned fast path
            x = torch.randn(2, 3, 32, 32)
            state = copy.deepcopy(model.state_dict())
            with torch.set_grad_enabled(grad):
                out = fm(x)
            model.load_state_dict(state)
            paths = ["fc", "relu", "layer1.0.relu"]
            with inputs_recorded(model, paths) as calls, torch.set_grad_enabled(grad):
                expected = model(x)
            model.load_state_dict(state)
            assert torch.equal(out["logits"], expected)
            assert_same(out["fc:input"], calls["fc"][0][0][0])
            assert_same(out["relu:input"], calls["relu"][0][0][0])
            assert (out["relu:input"] < 0).any()  # not clobbered by the in-place ReLU
            # a module called twice: the input of the last call (repeats="last")
            assert len(calls["layer1.0.relu"]) == 2
            assert_same(out["layer1.0.relu:input"], calls["layer1.0.relu"][-1][0][0])
            pooled = out["layer4"].mean((2, 3))
            torch.testing.assert_close(out["fc:input"], pooled)
    finally:
        model.eval()


def test_input_modified_in_place_by_the_parent_later() -> None:
    """InplaceChain: clip's input z is clipped in place by clip itself (Hardtanh(inplace=True));
    conv2's input y is the in-place ReLU's output, read again later by `z += y`."""
    model = InplaceChain().eval()
    fm = FeatureModel(model, ["clip:input", "conv2:input", "pool:input"])
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        with inputs_recorded(model, ["clip", "conv2", "pool"]) as calls:
            expected = model(x)
        out = fm(x)
        assert torch.equal(out["logits"], expected)
        for path in ["clip", "conv2", "pool"]:
            assert_same(out[f"{path}:input"], calls[path][0][0][0])
        assert (out["clip:input"] > 0.5).any()  # before the clip


def test_repeats_all_and_first_on_inputs() -> None:
    model = ReuseReLU()
    x = torch.randn(3, 4)
    with inputs_recorded(model, ["relu"]) as calls:
        model(x)
    every = FeatureModel(model, ["relu:input"], repeats="all")(x)["relu:input"]
    first = FeatureModel(model, ["relu:input"], repeats="first")(x)["relu:input"]
    assert len(every) == len(calls["relu"]) == 3
    for got, (args, _) in zip(every, calls["relu"], strict=True):
        assert_same(got, args[0])
    assert_same(first, calls["relu"][0][0][0])


def test_early_stop_before_the_module_whose_input_is_wanted(resnet18) -> None:
    """output_key=None stops once every value is there: fc itself never runs."""
    ran: list[int] = []
    handle = resnet18.fc.register_forward_hook(lambda *a: ran.append(1))
    try:
        fm = FeatureModel(resnet18, {"fc:input": "embedding"}, output_key=None)
        out = fm(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert list(out) == ["embedding"]
    assert out["embedding"].shape == (2, 512)
    assert ran == []


def test_gradients_flow_through_inputs(resnet18) -> None:
    fm = FeatureModel(resnet18, {"fc:input": "emb"}, output_key=None)
    resnet18.zero_grad()
    fm(torch.randn(2, 3, 32, 32))["emb"].square().sum().backward()
    assert resnet18.layer4[1].conv2.weight.grad is not None
    assert resnet18.fc.weight.grad is None  # fc did not run
    resnet18.zero_grad(set_to_none=True)


class Attention(nn.Module):
    """nn.MultiheadAttention returns (out, weights); called with keyword arguments too."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        out, weights = self.attn(h, h, value=h * 2, need_weights=True)
        out.add_(1)  # modifies the captured tuple's first tensor in place
        return self.head(out) + weights.sum()


def test_selectors_on_multihead_attention() -> None:
    model = Attention()
    layers = [
        "attn",
        Capture("attn", key="out", select=0),
        Capture("attn", key="weights", select=1),
        Capture("attn", key="summed", select=lambda o: o[0].sum(-1)),
        Capture("attn", key="query", input=True),
        Capture("attn", key="key", input=True, select=1),
        Capture("attn", key="value", input=True, select="value"),
        Capture("attn", key="both", input=True, select=lambda q, k, **kw: (q, kw["value"])),
    ]
    fm = FeatureModel(model, layers)
    for _ in range(3):
        x = torch.randn(2, 5, 8)
        with inputs_recorded(model, ["attn"]) as ins:
            expected, outs = reference(model, ["attn"], x)
        got = fm(x)
        assert_same(got["logits"], expected)
        (args, kwargs), (out, weights) = ins["attn"][0], outs["attn"][0]
        assert_same(got["attn"], (out, weights))  # the whole tuple, in-place-safe
        assert_same(got["out"], out)
        assert_same(got["weights"], weights)
        torch.testing.assert_close(got["summed"], out.sum(-1), rtol=0, atol=0)
        assert_same(got["query"], args[0])
        assert_same(got["key"], args[1])
        assert_same(got["value"], kwargs["value"])
        assert_same(got["both"], (args[0], kwargs["value"]))


def test_selectors_on_dict_namedtuple_dataclass() -> None:
    """Structured: the parent modifies tensors inside the returned structures in place."""
    model = Structured()
    layers = [
        Capture("tup", key="tup0", select=0),
        Capture("dic", key="neg", select="neg"),
        Capture("named", key="high", select="high"),
        Capture("named", key="low", select=0),
        Capture("dc", key="extra", select="extra"),
        "dc",
    ]
    fm = FeatureModel(model, layers)
    for _ in range(3):
        x = torch.randn(2, 4)
        expected, calls = reference(model, ["tup", "dic", "named", "dc"], x)
        got = fm(x)
        assert_same(got["logits"], expected)
        assert_same(got["tup0"], calls["tup"][0][0])
        assert_same(got["neg"], calls["dic"][0]["neg"])
        assert_same(got["high"], calls["named"][0].high)
        assert_same(got["low"], calls["named"][0].low)
        assert_same(got["extra"], calls["dc"][0].extra)  # the list as returned (2 items)
        assert_same(got["dc"], calls["dc"][0])


def test_detach_applies_through_structures_and_selections() -> None:
    model = Attention()
    fm = FeatureModel(
        model, ["attn", Capture("attn", key="w", select=1), "attn:input"], detach=True
    )
    got = fm(torch.randn(2, 5, 8))
    assert got["logits"].requires_grad
    assert not any(t.requires_grad for t in got["attn"])
    assert not got["w"].requires_grad
    assert not got["attn:input"].requires_grad
    kept = FeatureModel(model, ["attn", Capture("attn", key="w", select=1)])(torch.randn(2, 5, 8))
    assert all(t.requires_grad for t in kept["attn"])
    assert kept["w"].requires_grad


def test_inference_mode_inputs_and_selections() -> None:
    model = InplaceChain().eval()
    fm = FeatureModel(model, ["clip:input", Capture("bn", key="bn0", select=lambda t: t[0])])
    for _ in range(2):
        x = torch.randn(2, 3, 8, 8)
        with inputs_recorded(model, ["clip"]) as ins:
            _, outs = reference(model, ["bn"], x)
        with torch.inference_mode():
            got = fm(x)
        assert_same(got["clip:input"], ins["clip"][0][0][0])
        assert_same(got["bn0"], outs["bn"][0][0])


def test_bad_selector_names_layer_and_structure() -> None:
    model = Attention()
    with pytest.raises(LayerSpecError, match=r"select=2 for layer 'attn'.*tuple of length 2"):
        FeatureModel(model, [Capture("attn", select=2)])(torch.randn(2, 5, 8))
    with pytest.raises(LayerSpecError, match=r"select='nope'.*input of layer 'attn:input'"):
        FeatureModel(model, [Capture("attn", input=True, select="nope")])(torch.randn(2, 5, 8))
    with pytest.raises(LayerSpecError, match=r"select='x'.*keys \['sum', 'neg'\]"):
        FeatureModel(Structured(), [Capture("dic", select="x")])(torch.randn(2, 4))
    # nothing left behind: the model and a new FeatureModel work
    assert FeatureModel(model, ["attn:input"])(torch.randn(2, 5, 8))["attn:input"].shape == (
        2,
        5,
        8,
    )


def test_capture_argument_errors(resnet18) -> None:
    with pytest.raises(TypeError, match="select must be an int"):
        Capture("fc", select=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input must be True or False"):
        Capture("fc", input="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path must be a module path string"):
        Capture(3)  # type: ignore[arg-type]
    with pytest.raises(LayerNotFoundError, match=r"'layer5' is not a submodule.*'layer4'"):
        FeatureModel(resnet18, ["layer5:input"])
    with pytest.raises(LayerSpecError, match="single key 'k'"):
        FeatureModel(resnet18, [Capture("layer*", key="k", input=True)])
    with pytest.raises(LayerSpecError, match="requested twice"):
        FeatureModel(resnet18, ["fc:input", Capture("fc", input=True)])


def test_keys_globs_and_aliases(resnet18) -> None:
    fm = FeatureModel(
        resnet18,
        [Capture("layer?", input=True), "fc", "fc:input"],
    )
    assert list(fm.layers) == [
        "layer1:input",
        "layer2:input",
        "layer3:input",
        "layer4:input",
        "fc",
        "fc:input",
    ]
    assert fm.layers["fc:input"] == "fc"
    x = torch.randn(1, 3, 32, 32)
    out = fm(x)
    _, calls = reference(resnet18, ["layer1", "layer3"], x)
    assert_same(out["layer2:input"], calls["layer1"][0])
    assert_same(out["layer4:input"], calls["layer3"][0])
    aliased = FeatureModel(resnet18, {"fc:input": "embedding", "layer1": "c2"})
    assert list(aliased(torch.randn(1, 3, 32, 32))) == ["logits", "embedding", "c2"]


def test_a_module_literally_named_with_input_suffix() -> None:
    model = nn.Sequential()
    model.add_module("a:input", nn.Linear(2, 2))
    model.add_module("a", nn.Linear(2, 2))
    fm = FeatureModel(model, ["a:input"])
    assert fm.layers == {"a:input": "a:input"}  # the module of that name, not the input of "a"
    x = torch.randn(1, 2)
    _, calls = reference(model, ["a:input"], x)
    assert_same(fm(x)["a:input"], calls["a:input"][0])


def test_pickle_and_deepcopy_keep_captures() -> None:
    """A Capture with an int selector pickles; a lambda selector survives a deepcopy (EMA)."""
    x = torch.randn(2, 5, 8)
    fm = FeatureModel(Attention(), ["attn:input", Capture("attn", key="w", select=1)])
    clone = pickle.loads(pickle.dumps(fm))
    a, b = fm(x), clone(x)
    assert list(a) == list(b) == ["logits", "attn:input", "w"]
    for k in a:
        assert torch.equal(a[k], b[k])
    with_lambda = FeatureModel(Attention(), [Capture("attn", key="w", select=lambda o: o[1])])
    twin = copy.deepcopy(with_lambda)
    assert torch.equal(twin(x)["w"], with_lambda(x)["w"])
    assert twin.backbone is not with_lambda.backbone

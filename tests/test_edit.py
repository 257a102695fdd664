"""fm.edit(): the rest of the model sees the edited value, the returned dict holds it, gradients
flow through it; against hand-written editing hooks (tests/reference.py) on a copy of the model."""

from __future__ import annotations

import copy
import pickle
import threading
from typing import Any

import pytest
import torch
from torch import nn

from featwrap import Capture, EditError, FeatureModel
from tests.models import InplaceChain, ReuseReLU, Structured
from tests.reference import assert_same, editing, reference_grads


def double(t: torch.Tensor) -> torch.Tensor:
    return t * 2


def shift(t: torch.Tensor) -> torch.Tensor:
    return t - 0.3


def test_callable_edit_matches_hand_written_hooks() -> None:
    model = InplaceChain().eval()
    clean = copy.deepcopy(model)
    fm = FeatureModel(model, ["bn", "act", "conv2", "pool"])
    x = torch.randn(2, 3, 8, 8)
    with editing(clean, {"bn": shift, "conv2": double}) as calls:
        expected = clean(x)
    for _ in range(2):
        with fm.edit({"bn": shift, "conv2": double}):
            out = fm(x)
        assert torch.equal(out["logits"], expected)
        assert_same(out["bn"], calls["bn"][0])  # the edited value, before the in-place ReLU
        assert_same(out["conv2"], calls["conv2"][0])  # before `+=` and the in-place Hardtanh
        assert (out["bn"] < 0).any()
    assert not torch.equal(fm(x)["logits"], expected)  # after the block: no edit


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_patching_with_a_value_from_another_run(resnet18, grad: bool) -> None:
    """Activation patching: bn1 of a clean run into a corrupted run; the in-place ReLU after
    bn1 writes neither into the patch nor into the returned value."""
    clean_x, corrupt_x = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    fm = FeatureModel(resnet18, ["bn1", "layer1"])
    with torch.set_grad_enabled(grad):
        patch = fm(clean_x)["bn1"]
        kept = patch.detach().clone()
        with fm.edit({"bn1": patch}):
            out = fm(corrupt_x)
        expected = fm(clean_x)
    assert torch.equal(patch, kept)  # the user's tensor is untouched
    assert torch.equal(out["bn1"], kept)
    assert torch.equal(out["logits"], expected["logits"])  # bn1 decides everything after it
    assert torch.equal(out["layer1"], expected["layer1"])


def test_gradients_flow_through_the_edit() -> None:
    """Against an in-place-free copy of the model with a hand-written editing hook."""
    model = InplaceChain().eval()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    scale = torch.full((1, 4, 1, 1), 1.5, requires_grad=True)

    def scaled(t: torch.Tensor) -> torch.Tensor:
        return t * scale

    clean = copy.deepcopy(model)
    with editing(clean, {"bn": scaled}):
        values, grads, writes = reference_grads(clean, ["bn", "conv2"], x, lambda o: o[0, 1])
        expected_scale = torch.autograd.grad(clean(x)[0, 1], scale)[0]
    assert writes == []
    fm = FeatureModel(model, ["bn", "conv2"])
    with fm.edit({"bn": scaled}):
        out = fm(x)
    got = torch.autograd.grad(out["logits"][0, 1], [out["bn"], out["conv2"], scale])
    assert torch.equal(out["bn"], values["bn"])
    torch.testing.assert_close(got[0], grads["bn"])
    torch.testing.assert_close(got[1], grads["conv2"])
    torch.testing.assert_close(got[2], expected_scale)


def test_module_input() -> None:
    model = InplaceChain().eval()
    clean = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    with editing(clean, {"act:input": shift, "clip:input": double}) as calls:
        expected = clean(x)
    fm = FeatureModel(model, ["act:input", "clip:input"])
    with fm.edit({"act:input": shift, "clip:input": double}):
        out = fm(x)
    assert torch.equal(out["logits"], expected)
    assert_same(out["act:input"], calls["act:input"][0])  # not the in-place ReLU's result
    assert_same(out["clip:input"], calls["clip:input"][0])


def test_selected_parts_of_structured_outputs() -> None:
    model = Structured()
    clean = copy.deepcopy(model)
    x = torch.randn(2, 4)
    edits_ref = {
        "tup": lambda o: (o[0] + 1, o[1]),
        "dic": lambda o: {**o, "neg": o["neg"] * 3},
        "named": lambda o: o._replace(high=o.high - 2),
        "dc": lambda o: type(o)(o.features / 2, list(o.extra)),
    }
    with editing(clean, edits_ref) as calls:
        expected = clean(x)
    layers = [
        Capture("tup", select=0),
        Capture("dic", select="neg"),
        Capture("named", select="high"),
        Capture("dc", select="features"),
    ]
    fm = FeatureModel(model, layers)
    edits: dict[str, Any] = {
        "tup": lambda t: t + 1,
        "dic": lambda t: t * 3,
        "named": lambda t: t - 2,
        "dc": lambda t: t / 2,
    }
    for grad in (False, True):
        with torch.set_grad_enabled(grad), fm.edit(edits):
            out = fm(x)
        assert torch.equal(out["logits"], expected)
        assert_same(out["tup"], calls["tup"][0][0])  # before the parent's in-place mul_
        assert_same(out["dic"], calls["dic"][0]["neg"])
        assert_same(out["named"], calls["named"][0].high)
        assert_same(out["dc"], calls["dc"][0].features)


def test_repeats_every_call_or_a_chosen_one() -> None:
    model = ReuseReLU()
    x = torch.randn(3, 4)
    for call in (None, 0, 2):
        clean = copy.deepcopy(model)
        with editing(clean, {"relu": shift}, call=call) as calls:
            expected = clean(x)
        for repeats in ("last", "first", "all"):
            fm = FeatureModel(model, ["relu"], repeats=repeats)
            with fm.edit({"relu": shift}, call=call):
                out = fm(x)
            assert torch.equal(out["logits"], expected)
            wanted = {"last": calls["relu"][-1], "first": calls["relu"][0], "all": calls["relu"]}
            assert_same(out["relu"], wanted[repeats])


def test_early_stop() -> None:
    """An edit before the last requested layer changes it; modules after it still do not run."""
    model = InplaceChain().eval()
    clean = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    with editing(clean, {"bn": shift}), editing(clean, {"conv2": lambda t: t}) as calls:
        clean(x)
    ran = []
    model.clip.register_forward_pre_hook(lambda *a: ran.append(1))
    fm = FeatureModel(model, ["bn", "conv2"], output_key=None)
    with fm.edit({"bn": shift}):
        out = fm(x)
    assert list(out) == ["bn", "conv2"]
    assert_same(out["conv2"], calls["conv2"][0])
    assert ran == []


def test_nested_blocks_compose_and_restore() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    fm = FeatureModel(model, ["0"])
    x = torch.randn(3, 4)
    plain = model[0](x)
    with fm.edit({"0": double}):
        with fm.edit({"0": shift}):  # outer first, then inner
            assert torch.equal(fm(x)["0"], plain * 2 - 0.3)
        assert torch.equal(fm(x)["0"], plain * 2)
        with pytest.raises(KeyError), fm.edit({"0": shift}):
            raise KeyError("boom")
        assert torch.equal(fm(x)["0"], plain * 2)  # the exception restored the outer state
        with pytest.raises(EditError, match="returned None"), fm.edit({"0": lambda t: None}):
            fm(x)
        assert torch.equal(fm(x)["0"], plain * 2)
    assert torch.equal(fm(x)["0"], plain)


def test_other_threads_are_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    fm = FeatureModel(model, ["0"])
    x = torch.randn(3, 4)
    plain = model[0](x)
    entered, done = threading.Event(), threading.Event()
    results: dict[str, torch.Tensor] = {}

    def editor() -> None:
        with fm.edit({"0": double}):
            entered.set()
            done.wait(10)
            results["editor"] = fm(x)["0"]

    def other() -> None:
        entered.wait(10)
        results["other"] = fm(x)["0"]
        done.set()

    threads = [threading.Thread(target=editor), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert torch.equal(results["other"], plain)
    assert torch.equal(results["editor"], plain * 2)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_carry_no_edit(how: str) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    fm = FeatureModel(model, ["0"])
    x = torch.randn(3, 4)
    with fm.edit({"0": double}):
        copied = copy.deepcopy(fm) if how == "deepcopy" else pickle.loads(pickle.dumps(fm))
        assert torch.equal(copied(x)["0"], copied.backbone[0](x))
        assert copied._recorder.open_edits == 0
        assert torch.equal(fm(x)["0"], model[0](x) * 2)


def test_errors_name_the_value_and_the_way_out() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    fm = FeatureModel(model, {"0": "hidden", "1": "act"})
    x = torch.randn(3, 4)
    with pytest.raises(EditError, match=r"'hiden' is not a key.*Did you mean 'hidden'\?"):
        fm.edit({"hiden": double})
    with pytest.raises(TypeError, match=r"function fn.*or a tensor, got int"):
        fm.edit({"hidden": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"call=-1 is not a call index"):
        fm.edit({"hidden": double}, call=-1)
    with (
        pytest.raises(EditError, match=r"shape \(2, 4\).*gives shape \(3, 4\)"),
        fm.edit({"hidden": torch.zeros(2, 4)}),
    ):
        fm(x)
    selected = FeatureModel(model, [Capture("0", select=lambda o: o[:, :2])])
    with pytest.raises(EditError, match="function as select"):
        selected.edit({"0": double})
    assert torch.equal(fm(x)["hidden"], model[0](x))  # nothing left behind by the failures


@pytest.mark.slow
def test_compiled_forward_inside_an_edit_block() -> None:
    """torch.compile: the forward falls back to eager while an edit block is open (the edits
    apply); with fullgraph=True it raises, naming the edit block; compiled again after it."""
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    clean = copy.deepcopy(model)
    fm = FeatureModel(model, ["0", "2"])
    x = torch.randn(3, 4)
    with editing(clean, {"0": double}):
        expected = clean(x)
    compiled = torch.compile(fm, backend="eager")
    assert torch.equal(compiled(x)["0"], model[0](x))
    with fm.edit({"0": double}):
        for _ in range(2):
            out = compiled(x)
            assert torch.equal(out["logits"], expected)
            assert torch.equal(out["0"], model[0](x) * 2)
    frames = torch._dynamo.utils.counters["frames"]
    traced = frames["total"]
    for _ in range(3):  # patches: a new tensor each time
        patch = torch.randn(3, 4)
        with fm.edit({"0": patch}):
            out = compiled(x)
        assert torch.equal(out["logits"], model[2](torch.relu(patch)))
    assert frames["total"] == traced  # eager, nested modules too: nothing traced again
    assert torch.equal(compiled(x)["0"], model[0](x))  # no edit after the block
    torch._dynamo.reset()
    strict = torch.compile(fm, backend="eager", fullgraph=True)
    with fm.edit({"0": double}), pytest.raises(Exception, match=r"edit block.*torch\.compile"):
        strict(x)
    assert torch.equal(strict(x)["logits"], model(x))


class _CountLazyClones(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += func.overloadpacket is torch.ops.aten._lazy_clone
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("grad", [False, True])
def test_an_edited_layer_costs_one_copy_on_write_clone(grad: bool) -> None:
    """The edit's result is returned as is and the model goes on with one copy-on-write twin of
    it: one lazy clone per edited layer (not a snapshot and a twin), with or without grad, and
    still exact where the model writes to it in place; as hand-written editing hooks."""
    model = InplaceChain().eval()
    clean = copy.deepcopy(model)
    keys = ["bn", "act", "conv2", "clip"]
    fm = FeatureModel(model, keys)
    x = torch.randn(2, 3, 8, 8)
    edits = dict.fromkeys(keys, shift)
    with editing(clean, edits) as calls, torch.set_grad_enabled(grad):
        expected = clean(x)
    counter = _CountLazyClones()
    with torch.set_grad_enabled(grad), fm.edit(edits), counter:
        out = fm(x)
    assert counter.count == len(keys)
    assert torch.equal(out["logits"], expected)
    for key in keys:
        assert_same(out[key], calls[key][0])

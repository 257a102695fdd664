"""The comparison table of docs/comparison.md, one test per row, every cell checked.

Columns: featwrap; torchvision's ``create_feature_extractor`` (FX); "Lego" truncation
(``nn.Sequential(*list(model.children())[:k])``); timm's ``features_only`` and
``forward_intermediates``; the hand-written hook recipe of blog posts and forum answers
(:func:`blog_hooks`). Values are checked against tests/reference.py (cloning hooks).
"""

from __future__ import annotations

import copy
import io
import pickle
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.feature_extraction import create_feature_extractor

from featwrap import FeatureModel, MissingFeatureError
from tests.models import Conditional, Slow
from tests.reference import reference

DOCS = Path(__file__).resolve().parent.parent / "docs" / "comparison.md"


def blog_hooks(model: nn.Module, paths: list[str]) -> dict[str, torch.Tensor]:
    """The hand-written recipe, as it is usually posted: a dict filled by closure hooks."""
    activation: dict[str, torch.Tensor] = {}

    def get_activation(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            activation[name] = output.detach()

        return hook

    for path in paths:
        model.get_submodule(path).register_forward_hook(get_activation(path))
    return activation


def lego(model: nn.Module, k: int) -> nn.Sequential:
    """The first ``k`` top-level children of ``model`` as a Sequential."""
    return nn.Sequential(*list(model.children())[:k])


@pytest.fixture
def model() -> nn.Module:
    """A fresh resnet18 per test: the blog recipe leaves hooks on it."""
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def timm_resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).eval()


TIMM_STAGES = ["act1", "layer1", "layer2", "layer3", "layer4"]


def x_small() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


def counter(module: nn.Module) -> tuple[list[int], Any]:
    calls: list[int] = []
    return calls, module.register_forward_pre_hook(lambda *_: calls.append(1))


# -- the rows --------------------------------------------------------------------------------------
def test_any_module_path(model: nn.Module, timm_resnet: nn.Module) -> None:
    """Reach any submodule, e.g. resnet18's ``layer3.0.downsample.1``."""
    path, x = "layer3.0.downsample.1", x_small()
    _, calls = reference(model, [path], x)
    expected = calls[path][0]
    assert torch.equal(FeatureModel(model, [path])(x)[path], expected)  # featwrap: yes
    assert torch.equal(create_feature_extractor(model, [path])(x)[path], expected)  # FX: yes
    for k in range(1, len(list(model.children())) + 1):  # Lego: no prefix of children gives it
        try:
            out = lego(model, k)(x)
        except RuntimeError:  # Sequential(..., avgpool, fc): no flatten in between
            continue
        assert out.shape != expected.shape or not torch.equal(out, expected)
    info = timm.create_model("resnet18", pretrained=False, features_only=True).feature_info
    assert info.module_name() == TIMM_STAGES  # timm: stage outputs only
    with pytest.raises(TypeError):
        timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(path,))
    activation = blog_hooks(model, [path])  # hand-written hooks: yes
    model(x)
    assert torch.equal(activation[path], expected)


def test_values_survive_in_place_ops(model: nn.Module, timm_resnet: nn.Module) -> None:
    """``bn1``'s output is what BatchNorm returned, not what ``ReLU(inplace=True)`` made of it."""
    x = x_small()
    _, calls = reference(model, ["bn1"], x)
    pre_relu = calls["bn1"][0]
    assert (pre_relu < 0).any()
    assert torch.equal(FeatureModel(model, ["bn1", "layer1"])(x)["bn1"], pre_relu)  # featwrap
    fx = create_feature_extractor(model, ["bn1", "layer1"])(x)["bn1"]  # FX: post-ReLU
    assert (fx >= 0).all()
    assert not torch.equal(fx, pre_relu)
    assert torch.equal(lego(model, 2)(x), pre_relu)  # Lego: yes (the ReLU never runs)
    assert "bn1" not in [f["module"] for f in timm_resnet.feature_info]  # timm: not reachable
    activation = blog_hooks(model, ["bn1", "layer1"])  # hooks: `.detach()` shares the memory
    model(x)
    assert (activation["bn1"] >= 0).all()
    assert not torch.equal(activation["bn1"], pre_relu)


def test_any_model_including_control_flow() -> None:
    """A model whose forward branches on the data (``if h.sum() > 0``), not in any registry."""
    torch.manual_seed(0)
    net = Conditional()
    x = torch.randn(3, 4)
    expected_out, calls = reference(net, ["stem"], x)
    out = FeatureModel(net, ["stem"])(x)  # featwrap: yes
    assert torch.equal(out["stem"], calls["stem"][0])
    assert torch.equal(out["logits"], expected_out)
    with pytest.raises(torch.fx.proxy.TraceError):  # FX: cannot trace it
        create_feature_extractor(net, ["stem"])
    with pytest.raises(RuntimeError):  # Lego: runs both branches one after the other
        lego(net, 3)(x)
    assert not torch.equal(lego(net, 2)(x), net.neg(net.stem(x)))  # and ignores the `if`
    with pytest.raises(RuntimeError, match="Unknown model"):  # timm: its own registry only
        timm.create_model("conditional", features_only=True)
    assert not hasattr(net, "forward_intermediates")
    activation = blog_hooks(net, ["stem"])  # hooks: yes
    net(x)
    assert torch.equal(activation["stem"], calls["stem"][0])


def test_output_and_features_in_one_forward(model: nn.Module, timm_resnet: nn.Module) -> None:
    """The model's own output and intermediate features from a single forward."""
    x = x_small()
    with torch.no_grad():
        logits = model(x)
        runs, handle = counter(model.conv1)
        out = FeatureModel(model, ["layer2"])(x)  # featwrap: yes
        handle.remove()
        assert runs == [1]
        assert torch.equal(out["logits"], logits)
        fx = create_feature_extractor(model, {"layer2": "layer2", "fc": "logits"})(x)  # FX: yes
        torch.testing.assert_close(fx["logits"], logits)
        assert lego(model, 6)(x).shape == (2, 128, 4, 4)  # Lego: features only, no logits
        features = timm.create_model("resnet18", pretrained=False, features_only=True)
        assert isinstance(features(x), list)  # features_only: features only, the head is gone
        assert not hasattr(features, "fc")
        final, inter = timm_resnet.forward_intermediates(x, indices=[2])  # forward_intermediates:
        torch.testing.assert_close(timm_resnet.forward_head(final), timm_resnet(x))  # + head
        assert inter[0].shape == (2, 128, 4, 4)
        activation = blog_hooks(model, ["layer2"])  # hooks: yes
        assert torch.equal(model(x), logits)
        assert activation["layer2"].shape == (2, 128, 4, 4)


def test_no_stale_values() -> None:
    """A layer that did not run in this call: an error (or no key), never the last call's value."""
    torch.manual_seed(0)
    net = Conditional()
    with torch.no_grad():
        net.stem.bias.fill_(0)
        pos_x, neg_x = torch.ones(1, 4), -torch.ones(1, 4)
        net.stem.weight.copy_(torch.eye(4))  # the sign of x picks the branch
        fm = FeatureModel(net, ["pos"])
        first = fm(pos_x)["pos"]
        with pytest.raises(MissingFeatureError, match="'pos' did not run"):  # featwrap
            fm(neg_x)
        assert "pos" not in FeatureModel(net, ["pos"], missing="skip")(neg_x)
        activation = blog_hooks(net, ["pos"])  # hooks: silently the previous call's value
        net(pos_x)
        net(neg_x)
        assert torch.equal(activation["pos"], first)
    # FX, Lego and timm cannot run this model at all: see test_any_model_including_control_flow


def test_module_called_twice(model: nn.Module) -> None:
    """BasicBlock calls its ``relu`` twice: every call, or the one you choose."""
    path, x = "layer1.0.relu", x_small()
    _, calls = reference(model, [path], x)
    assert len(calls[path]) == 2
    every = FeatureModel(model, [path], repeats="all")(x)[path]  # featwrap: all, first or last
    assert [torch.equal(a, b) for a, b in zip(every, calls[path], strict=True)] == [True, True]
    assert torch.equal(FeatureModel(model, [path], repeats="first")(x)[path], calls[path][0])
    fx = create_feature_extractor(model, [path, path + "_1"])(x)  # FX: one node per call
    assert torch.equal(fx[path], calls[path][0])
    assert torch.equal(fx[path + "_1"], calls[path][1])
    # Lego and timm cannot reach inside a block: see test_any_module_path
    activation = blog_hooks(model, [path])  # hooks: the last call only, silently
    model(x)
    assert torch.equal(activation[path], calls[path][1])
    assert not torch.equal(activation[path], calls[path][0])


def test_features_keep_gradients(model: nn.Module, timm_resnet: nn.Module) -> None:
    """Features can be trained through (a loss on ``layer2`` reaches ``conv1``)."""
    x = x_small()
    model.train()

    def reaches_conv1(feature: torch.Tensor, conv1: nn.Module) -> bool:
        conv1.zero_grad(set_to_none=True)
        feature.square().mean().backward()
        return conv1.weight.grad is not None and bool(conv1.weight.grad.abs().sum() > 0)

    assert reaches_conv1(FeatureModel(model, ["layer2"])(x)["layer2"], model.conv1)  # featwrap
    assert reaches_conv1(create_feature_extractor(model, ["layer2"])(x)["layer2"], model.conv1)
    assert reaches_conv1(lego(model, 6)(x), model.conv1)  # Lego
    inter = timm_resnet.train().forward_intermediates(x, indices=[2], intermediates_only=True)
    assert reaches_conv1(inter[0], timm_resnet.conv1)  # timm
    timm_resnet.eval()
    activation = blog_hooks(model, ["layer2"])  # hooks: `.detach()` cuts the graph
    model(x)
    assert not activation["layer2"].requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        activation["layer2"].square().mean().backward()


def test_stops_after_last_layer(model: nn.Module, timm_resnet: nn.Module) -> None:
    """Asking for ``layer2`` only: ``layer3`` never runs."""
    x = x_small()
    runs, handle = counter(model.layer3[0].conv1)
    FeatureModel(model, ["layer2"], output_key=None)(x)  # featwrap: output_key=None
    create_feature_extractor(model, ["layer2"])(x)  # FX: the graph is pruned
    lego(model, 6)(x)  # Lego: the truncated model ends there
    assert runs == []
    timm_runs, timm_handle = counter(timm_resnet.layer3)
    timm_resnet.forward_intermediates(x, indices=[2], stop_early=True, intermediates_only=True)
    timm_handle.remove()
    assert timm_runs == []  # timm: stop_early=True (and features_only with out_indices)
    activation = blog_hooks(model, ["layer2"])  # hooks: the whole forward runs
    model(x)
    handle.remove()
    assert "layer2" in activation
    assert runs == [1]


def test_deepcopy_and_pickle(model: nn.Module, timm_resnet: nn.Module) -> None:
    """An EMA copy (deepcopy) captures from its own weights; torch.save/pickle work."""
    x = x_small()

    def halve(module: nn.Module) -> nn.Module:
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(0.5)
        return module

    fm = FeatureModel(model, ["layer2"])  # featwrap
    ema = halve(copy.deepcopy(fm))
    assert torch.equal(ema(x)["layer2"], lego(ema.backbone, 6)(x))
    assert torch.equal(fm(x)["layer2"], lego(model, 6)(x))
    assert torch.equal(pickle.loads(pickle.dumps(fm))(x)["layer2"], fm(x)["layer2"])
    fx = create_feature_extractor(model, ["layer2"])  # FX: the copy comes back in train mode
    expected = fx(x)
    copied = copy.deepcopy(fx)
    assert not fx.training
    assert copied.training  # (BatchNorm would use batch statistics and update its own)
    torch.testing.assert_close(copied.eval()(x), expected, rtol=0, atol=0)
    for extractor in (  # FX (pickled), Lego, timm: plain modules
        fx,
        lego(model, 6),
        timm.create_model("resnet18", pretrained=False, features_only=True).eval(),
    ):
        expected = extractor(x)
        if extractor is not fx:
            copied = copy.deepcopy(extractor)
            assert copied.training == extractor.training
            torch.testing.assert_close(copied(x), expected, rtol=0, atol=0)
        buffer = io.BytesIO()
        torch.save(extractor, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert loaded.training == extractor.training
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    activation = blog_hooks(model, ["layer2"])  # hooks: the copy writes into the original's dict
    model(x)
    mine = activation["layer2"]
    ema_model = halve(copy.deepcopy(model))
    ema_model(x)
    assert not torch.equal(activation["layer2"], mine)  # overwritten by the copy's value
    assert torch.equal(activation["layer2"], lego(ema_model, 6)(x))
    with pytest.raises(AttributeError, match="Can't pickle local object"):
        pickle.dumps(model)
    with pytest.raises(AttributeError, match="Can't pickle local object"):
        torch.save(model, io.BytesIO())


def test_threads(model: nn.Module, timm_resnet: nn.Module) -> None:
    """Forwards from several threads at once each get their own values."""
    net = Slow()  # waits at a barrier after its first layer until 4 threads are there
    inputs = [torch.full((1, 4), float(i)) for i in range(4)]
    fm = FeatureModel(net, ["a"])  # featwrap: yes
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(fm, inputs))
    assert all(torch.equal(o["a"], net.a(x)) for o, x in zip(outs, inputs, strict=True))

    net.entered = threading.Barrier(4, timeout=600)  # long: a loaded machine is slow
    activation = blog_hooks(net, ["a"])  # hooks: one dict shared by every thread

    def blog_forward(x: torch.Tensor) -> torch.Tensor:
        net(x)
        return activation["a"]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(blog_forward, inputs))
    wrong = [not torch.equal(g, net.a(x)) for g, x in zip(got, inputs, strict=True)]
    assert sum(wrong) >= 3  # all read the value written last

    x = x_small()  # FX, Lego, timm: pure functions of the input
    for extractor in (
        create_feature_extractor(model, ["layer2"]),
        lego(model, 6),
        lambda t: timm_resnet.forward_intermediates(t, indices=[2], intermediates_only=True),
    ):
        batches = [x + i for i in range(4)]
        with torch.no_grad():
            expected = [extractor(b) for b in batches]
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(extractor, batches))
        torch.testing.assert_close(results, expected, rtol=0, atol=0)


def test_loads_the_models_own_checkpoint(model: nn.Module, timm_resnet: nn.Module) -> None:
    """``state_dict`` keys are the model's own: a checkpoint of the model loads strictly."""
    checkpoint = model.state_dict()
    fm = FeatureModel(model, ["layer2"], output_key=None)  # featwrap: yes
    # the model's own keys; with early stop those of the modules after the stop are left out of
    # the FeatureModel's view (they never take part in a loss), and a full checkpoint still loads
    after = ("layer3.", "layer4.", "fc.")
    assert list(fm.state_dict()) == [k for k in checkpoint if not k.startswith(after)]
    fm.load_state_dict(checkpoint)
    assert list(FeatureModel(model, ["layer2"]).state_dict()) == list(checkpoint)
    fx = create_feature_extractor(model, ["layer2"])  # FX: the pruned layers' keys are gone
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fx.load_state_dict(checkpoint)
    truncated = lego(model, 6)  # Lego: keys renamed by position
    assert "0.weight" in truncated.state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        truncated.load_state_dict(checkpoint)
    features = timm.create_model("resnet18", pretrained=False, features_only=True)
    with pytest.raises(RuntimeError, match=r"Unexpected key.*fc"):  # features_only: head dropped
        features.load_state_dict(timm_resnet.state_dict())
    timm_resnet.load_state_dict(timm_resnet.state_dict())  # forward_intermediates: same model
    blog_hooks(model, ["layer2"])  # hooks: the model itself
    model.load_state_dict(checkpoint)


def test_leaves_no_hooks(model: nn.Module) -> None:
    """After use, the model has no hook left and holds no activation."""

    def hooks(m: nn.Module) -> int:
        return sum(len(sub._forward_hooks) + len(sub._forward_pre_hooks) for sub in m.modules())

    x = x_small()
    with FeatureModel(model, ["layer1", "layer2"]) as fm:  # featwrap: remove_hooks() or `with`
        fm(x)
        assert hooks(model) > 0
    assert hooks(model) == 0
    create_feature_extractor(model, ["layer2"])(x)  # FX, Lego: no hooks at all
    lego(model, 6)(x)
    timm.create_model("resnet18", pretrained=False, features_only=True)(x)  # timm: neither
    assert hooks(model) == 0
    activation = blog_hooks(model, ["layer2"])  # hooks: the handles were never kept
    model(x)
    del activation  # "done" with the features: the hook stays, and keeps the dict alive
    assert hooks(model) == 1
    hook = next(iter(model.layer2._forward_hooks.values()))
    kept = [c.cell_contents for c in hook.__closure__ if isinstance(c.cell_contents, dict)]
    assert kept[0]["layer2"].shape == (2, 128, 4, 4)  # the dict, alive through the closure


# -- the table and the tests agree -----------------------------------------------------------------
def test_every_row_of_the_docs_table_is_a_test() -> None:
    text = DOCS.read_text()
    named = re.findall(r"^`(test_\w+)`:", text, re.MULTILINE)  # each note names its test
    tests = sorted(
        n
        for n in globals()
        if n.startswith("test_") and n != "test_every_row_of_the_docs_table_is_a_test"
    )
    assert sorted(named) == tests

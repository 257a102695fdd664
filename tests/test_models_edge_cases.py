"""Models FX cannot trace, keyword-only inputs, structured outputs, checkpointing, failures."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from featwrap import BackboneError, FeatureModel, FeatwrapError
from tests.models import Checkpointed, Failing, KwargsOnly, Loop, Structured
from tests.reference import assert_same, reference


def test_untraceable_control_flow() -> None:
    model = Loop()
    with pytest.raises(Exception):  # noqa: B017, PT011 - FX cannot trace `int(tensor)`
        create_feature_extractor(model, ["head"])
    fm = FeatureModel(model, ["block", "block.0", "head"], repeats="all")
    for scale in (0.1, 0.3, 1.0):
        x = torch.full((1, 4), scale)
        out = fm(x)
        _, calls = reference(model, ["block", "block.0", "head"], x)
        steps = int(x.abs().sum().item()) % 3 + 1
        assert len(out["block"]) == steps
        for k in ["block", "block.0", "head"]:
            assert_same(out[k], calls[k])


def test_kwargs_only_inputs_and_dict_output() -> None:
    model = KwargsOnly()
    image, text = torch.randn(2, 4), torch.randn(2, 3)
    fm = FeatureModel(model, ["img", "fuse"], output_key="out")
    out = fm(image=image, text=text, scale=2.0)
    expected, calls = reference(model, ["img", "fuse"], image=image, text=text, scale=2.0)
    assert_same(out["out"], expected)  # the backbone's own dict, untouched
    assert_same(out["fuse"], calls["fuse"][0])
    assert_same(out["img"], calls["img"][-1])  # img runs twice: the last call by default


def test_structured_outputs_detached() -> None:
    model = Structured()
    layers = ["tup", "dic", "named", "dc"]
    fm = FeatureModel(model, layers, detach=True)
    x = torch.randn(2, 4)
    for _ in range(2):
        out = fm(x)
        _, calls = reference(model, layers, x)
        for k in layers:
            assert_same(out[k], calls[k][0])
        assert not out["tup"][0].requires_grad
        assert not out["dc"].extra[0].requires_grad
        assert type(out["named"]).__name__ == "Pair"


@pytest.mark.filterwarnings("ignore::featwrap.CheckpointWarning")  # tests/test_gradients_inplace
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing(use_reentrant: bool) -> None:
    model = Checkpointed(use_reentrant)
    layers = ["stem", "block.0", "block", "head"]
    x = torch.randn(3, 4, requires_grad=True)
    with reference_grads(model, layers, x) as (_expected_out, calls, expected_grads):
        pass
    fm = FeatureModel(model, layers)
    for _ in range(2):
        out = fm(x)
        for k in layers:
            assert_same(out[k], calls[k][0])
        loss = sum(out[k].square().sum() for k in layers)
        loss.backward()  # recomputation re-runs the block: its hooks must stay inert
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected_grads[name])
        model.zero_grad(set_to_none=True)
        x.grad = None
        for k in layers:  # and the returned values were not touched by the recomputation
            assert_same(out[k], calls[k][0])


class reference_grads:
    def __init__(self, model: nn.Module, layers: list[str], x: torch.Tensor) -> None:
        self.model, self.layers, self.x = model, layers, x

    def __enter__(self):  # type: ignore[no-untyped-def]
        out, calls = reference(self.model, self.layers, self.x)
        loss = sum(calls[k][0].square().sum() for k in self.layers)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in self.model.named_parameters()}
        self.model.zero_grad(set_to_none=True)
        self.x.grad = None
        return out, calls, grads

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize(
    "error",
    [ValueError("bad shape"), RuntimeError("mat1 and mat2"), KeyError("missing"), IndexError("i")],
)
def test_backbone_failure_reraised_with_fired_layers(error: Exception) -> None:
    fm = FeatureModel(Failing(error), ["a", "b"])
    with pytest.raises(type(error)) as info:
        fm(torch.randn(1, 4))
    raised = info.value
    assert isinstance(raised, BackboneError)
    assert isinstance(raised, FeatwrapError)
    assert raised.__cause__ is error
    assert raised.original is error
    assert raised.fired == ("a",)
    message = str(raised)
    assert str(error) in message
    assert "fired before the error: 'a'" in message
    assert "'b'" in message
    assert fm._recorder._local.session is None  # and the next call works as usual
    copy = pickle.loads(pickle.dumps(raised))
    assert type(copy) is type(raised)


def test_user_facing_error_for_a_shape_mismatch() -> None:
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.eval().fc = nn.Linear(100, 10)  # a head that does not fit: fails after layer4 ran
    fm = FeatureModel(model, ["layer1", "layer4", "fc"])
    with pytest.raises(RuntimeError, match="mat1 and mat2") as info:
        fm(torch.randn(1, 3, 32, 32))
    assert "fired before the error: 'layer1', 'layer4'; not reached: 'fc'" in str(info.value)
    with pytest.raises(RuntimeError, match="fired before the error: none; not reached: 'layer1'"):
        fm(torch.randn(1, 4, 32, 32))  # four channels: conv1 fails first

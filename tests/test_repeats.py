"""A module called several times in one forward."""

from __future__ import annotations

import pytest
import torch

from featwrap import FeatureModel, RepeatedCallError
from tests.models import ReuseReLU
from tests.reference import assert_same, reference


def test_basicblock_relu_runs_twice(resnet18) -> None:
    x = torch.randn(1, 3, 32, 32)
    path = "layer1.0.relu"
    _, calls = reference(resnet18, [path], x)
    assert len(calls[path]) == 2
    out_all = FeatureModel(resnet18, [path], repeats="all")(x)[path]
    assert isinstance(out_all, list)
    assert len(out_all) == 2
    for got, want in zip(out_all, calls[path], strict=True):
        assert_same(got, want)
    assert_same(FeatureModel(resnet18, path)(x)[path], calls[path][1])  # "last" is the default
    assert_same(FeatureModel(resnet18, path, repeats="first")(x)[path], calls[path][0])
    with pytest.raises(RepeatedCallError, match=r"'layer1.0.relu' ran 2 times in one forward"):
        FeatureModel(resnet18, path, repeats="error")(x)


@pytest.mark.parametrize("repeats", ["last", "first", "all"])
def test_reused_relu_three_calls(repeats: str) -> None:
    model = ReuseReLU()
    fm = FeatureModel(model, ["relu", "fc2"], repeats=repeats)
    for _ in range(3):
        x = torch.randn(5, 4)
        out = fm(x)
        _, calls = reference(model, ["relu", "fc2"], x)
        want = {"last": calls["relu"][-1], "first": calls["relu"][0], "all": calls["relu"]}[repeats]
        assert_same(out["relu"], want)
        expected_fc2 = calls["fc2"] if repeats == "all" else calls["fc2"][0]
        assert_same(out["fc2"], expected_fc2)


def test_repeats_error_for_a_layer_run_once_is_fine() -> None:
    model = ReuseReLU()
    out = FeatureModel(model, ["fc1", "fc2"], repeats="error")(torch.randn(2, 4))
    assert set(out) == {"logits", "fc1", "fc2"}

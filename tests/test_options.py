"""Options: string enums that accept their plain strings, parsed in one place, with the choices
and a close match in the error; each member behaves as its string."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import featwrap
from featwrap import FeatureModel, FeatwrapValueError, Missing, OnError, Pooling, Repeats
from tests.models import ReuseReLU
from tests.reference import reference


@pytest.mark.parametrize("option", [Repeats, Missing, Pooling, OnError])
def test_each_option_takes_its_member_or_its_string(option: type[featwrap.Repeats]) -> None:
    for member in option:
        assert option.parse(member.value, "x") is member
        assert option.parse(member, "x") is member
        assert member == member.value
        assert str(member) == member.value
        assert f"{member}" == member.value


def test_a_bad_option_names_the_choices_and_a_close_match() -> None:
    with pytest.raises(FeatwrapValueError) as info:
        Repeats.parse("lats", "repeats")
    assert str(info.value) == (
        "repeats='lats' is not one of 'last', 'first', 'all', 'error'. Did you mean 'last'?"
    )
    assert isinstance(info.value, ValueError)
    with pytest.raises(FeatwrapValueError, match=r"on_error=3 is not one of 'fail', 'skip'\.$"):
        OnError.parse(3, "on_error")


def test_feature_model_takes_the_members() -> None:
    """repeats=Repeats.ALL and missing=Missing.NONE behave as their strings, checked against
    independent cloning hooks."""
    model = ReuseReLU().eval()
    x = torch.randn(2, 4)
    _, calls = reference(model, ["relu"], x)
    out = FeatureModel(model, ["relu"], repeats=Repeats.ALL)(x)
    assert len(out["relu"]) == len(calls["relu"]) >= 2
    for got, want in zip(out["relu"], calls["relu"], strict=True):
        assert torch.equal(got, want)
    fm = FeatureModel(nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2)), ["1"], missing=Missing.NONE)
    assert fm.missing == "none"
    assert fm.repeats == "last"


def test_extract_takes_the_members() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    data = TensorDataset(torch.randn(5, 3, 8, 8))
    got = featwrap.extract(
        model, data, ["1"], pool=Pooling.AVG, on_error=OnError.SKIP, progress=False
    )
    _, calls = reference(model, ["1"], data.tensors[0])
    assert torch.allclose(got["1"], calls["1"][-1].mean(dim=(2, 3)), atol=1e-6)

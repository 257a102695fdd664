"""A requested layer that does not run: never a stale value from an earlier call."""

from __future__ import annotations

import pytest
import torch

from featwrap import FeatureModel, MissingFeatureError
from tests.models import Conditional

POS = torch.ones(1, 4) * 5
NEG = -torch.ones(1, 4) * 5


def branch_inputs(model: Conditional) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        model.stem.weight.copy_(torch.eye(4))
        model.stem.bias.zero_()
    return POS, NEG


def test_missing_error_names_the_layer() -> None:
    model = Conditional()
    pos, _neg = branch_inputs(model)
    fm = FeatureModel(model, ["pos", "neg"])
    with pytest.raises(MissingFeatureError, match="Layer 'neg' did not run") as info:
        fm(pos)
    assert "missing='skip'" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_no_stale_value_from_an_earlier_call() -> None:
    model = Conditional()
    pos, neg = branch_inputs(model)
    fm = FeatureModel(model, ["pos"], missing="skip")
    first = fm(pos)
    assert torch.equal(first["pos"], model.pos(model.stem(pos)))
    second = fm(neg)
    assert "pos" not in second  # not the value from the first call
    fm_err = FeatureModel(model, ["pos"])
    fm_err(pos)
    with pytest.raises(MissingFeatureError):
        fm_err(neg)


def test_missing_none() -> None:
    model = Conditional()
    _pos, neg = branch_inputs(model)
    out = FeatureModel(model, ["stem", "pos", "neg"], missing="none")(neg)
    assert out["pos"] is None
    assert list(out) == ["logits", "stem", "pos", "neg"]
    assert torch.equal(out["neg"], out["logits"])

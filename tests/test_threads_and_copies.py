"""Threads, deepcopy (EMA), pickling with torch.save."""

from __future__ import annotations

import copy
import io
import pickle
from concurrent.futures import ThreadPoolExecutor

import torch

from featwrap import FeatureModel
from tests.models import Slow


def test_simultaneous_forwards_from_threads() -> None:
    model = Slow()
    fm = FeatureModel(model, ["a", "b"])
    inputs = [torch.full((1, 4), float(i)) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(fm, inputs))
    for x, out in zip(inputs, outs, strict=True):
        assert torch.equal(out["a"], model.a(x))
        assert torch.equal(out["b"], model.b(model.a(x)))
        assert torch.equal(out["logits"], out["b"])


def test_threads_with_early_stop() -> None:
    model = Slow()
    fm = FeatureModel(model, ["a"], output_key=None)
    model.entered = type(model.entered)(1)  # no waiting: the forward stops before it
    inputs = [torch.full((1, 4), float(i)) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(fm, inputs))
    for x, out in zip(inputs, outs, strict=True):
        assert torch.equal(out["a"], model.a(x))


def test_deepcopy_captures_from_its_own_backbone(resnet18) -> None:
    fm = FeatureModel(resnet18, ["layer1", "bn1"])
    x = torch.randn(1, 3, 32, 32)
    before = fm(x)
    ema = copy.deepcopy(fm)
    assert ema.backbone is not resnet18
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    out_copy, out_orig = ema(x), fm(x)
    assert torch.equal(out_orig["layer1"], before["layer1"])
    assert not torch.equal(out_copy["layer1"], out_orig["layer1"])
    with torch.no_grad():
        assert torch.equal(
            out_copy["layer1"],
            ema.backbone.layer1(
                ema.backbone.maxpool(ema.backbone.relu(ema.backbone.bn1(ema.backbone.conv1(x))))
            ),
        )
    ema.remove_hooks()  # removes the copy's hooks only
    assert list(fm(x)) == ["logits", "layer1", "bn1"]
    fm.remove_hooks()


def test_torch_save_and_load(resnet18) -> None:
    fm = FeatureModel(resnet18, {"layer3.0.downsample.1": "d", "bn1": "b"}, repeats="first")
    x = torch.randn(1, 3, 32, 32)
    expected = fm(x)
    buffer = io.BytesIO()
    torch.save(fm, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    out = loaded(x)
    assert list(out) == list(expected)
    assert loaded.repeats == "first"
    for k in expected:
        assert torch.equal(out[k], expected[k])
    clone = pickle.loads(pickle.dumps(fm))
    assert torch.equal(clone(x)["d"], expected["d"])
    fm.remove_hooks()

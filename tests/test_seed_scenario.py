"""The seed document's scenario: resnet18, maxpool + layer3.0.downsample.1 + avgpool + logits."""

from __future__ import annotations

import torch
from torchvision.models.feature_extraction import create_feature_extractor

from featwrap import FeatureModel
from tests.reference import assert_same, reference

LAYERS = ["maxpool", "layer3.0.downsample.1", "avgpool"]


def test_keys_in_order_and_values_equal_reference(resnet18) -> None:
    x = torch.randn(2, 3, 64, 64)
    expected_out, calls = reference(resnet18, LAYERS, x)
    fm = FeatureModel(resnet18, LAYERS)
    for _ in range(3):  # repeated calls: no state carried over
        out = fm(x)
        assert list(out) == ["logits", *LAYERS]
        assert torch.equal(out["logits"], expected_out)
        for path in LAYERS:
            assert_same(out[path], calls[path][-1])
    fm.remove_hooks()


def test_new_input_new_values(resnet18) -> None:
    fm = FeatureModel(resnet18, LAYERS)
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    out_a = fm(a)
    out_b = fm(b)
    _, calls_b = reference(resnet18, LAYERS, b)
    for path in LAYERS:
        assert_same(out_b[path], calls_b[path][-1])
        assert not torch.equal(out_a[path], out_b[path])


def test_bn1_is_pre_relu_where_create_feature_extractor_is_not(resnet18) -> None:
    """FX returns bn1 after the in-place ReLU when a later node is requested; featwrap does not."""
    x = torch.randn(2, 3, 64, 64)
    _, calls = reference(resnet18, ["bn1"], x)
    pre_relu = calls["bn1"][0]
    assert (pre_relu < 0).any()  # a BatchNorm output has negative values

    fx = create_feature_extractor(resnet18, {"bn1": "bn1", "layer1": "layer1"})
    assert not torch.equal(fx(x)["bn1"], pre_relu)  # FX: clobbered by the in-place ReLU
    assert (fx(x)["bn1"] >= 0).all()

    fm = FeatureModel(resnet18, ["bn1", "layer1"])
    for _ in range(3):
        assert torch.equal(fm(x)["bn1"], pre_relu)


def test_equal_to_create_feature_extractor_where_it_is_right(resnet18) -> None:
    nodes = ["maxpool", "layer1", "layer2.1.bn2", "layer3.0.downsample.1", "layer4", "avgpool"]
    x = torch.randn(2, 3, 64, 64)
    fx_out = create_feature_extractor(resnet18, {n: n for n in nodes})(x)
    fm_out = FeatureModel(resnet18, nodes, output_key=None)(x)
    # layer2.1.bn2 is modified in place by `out += identity` in eager mode; FX traces `+=` as an
    # out-of-place add, so both are right. Check featwrap against the reference too.
    _, calls = reference(resnet18, ["layer2.1.bn2"], x)
    assert torch.equal(fm_out["layer2.1.bn2"], calls["layer2.1.bn2"][0])
    for n in nodes:
        assert torch.equal(fm_out[n], fx_out[n]), n

"""Features keep their autograd graph (or not, with detach=True)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from featwrap import FeatureModel
from tests.models import InplaceChain
from tests.reference import recording


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def feature_loss(features: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return sum((features[k].float().square().mean() for k in keys), torch.tensor(0.0))


def test_gradient_parity_with_reference(resnet18) -> None:
    model = copy.deepcopy(resnet18).train()
    keys = ["bn1", "layer1", "layer3.0.downsample.1", "avgpool"]
    x = torch.randn(2, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())

    with recording(model, keys) as calls:  # reference: clone (differentiably) at capture
        out = model(x)
    ref_loss = feature_loss({k: v[0] for k, v in calls.items()}, keys) + out.mean()
    ref_loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)

    fm = FeatureModel(model, keys)
    for _ in range(2):  # repeated calls: no state carried over
        feats = fm(x)
        loss = feature_loss(feats, keys) + feats["logits"].mean()
        loss.backward()
        torch.testing.assert_close(loss, ref_loss)
        got = grads(model)
        assert got.keys() == expected.keys()
        for name in expected:  # summation order may differ with the graph: relative tolerance
            scale = expected[name].abs().max().item()
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6 * scale)
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)


def test_inplace_chain_gradients() -> None:
    model = InplaceChain().train()
    keys = ["bn", "act", "conv2"]
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    state = copy.deepcopy(model.state_dict())
    with recording(model, keys) as calls:
        model(x)
    feature_loss({k: v[0] for k, v in calls.items()}, keys).backward()
    expected, expected_x = grads(model), x.grad.clone()
    x.grad = None
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    fm = FeatureModel(model, keys)
    for _ in range(2):
        feature_loss(fm(x), keys).backward()
        for name, g in expected.items():
            torch.testing.assert_close(grads(model)[name], g)
        torch.testing.assert_close(x.grad, expected_x)
        x.grad = None
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)


def test_detach() -> None:
    model = InplaceChain()
    x = torch.randn(2, 3, 8, 8)
    fm = FeatureModel(model, ["bn", "conv2", "pool"], detach=True)
    for _ in range(2):
        out = fm(x)
        assert all(not out[k].requires_grad for k in ["bn", "conv2", "pool"])
        assert out["logits"].requires_grad  # the backbone's own output is untouched
    attached = FeatureModel(model, ["bn", "conv2", "pool"])(x)
    assert all(attached[k].requires_grad for k in ["bn", "conv2", "pool"])
    for k in ["bn", "conv2", "pool"]:
        assert torch.equal(out[k], attached[k])


def test_training_a_head_on_features(resnet18) -> None:
    """FeatureModel drops into a training graph: a head on two scales, loss goes down."""
    backbone = copy.deepcopy(resnet18).train()
    fm = FeatureModel(backbone, {"layer2": "c3", "layer3": "c4"}, output_key=None)
    head = nn.Linear(128 + 256, 3)
    opt = torch.optim.SGD([*fm.parameters(), *head.parameters()], lr=0.05)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    losses = []
    for _ in range(8):
        f = fm(x)
        z = torch.cat([f["c3"].mean((2, 3)), f["c4"].mean((2, 3))], 1)
        loss = nn.functional.cross_entropy(head(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert backbone.conv1.weight.grad is not None
    assert losses[-1] < losses[0]

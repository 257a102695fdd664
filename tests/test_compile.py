"""torch.compile(fm, fullgraph=True): no graph break, same values as eager; with grad, a clear
warning that a compiled graph gives no gradient *at* a feature, and exact gradients eagerly."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from featwrap import FeatureModel, GradientWarning
from tests.models import InplaceChain
from tests.reference import reference, reference_grads


class Net(nn.Module):
    """In-place ops after requested layers, a module called twice, a residual `+=`."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = InplaceChain()
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.chain(x)
        h = self.relu(self.fc(h))
        h2 = self.fc(h)
        h2 += h
        return self.out(self.relu(h2))


@pytest.mark.slow
def test_compile_fullgraph_matches_eager_and_reference() -> None:
    torch._dynamo.reset()
    model = Net().eval()
    layers = ["chain.bn", "chain.act", "chain.conv2", "fc", "relu"]
    fm = FeatureModel(model, layers, repeats="all")
    compiled = torch.compile(fm, fullgraph=True)  # fullgraph: any graph break raises
    for _ in range(2):
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            got = compiled(x)
            eager = fm(x)
            expected, calls = reference(model, layers, x)
        assert list(got) == ["logits", *layers]
        torch.testing.assert_close(got["logits"], expected)
        for k in layers:
            assert len(got[k]) == len(calls[k]) == len(eager[k])
            for g, e, c in zip(got[k], eager[k], calls[k], strict=True):
                torch.testing.assert_close(g, c)
                torch.testing.assert_close(e, c, rtol=0, atol=0)
    assert fm._recorder.traced is None  # nothing left behind by tracing


@pytest.mark.slow
def test_compile_early_stop_and_training_step() -> None:
    torch._dynamo.reset()
    model = Net().train()
    fm = FeatureModel(model, {"chain.conv2": "c", "fc": "f"}, output_key=None)
    compiled = torch.compile(fm, fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 8, 8)
    losses = []
    for _ in range(4):
        out = compiled(x)
        assert list(out) == ["c", "f"]
        loss = out["c"].square().mean() + out["f"].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.chain.conv.weight.grad is not None
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_compiled_gradients_at_features_warn_once_and_eager_is_exact() -> None:
    """Under torch.compile with grad, a feature is an output of the compiled graph, not a node on
    the path to the logits: featwrap warns once per layer, naming the layers and the way out,
    and that way out (the same compiled model run eagerly) gives the gradients of a copy of the
    model with every in-place op switched off."""
    torch._dynamo.reset()
    model = Net().eval()
    keys = ["chain.bn", "chain.act", "fc"]  # each modified in place later; fc is called twice
    x = torch.randn(2, 3, 8, 8)
    values, grads, writes = reference_grads(model, keys, x, lambda logits: logits[0, 1])
    assert writes == []
    fm = FeatureModel(model, keys)
    compiled = torch.compile(fm, backend="aot_eager", fullgraph=True)
    with pytest.warns(GradientWarning, match=r"'chain\.bn', 'chain\.act', 'fc'.*force_eager"):
        out = compiled(x)
    for key in keys:
        torch.testing.assert_close(out[key], values[key])
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(out["logits"][0, 1], out["fc"])  # what the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer
        compiled(x)
        with torch.no_grad():  # traced again, without a graph: nothing to warn about
            compiled(x)
        with torch.compiler.set_stance("force_eager"):  # the way out the warning names
            out = compiled(x)
    got = torch.autograd.grad(out["logits"][0, 1], [out[k] for k in keys])
    for key, g in zip(keys, got, strict=True):
        assert torch.equal(out[key], values[key]), key
        torch.testing.assert_close(g, grads[key], msg=key)

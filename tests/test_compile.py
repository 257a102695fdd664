"""torch.compile(fm, fullgraph=True): no graph break, same values as eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featwrap import FeatureModel
from tests.models import InplaceChain
from tests.reference import reference


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

"""torch.export.export(fm, (x,)): one output per feature, named by the pytree spec, equal to eager.

Under export (strict: dynamo; non-strict: Python tracing) ``torch.compiler.is_compiling()`` is
true, so FeatureModel takes its traced path, which copies every captured value: the exported
graph returns values as the modules returned them, in-place ops after them notwithstanding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from featwrap import Capture, FeatureModel
from tests.models import InplaceChain
from tests.reference import reference


class Net(nn.Module):
    """In-place ops after captured layers, a module called twice, an attention tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = InplaceChain()
        self.fc = nn.Linear(4, 8)
        self.relu = nn.ReLU(inplace=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc(self.chain(x)))  # (B, 8)
        h2 = self.fc.weight.new_zeros(1) + h  # a new tensor, then modified in place below
        h2 += h
        seq = self.relu(h2).unsqueeze(1).expand(-1, 3, -1).contiguous()
        a, _ = self.attn(seq, seq, seq)
        return self.out(a.mean(1))


LAYERS = [
    "chain.bn",  # modified later by the in-place ReLU
    "chain.act",
    "fc:input",
    "relu",
    Capture("attn", key="attn_out", select=0),
    Capture("attn", key="attn_weights", select=1),
    "out:input",
]


def _check(fm: FeatureModel, program: torch.export.ExportedProgram, x: torch.Tensor) -> None:
    exported = program.module()(x)
    eager = fm(x)
    assert list(exported) == list(eager)  # the same names, in the same order
    for key in eager:
        flat_e, _ = tree_flatten(eager[key])
        flat_x, _ = tree_flatten(exported[key])
        assert len(flat_e) == len(flat_x), key
        for e, got in zip(flat_e, flat_x, strict=True):
            torch.testing.assert_close(got, e, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("strict", [False, True])
def test_export_matches_eager_and_reference(strict: bool) -> None:
    model = Net().eval()
    fm = FeatureModel(model, LAYERS)
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(fm, (x,), strict=strict)
    keys = list(fm(x))
    # one graph output per returned tensor, and the output spec keeps the feature names
    assert program.call_spec.out_spec is not None
    assert program.call_spec.out_spec.context == keys
    assert len(program.graph_signature.user_outputs) == len(keys)
    for _ in range(2):  # new values, not constants baked in at export
        x = torch.randn(2, 3, 8, 8)
        _check(fm, program, x)
        expected, calls = reference(model, ["chain.bn", "relu", "attn"], x)
        got = program.module()(x)
        torch.testing.assert_close(got["logits"], expected)
        torch.testing.assert_close(got["chain.bn"], calls["chain.bn"][0])
        assert (got["chain.bn"] < 0).any()  # pre-ReLU, as the module returned it
        torch.testing.assert_close(got["relu"], calls["relu"][-1])
        torch.testing.assert_close(got["attn_weights"], calls["attn"][0][1])
    assert fm._recorder.traced is None  # nothing left behind by tracing


def test_export_resnet_stages_dynamic_batch(resnet18) -> None:
    from featwrap import stages

    fm = FeatureModel(resnet18, stages(resnet18), output_key=None)
    x = torch.randn(2, 3, 64, 64)
    batch = torch.export.Dim("batch", min=1, max=16)
    # forward(*args): the dynamic shapes of the first positional argument sit in a tuple
    program = torch.export.export(fm, (x,), dynamic_shapes=(({0: batch},),))
    _check(fm, program, torch.randn(5, 3, 64, 64))
    assert list(program.module()(x)) == ["relu", "layer1", "layer2", "layer3", "layer4"]


def test_export_repeats_all_and_early_stop() -> None:
    model = Net().eval()
    fm = FeatureModel(model, {"relu": "r", "fc:input": "f"}, repeats="all", output_key=None)
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(fm, (x,))
    out = program.module()(x)
    assert list(out) == ["r", "f"]
    # relu runs twice: a module without weights at the root may run again at any point, so its
    # value is final only when the forward returns; the exported program has both calls too
    assert len(out["r"]) == len(fm(x)["r"]) == 2
    _check(fm, program, x)
    # with repeats="first" the eager forward stops at relu's first call: the program agrees
    first = FeatureModel(model, {"relu": "r", "fc:input": "f"}, repeats="first", output_key=None)
    _check(first, torch.export.export(first, (x,)), x)
    everything = FeatureModel(model, {"relu": "r"}, repeats="all")
    assert len(torch.export.export(everything, (x,)).module()(x)["r"]) == 2

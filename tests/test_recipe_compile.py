"""Recipe: torch.compile of a FeatureModel in a training step (examples/compile_training.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from featwrap import FeatureModel
from tests.examples import load_example
from tests.reference import reference

recipe = load_example("compile_training")


@pytest.mark.slow
def test_compiled_training_matches_eager_and_reference() -> None:
    """One compile (~30 s on a CPU): the first step against eager and reference hooks, then the
    loss goes down over the following steps."""
    torch._dynamo.reset()
    net = recipe.SmallNet().train()
    twin = copy.deepcopy(net)  # eager FeatureModel, same weights
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    paths = list(recipe.LAYERS)
    _, calls = reference(copy.deepcopy(net), paths, images)  # train mode: batch statistics

    model = FeatureModel(net, recipe.LAYERS)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(images)
    assert list(out) == ["logits", "bn", "block1"]
    for path, key in recipe.LAYERS.items():
        torch.testing.assert_close(out[key], calls[path][0])
    assert (out["bn"] < 0).any()  # bn's output before `out += x` and the in-place ReLU

    eager = FeatureModel(twin, recipe.LAYERS)
    opt_c = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    loss_c = recipe.train_step(compiled, opt_c, images, labels)
    loss_e = recipe.train_step(eager, opt_e, images, labels)
    assert loss_c == pytest.approx(loss_e, rel=1e-5)
    for (name, p), q in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)

    losses = [loss_c] + [recipe.train_step(compiled, opt_c, images, labels) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert model._recorder.traced is None  # nothing left behind by tracing

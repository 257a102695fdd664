"""Recipe: perceptual loss with a frozen VGG16 FeatureModel (examples/perceptual_loss.py)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from tests.examples import load_example
from tests.reference import reference

recipe = load_example("perceptual_loss")


def test_loss_equals_reference_hooks() -> None:
    """The loss is the MSE of the VGG activations that cloning reference hooks see."""
    loss_fn = recipe.PerceptualLoss()
    image, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    vgg, paths = loss_fn.vgg.backbone, list(recipe.VGG16_LAYERS)
    normalize = lambda t: (t - loss_fn.mean) / loss_fn.std  # noqa: E731
    with torch.no_grad():
        _, got = reference(vgg, paths, normalize(image))
        _, wanted = reference(vgg, paths, normalize(target))
        expected = sum(F.mse_loss(got[p][0], wanted[p][0]) for p in paths)
        for _ in range(2):  # the first (probing) call and a later one
            torch.testing.assert_close(loss_fn(image, target), expected)


def test_gradients_reach_the_generator_not_the_frozen_vgg() -> None:
    loss_fn = recipe.PerceptualLoss()
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    generator = recipe.Generator()
    later = loss_fn.vgg.backbone[23]  # the max-pool after relu4_3: must never run
    calls = []
    handle = later.register_forward_pre_hook(lambda *_: calls.append(1))
    clean = torch.rand(2, 3, 32, 32)
    noisy = (clean + 0.2 * torch.randn_like(clean)).clamp(0, 1)
    try:
        losses = recipe.train(generator, loss_fn, noisy, clean, steps=4)
    finally:
        handle.remove()
    assert losses[-1] < losses[0]
    for name, p in generator.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    for name, p in loss_fn.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name
    after = loss_fn.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(m.training for m in loss_fn.vgg.modules())  # frozen VGG stays in eval mode
    assert generator.training
    assert calls == []  # output_key=None: VGG stopped after relu4_3


def test_main_runs_and_the_loss_decreases() -> None:
    losses = recipe.main(steps=3, image_size=32, batch_size=2)
    assert len(losses) == 3
    assert losses[-1] < losses[0]

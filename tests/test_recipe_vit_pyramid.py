"""Recipe: a ViT's last block as a map -> simple feature pyramid -> segmentation head
(examples/vit_pyramid.py)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from tests.examples import load_example

recipe = load_example("vit_pyramid")


def small_vit(**kwargs: object) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3, **kwargs
    )


def test_trains_and_the_loss_decreases() -> None:
    backbone = small_vit()
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    losses = recipe.train(backbone, steps=6, image_size=64, batch=2)
    assert len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    # the gradient reached every block through the captured map; the final norm and the
    # classifier, which the early-stopping forward never runs, did not change
    changed = {n for n, p in backbone.named_parameters() if not torch.equal(before[n], p)}
    assert {n for n in before if n.startswith("blocks.")} <= changed
    assert not {n for n in changed if n.startswith(("norm.", "head."))}


def test_the_pyramid_gets_timms_map_of_the_last_block() -> None:
    """The pyramid's input equals timm's forward_intermediates(NCHW) of the last block (class and
    register tokens split off); its levels are at strides 4, 8, 16 and 32."""
    torch.manual_seed(0)
    backbone = small_vit(reg_tokens=2).eval()
    model = recipe.ViTSegmenter(backbone, num_classes=3, image_size=64).eval()
    seen: list[torch.Tensor] = []
    levels: list[dict[str, torch.Tensor]] = []
    model.pyramid.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.pyramid.register_forward_hook(lambda _m, _a, out: levels.append(out))
    norm_calls: list[int] = []
    backbone.norm.register_forward_pre_hook(lambda *_: norm_calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert norm_calls == []  # output_key=None: the forward stopped after the last block
        (want,) = backbone.forward_intermediates(
            x, indices=[2], output_fmt="NCHW", intermediates_only=True
        )
    assert out.shape == (2, 3, 64, 64)
    assert torch.equal(seen[0], want)
    assert seen[0].shape == (2, 192, 4, 4)
    assert [64 // v.shape[-1] for v in levels[0].values()] == [4, 8, 16, 32]

"""Model-zoo helpers: building registry models small, picking layers, comparing to the reference."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from featwrap import FeatureModel, list_layers
from tests.reference import assert_same, reference

# torchvision models that need more than the default small input, or a size argument
TV_KWARGS: dict[str, dict[str, Any]] = {
    "vit_b_16": {"image_size": 32},
    "vit_b_32": {"image_size": 32},
    "vit_l_16": {"image_size": 32},
    "vit_l_32": {"image_size": 32},
    "vit_h_14": {"image_size": 28},
}
TV_SIZE: dict[str, int] = {
    "inception_v3": 75,
    "maxvit_t": 224,
    "vit_b_16": 32,
    "vit_b_32": 32,
    "vit_l_16": 32,
    "vit_l_32": 32,
    "vit_h_14": 28,
}


def sample_layers(model: nn.Module, n: int = 14) -> list[str]:
    """Layers spread over the whole model, plus the first few (where in-place activations are)."""
    paths = list_layers(model)
    step = max(1, len(paths) // n)
    picked = paths[:4] + paths[4::step] + paths[-2:]
    return list(dict.fromkeys(picked))


def check_against_reference(model: nn.Module, x: torch.Tensor, layers: list[str]) -> None:
    """featwrap (repeats='all') equals the cloning reference hooks for every call of every layer,
    on two successive calls, and the default repeats='last' agrees."""
    model.eval()
    with torch.no_grad():
        fm_all = FeatureModel(model, layers, repeats="all", missing="skip")
        fm_last = FeatureModel(model, layers, missing="skip")
        expected_out, calls = reference(model, layers, x)
        for _ in range(2):
            out = fm_all(x)
            assert_same(out["logits"], expected_out)
            for path in layers:
                if not calls[path]:
                    assert path not in out, path
                    continue
                assert len(out[path]) == len(calls[path]), path
                for got, want in zip(out[path], calls[path], strict=True):
                    assert_same(got, want)
            last = fm_last(x)
            for path in layers:
                if calls[path]:
                    assert_same(last[path], calls[path][-1])
        fm_all.remove_hooks()
        fm_last.remove_hooks()

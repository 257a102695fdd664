"""The equality checks run before any timing: every method must return what the model computed.

The reference is independent of featwrap: plain forward hooks that clone each requested output the
moment its module returns it, so no later in-place op can change it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["Check", "Status", "compare", "reference_features"]

Status = Literal["equal", "close", "wrong", "failed"]

#: tolerances for "close": different kernels (a traced graph, a compiled one) may round differently
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Check:
    """The verdict on one method's output: ``equal`` (bitwise), ``close``, ``wrong`` or ``failed``."""

    status: Status
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the method's output may be timed (``equal`` or ``close``)."""
        return self.status in ("equal", "close")


def reference_features(
    model: nn.Module, layers: Mapping[str, str], output_key: str, x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` once with cloning hooks; ``{output_key: output, key: clone, ...}``.

    Args:
        model: the backbone (left without hooks afterwards).
        layers: ``{module path: key}``.
        output_key: the key of the model's own output.
        x: the input.
    """
    found: dict[str, torch.Tensor] = {}
    handles = []
    for path, key in layers.items():

        def hook(module: nn.Module, args: Any, output: Any, key: str = key) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"bench reference: {key!r} returned {type(output).__name__}")
            found[key] = output.detach().clone()

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    result = {output_key: output.detach().clone()}
    for key in layers.values():
        result[key] = found[key]
    return result


def compare(
    expected: Mapping[str, torch.Tensor],
    got: Mapping[str, Any],
    keys: Sequence[str],
    view: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Check:
    """Compare a method's features with the reference, key by key.

    Args:
        expected: the reference, ``{key: tensor}``.
        got: what the method returned, mapped to the reference's keys.
        keys: the keys the method must return, exactly (a truncated model returns no logits).
        view: applied to each reference tensor before comparing, for peers that return a
            reshaped value (timm's ViT intermediates: NCHW without the class token).
    """
    if sorted(got) != sorted(keys):
        return Check("wrong", f"returned the keys {sorted(got)}, expected {sorted(keys)}")
    worst: Status = "equal"
    notes: list[str] = []
    for key, value in got.items():
        if key not in expected:
            return Check("wrong", f"unexpected key {key!r}")
        want = expected[key] if view is None else view(key, expected[key])
        if not isinstance(value, torch.Tensor):
            return Check("wrong", f"{key}: a {type(value).__name__}, not a tensor")
        value = value.detach()
        if value.shape != want.shape:
            return Check("wrong", f"{key}: shape {tuple(value.shape)} != {tuple(want.shape)}")
        if value.device != want.device:
            value = value.to(want.device)
        if torch.equal(value, want):
            continue
        diff = (value.double() - want.double()).abs().max().item()
        if torch.allclose(value, want, rtol=RTOL, atol=ATOL):
            worst = "close"
            notes.append(f"{key}: max |diff| {diff:.1e}")
            continue
        return Check("wrong", f"{key}: max |diff| {diff:.3g}{_diagnose(value, want)}")
    return Check(worst, "; ".join(notes))


def _diagnose(value: torch.Tensor, want: torch.Tensor) -> str:
    if value.is_floating_point() and torch.equal(value, want.relu()):
        return " (the value after a later in-place ReLU, not what the layer returned)"
    return ""

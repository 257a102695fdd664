"""Reading a feature's layout from its shape: channels, spatial dims and reduction.

A feature ``(C, H, W)`` (batch left out) of an input with spatial size ``(H0, W0)`` is
channels-first when ``H0/H`` and ``W0/W`` agree; ``(H, W, C)`` (Swin) is channels-last when
``H0/H`` and ``W0/W`` agree there instead; ``(L, C)`` are tokens, whose reduction is the patch size
``p`` with ``L = (H0/p)(W0/p) + prefix tokens``. When both readings fit, channels-first wins.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from featwrap import _tree

# the reduction of each spatial dim must agree within this factor (floor/ceil of odd sizes)
_AGREE = 1.3
_MAX_PREFIX_TOKENS = 16


def describe(
    shape: tuple[int, ...], spatial: tuple[int, ...]
) -> tuple[str | None, int | None, float | None]:
    """``(layout, channels, reduction)`` of a feature of ``shape`` (without batch)."""
    k, n = len(spatial), len(shape)
    if n == 1:
        return "NC", shape[0], None
    if k and n == k + 1 and all(d == 1 for d in shape[1:]):  # pooled to one pixel
        return "NC" + "*" * k, shape[0], nice(spatial[0])
    if k and n == k + 1:
        first = _reduction(spatial, shape[1:])
        if first is not None:
            return "NC" + "*" * k, shape[0], first
        last = _reduction(spatial, shape[:-1])
        if last is not None:
            return "N" + "*" * k + "C", shape[-1], last
    if k >= 2 and n == 2:
        return "NLC", shape[1], token_reduction(spatial, shape[0])
    return None, None, None


def _reduction(spatial: tuple[int, ...], dims: tuple[int, ...]) -> float | None:
    if any(d <= 0 for d in dims):
        return None
    ratios = [s / d for s, d in zip(spatial, dims, strict=True)]
    if max(ratios) > _AGREE * min(ratios) or min(ratios) < 1 / 64:
        return None
    return nice(ratios[0])


def token_reduction(spatial: tuple[int, ...], tokens: int) -> int | None:
    """The patch size ``p`` with ``tokens = prod(spatial / p) + prefix`` (fewest prefix tokens)."""
    best: tuple[int, int] | None = None
    for p in range(1, min(spatial) + 1):
        if any(s % p for s in spatial):
            continue
        grid = math.prod(s // p for s in spatial)
        prefix = tokens - grid
        if 0 <= prefix <= _MAX_PREFIX_TOKENS and (best is None or prefix < best[0]):
            best = (prefix, p)
    return None if best is None else best[1]


def nice(ratio: float) -> float:
    """An int when the ratio is whole, else rounded to two decimals."""
    whole = round(ratio)
    return whole if abs(ratio - whole) < 1e-9 else round(ratio, 2)


def shapes_without_batch(value: Any) -> Any:
    """``value`` with each tensor replaced by its shape without the first dim (as a tuple)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape[1:])
    if isinstance(value, list):
        return [shapes_without_batch(v) for v in value]
    return _tree.map_tensors(_Shape.of, value)


class _Shape(tuple[int, ...]):
    """A shape standing in for a tensor inside a structure (prints as a tuple)."""

    @classmethod
    def of(cls, t: torch.Tensor) -> Any:
        return cls(t.shape[1:])


def format_shapes(shapes: Any) -> str:
    """A compact string for a shape or a structure of shapes: ``(64, 8, 8)``, ``[(8,), None]``."""
    if isinstance(shapes, tuple) and (
        type(shapes) is _Shape or all(isinstance(d, int) for d in shapes)
    ):
        return "(" + ", ".join(map(str, shapes)) + ("," if len(shapes) == 1 else "") + ")"
    if isinstance(shapes, (list, tuple)):
        inner = ", ".join(format_shapes(s) for s in shapes)
        return f"[{inner}]" if isinstance(shapes, list) else f"({inner})"
    if isinstance(shapes, dict):
        return "{" + ", ".join(f"{k}: {format_shapes(v)}" for k, v in shapes.items()) + "}"
    if shapes is None:
        return "None"
    if dataclasses.is_dataclass(shapes) and not isinstance(shapes, type):
        fields = (
            f"{f.name}={format_shapes(getattr(shapes, f.name))}" for f in dataclasses.fields(shapes)
        )
        return f"{type(shapes).__name__}({', '.join(fields)})"
    return type(shapes).__name__

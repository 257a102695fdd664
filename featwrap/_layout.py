"""Reading a feature's layout from its shape: channels, spatial dims and reduction.

A feature ``(C, H, W)`` (batch left out) of an input with spatial size ``(H0, W0)`` is
channels-first (``NCHW``) when ``H0/H`` and ``W0/W`` agree; ``(H, W, C)`` (Swin) is channels-last
(``NHWC``) when ``H0/H`` and ``W0/W`` agree there instead; ``(L, C)`` are tokens (``NLC``), whose
reduction is the patch size ``p`` with ``L = (H0/p)(W0/p) + prefix tokens``. When both readings
fit, channels-first wins. An input without spatial dims (token ids ``(N, L)``, or a sequence of
vectors) makes every ``(L, D)`` feature tokens with ``D`` channels.

The reduction is *nominal*: the stride a head is built for, as timm's ``feature_info`` gives it.
The measured ratio (input size / feature size) is off when convolutions without padding shrink
the map (inception_v3 at 299 px: 37.4 for stride 32) or when a size does not divide (300 px at
stride 32: 30). The nominal stride is the power of two whose floor or ceil division gives every
measured size; else the integer that divides exactly (a ViT's patch 14); else the power of two
nearest to the measured ratio. :class:`Reading` keeps both, with the token grid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch

from featwrap import _tree

# the reduction of each spatial dim must agree within this factor (floor/ceil of odd sizes)
_AGREE = 1.3
_MAX_PREFIX_TOKENS = 16

#: layout names by number of spatial dims (timm's vocabulary where it has one)
_CHANNELS_FIRST = {1: "NCL", 2: "NCHW", 3: "NCDHW"}
_CHANNELS_LAST = {1: "NLC", 2: "NHWC", 3: "NDHWC"}


class Reading(NamedTuple):
    """What a feature's shape says, for an input of a given spatial size.

    Attributes:
        layout: ``"NCHW"`` (channels first; ``"NCL"``, ``"NCDHW"`` for 1 or 3 spatial dims),
            ``"NHWC"`` (channels last; ``"NLC"``, ``"NDHWC"``), ``"NLC"`` (tokens), ``"NC"`` (a
            vector) or ``None`` (unclear).
        channels: the channel dim's size (the hidden size for tokens).
        reduction: the nominal stride (see the module docstring); ``None`` without spatial dims.
        measured: input size / feature size as measured (first spatial dim; for tokens, the
            patch size found); ``None`` without spatial dims.
        grid: the feature's spatial size (``(H, W)``; for tokens, the patch grid), if known.
        prefix: for tokens on a grid, how many tokens come before it (class, distillation,
            register tokens); else 0.
    """

    layout: str | None
    channels: int | None
    reduction: float | None
    measured: float | None
    grid: tuple[int, ...] | None = None
    prefix: int = 0


_UNCLEAR = Reading(None, None, None, None)


def read(shape: tuple[int, ...], spatial: tuple[int, ...]) -> Reading:
    """The :class:`Reading` of a feature of ``shape`` (without batch) for an input of ``spatial``
    size (``()`` for token ids)."""
    k, n = len(spatial), len(shape)
    if n == 1:
        return Reading("NC", shape[0], None, None)
    if not k and n == 2:
        return Reading("NLC", shape[1], None, None)
    if k and n == k + 1 and all(d == 1 for d in shape[1:]):  # pooled to one pixel
        whole = nice(spatial[0])
        return Reading(_CHANNELS_FIRST.get(k, "NC" + "*" * k), shape[0], whole, whole, shape[1:])
    if k and n == k + 1:
        for dims, channels, names in (
            (shape[1:], shape[0], _CHANNELS_FIRST),
            (shape[:-1], shape[-1], _CHANNELS_LAST),
        ):
            measured = _reduction(spatial, dims)
            if measured is not None:
                star = "*" * k
                layout = names.get(k, f"NC{star}" if names is _CHANNELS_FIRST else f"N{star}C")
                return Reading(layout, channels, nominal(spatial, dims), measured, dims)
    if k >= 2 and n == 2:
        patch = token_grid(spatial, shape[0])
        if patch is None:
            return Reading("NLC", shape[1], None, None)
        p, prefix = patch
        grid = tuple(s // p for s in spatial)
        return Reading("NLC", shape[1], p, p, grid, prefix)
    return _UNCLEAR


def read_meta(
    shape: tuple[int, ...], spatial: tuple[int, ...]
) -> tuple[str | None, int | None, float | None]:
    """``(layout, channels, nominal reduction)`` of a feature of ``shape`` (without batch)."""
    reading = read(shape, spatial)
    return reading.layout, reading.channels, reading.reduction


def _reduction(spatial: tuple[int, ...], dims: tuple[int, ...]) -> float | None:
    if any(d <= 0 for d in dims):
        return None
    ratios = [s / d for s, d in zip(spatial, dims, strict=True)]
    if max(ratios) > _AGREE * min(ratios) or min(ratios) < 1 / 64:
        return None
    return nice(ratios[0])


def nominal(spatial: tuple[int, ...], dims: tuple[int, ...]) -> int | float:
    """The nominal stride of a map of size ``dims`` from an input of size ``spatial``."""
    ratio = spatial[0] / dims[0]
    if ratio < 1:  # upsampled: no stride to round to
        return nice(ratio)
    pairs = list(zip(spatial, dims, strict=True))
    level = round(math.log2(ratio))
    for p in sorted({1 << max(level - 1, 0), 1 << level, 1 << (level + 1)}):
        if all(d in (s // p, -(-s // p)) for s, d in pairs):
            return p
    exact = {s // d for s, d in pairs if s % d == 0}
    if len(exact) == 1 and all(s % d == 0 for s, d in pairs):
        return exact.pop()
    return 1 << level


def token_grid(spatial: tuple[int, ...], tokens: int) -> tuple[int, int] | None:
    """``(patch size, prefix tokens)`` with ``tokens = prod(spatial / p) + prefix``, the fewest
    prefix tokens first."""
    best: tuple[int, int] | None = None
    for p in range(1, min(spatial) + 1):
        if any(s % p for s in spatial):
            continue
        grid = math.prod(s // p for s in spatial)
        prefix = tokens - grid
        if 0 <= prefix <= _MAX_PREFIX_TOKENS and (best is None or prefix < best[1]):
            best = (p, prefix)
    return best


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

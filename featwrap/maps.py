"""Feature maps from any layout: tokens, channels-last maps and channels-first maps, converted.

A layer's output comes in one of three layouts, named as in timm:

* ``"NCHW"``: a channels-first map ``(B, C, H, W)`` (CNNs);
* ``"NHWC"``: a channels-last map ``(B, H, W, C)`` (timm and torchvision Swin stages);
* ``"NLC"``: tokens ``(B, L, C)``, ``L = prefix + H * W`` (ViT blocks, HF encoders), described by
  :class:`Tokens`: how many prefix tokens (class, distillation, register) come first, the
  patch size or the grid, and, for models that keep their tokens out of raster order (timm
  Hiera), the function that puts them back.

``output_fmt`` asks for one of the three: a map is permuted or flattened, tokens lose their prefix
and are laid out on the grid computed from the actual input size. Conversion happens after the
forward, on the captured values (the capture itself is unchanged), with shape arithmetic and
views only, so it runs under ``torch.compile(fullgraph=True)`` and ``torch.export``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from featwrap import _layout, _tree
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError

if TYPE_CHECKING:
    from featwrap.layers import ResolvedLayer

__all__ = ["Layout", "LayoutSpec", "Tokens"]

Tensor = torch.Tensor
_PREFIX_SUFFIX = ":prefix"


class Layout(str, Enum):
    """The layout of a feature, in timm's vocabulary."""

    NCHW = "NCHW"
    NHWC = "NHWC"
    NLC = "NLC"


@dataclass(frozen=True)
class Tokens:
    """How a layer's tokens ``(B, L, C)`` lie on the input's grid.

    The first ``prefix`` tokens (class, distillation, register tokens) are not on the grid; the
    others are the grid's cells in raster order (row by row), unless ``to_grid`` says otherwise.

    Args:
        prefix: how many tokens come before the grid. ``None``: inferred as the fewest (at most
            16) that leave a grid matching the input size.
        patch_size: input pixels per token, an int or ``(ph, pw)``; the grid is then
            ``(H // ph, W // pw)`` of the actual input ``(B, C, H, W)``. ``None``: inferred.
        grid: a fixed grid ``(h, w)``, whatever the input (token-id inputs have no image size).
        to_grid: for models whose tokens are not in raster order: a function from the grid's
            tokens ``(B, L - prefix, C)`` to the map ``(B, h, w, C)`` (``prefix`` then defaults
            to 0; ``patch_size`` and ``grid`` are not used).

    >>> import torch
    >>> from torch import nn
    >>> from featwrap import Capture, FeatureModel
    >>> class TinyViT(nn.Module):  # a class token, then 4 x 4 patches of 8 px
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.embed = nn.Conv2d(3, 16, 8, stride=8)
    ...         self.block = nn.Linear(16, 16)
    ...     def forward(self, x):
    ...         t = self.embed(x).flatten(2).transpose(1, 2)
    ...         return self.block(torch.cat([t.mean(1, keepdim=True), t], 1))
    >>> layer = Capture("block", layout=Tokens(prefix=1, patch_size=8), output_fmt="NCHW")
    >>> fm = FeatureModel(TinyViT(), [layer], output_key=None, prefix_tokens=True)
    >>> {k: tuple(v.shape) for k, v in fm(torch.randn(2, 3, 32, 32)).items()}
    {'block': (2, 16, 4, 4), 'block:prefix': (2, 1, 16)}
    """

    prefix: int | None = None
    patch_size: int | tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    to_grid: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.prefix is not None and not (_is_int(self.prefix) and self.prefix >= 0):
            raise FeatwrapValueError(
                f"Tokens(prefix={self.prefix!r}): the number of prefix tokens must be an int "
                ">= 0 (1 for a class token), or None to infer it."
            )
        for name in ("patch_size", "grid"):
            value = getattr(self, name)
            if value is None or (_is_int(value) and name == "patch_size" and value > 0):
                continue
            if not (
                isinstance(value, Sequence)
                and len(value) == 2
                and all(_is_int(d) and d > 0 for d in value)
            ):
                raise FeatwrapValueError(
                    f"Tokens({name}={value!r}) must be "
                    + ("an int or " if name == "patch_size" else "")
                    + "a pair of positive ints (height, width), or None to infer it."
                )
        if self.to_grid is not None and not callable(self.to_grid):
            raise FeatwrapTypeError(
                f"Tokens(to_grid={self.to_grid!r:.60}) must be a callable (B, L, C) -> "
                "(B, h, w, C), or None for tokens in raster order."
            )


#: How a layer's output is laid out: ``"NCHW"``, ``"NHWC"``, ``"NLC"`` (tokens, prefix and grid
#: inferred) or a :class:`Tokens`. ``None`` (where accepted) infers it from the shape.
LayoutSpec: TypeAlias = Layout | str | Tokens


def parse_layout(value: Any, what: str) -> Layout | Tokens | None:
    """``value`` as a Layout or Tokens (``None`` stays ``None``); an error names the choices."""
    if value is None or isinstance(value, Tokens):
        return value
    return parse_fmt(value, what)


def parse_fmt(value: Any, what: str) -> Layout:
    try:
        return Layout(value)
    except ValueError:
        raise FeatwrapValueError(
            f"{what}={value!r} is not a layout: pass 'NCHW' (channels-first maps), 'NHWC' "
            "(channels-last maps) or 'NLC' (tokens)"
            + (", or featwrap.Tokens(...) to describe tokens." if "layout" in what else ".")
        ) from None


@dataclass(frozen=True)
class MapRule:
    """What to do with one key: its source layout (None: inferred) and the format wanted."""

    layout: Layout | Tokens | None
    fmt: Layout


def converter(
    layers: Sequence[ResolvedLayer], output_fmt: str | None, prefix_tokens: bool
) -> Converter | None:
    """The conversions of a FeatureModel's layers; ``None`` when no layer asks for a format."""
    default = None if output_fmt is None else parse_fmt(output_fmt, "output_fmt")
    if not isinstance(prefix_tokens, bool):
        raise FeatwrapTypeError(f"prefix_tokens must be True or False, got {prefix_tokens!r}")
    rules: dict[str, MapRule] = {}
    for layer in layers:
        fmt = default if layer.output_fmt is None else parse_fmt(layer.output_fmt, "output_fmt")
        if fmt is not None:
            rules[layer.key] = MapRule(parse_layout(layer.layout, "layout"), fmt)
    return Converter(rules, prefix_tokens) if rules else None


class Converter:
    """Applies the conversions of a FeatureModel's layers to its output dict, after the forward."""

    def __init__(self, rules: dict[str, MapRule], prefix_tokens: bool) -> None:
        self.rules = rules
        self.prefix_tokens = prefix_tokens

    def apply(
        self, features: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        spatial = input_spatial(args, kwargs)
        rules = self.rules
        out: dict[str, Any] = {}
        for key, value in features.items():
            rule = rules.get(key)
            if rule is None or value is None:
                out[key] = value
                continue
            if isinstance(value, list):  # repeats="all"
                pairs = [convert(v, rule, spatial, key) for v in value]
                out[key] = [p[0] for p in pairs]
                prefix: Any = [p[1] for p in pairs]
                has_prefix = any(p is not None for p in prefix)
            else:
                out[key], prefix = convert(value, rule, spatial, key)
                has_prefix = prefix is not None
            if self.prefix_tokens and has_prefix:
                out[key + _PREFIX_SUFFIX] = prefix
        return out


def input_spatial(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...]:
    """The spatial size ``(H, W)`` of the first image-like input ``(B, C, H, W)``, else ``()``."""
    for tensor in _tree.tensors((args, kwargs)):
        if tensor.dim() >= 4:
            return tuple(tensor.shape[2:])
        return ()
    return ()


def convert(
    value: Any, rule: MapRule, spatial: tuple[int, ...], key: str
) -> tuple[Tensor, Tensor | None]:
    """``value`` in ``rule.fmt``, and its prefix tokens (``None`` for maps and prefix-free tokens)."""
    if not isinstance(value, Tensor):
        raise FeatwrapTypeError(
            f"Layer {key!r} returned {_tree.describe_structure(value)}, which output_fmt cannot lay out as a "
            "map. Pick its tensor with featwrap.Capture(path, select=0) (an index, key or "
            "callable)."
        )
    layout = rule.layout if rule.layout is not None else _infer(value, spatial, key)
    prefix: Tensor | None = None
    if isinstance(layout, Tokens):
        nhwc, prefix = _tokens_to_nhwc(value, layout, spatial, key)
    elif layout is Layout.NLC:
        nhwc, prefix = _tokens_to_nhwc(value, Tokens(), spatial, key)
    else:
        if value.dim() != 4:
            raise FeatwrapValueError(
                f"Layer {key!r} is declared {layout.value} but returned a tensor of shape "
                f"{tuple(value.shape)}; a map has 4 dims. Declare layout='NLC' for tokens."
            )
        if layout is rule.fmt:
            return value, None
        nhwc = value.permute(0, 2, 3, 1) if layout is Layout.NCHW else value
    if rule.fmt is Layout.NHWC:
        return nhwc, prefix
    if rule.fmt is Layout.NCHW:
        return nhwc.permute(0, 3, 1, 2), prefix
    return nhwc.flatten(1, 2), prefix


def _infer(value: Tensor, spatial: tuple[int, ...], key: str) -> Layout:
    if value.dim() == 3:
        return Layout.NLC
    if value.dim() == 4:
        if spatial:
            layout, _, _ = _layout.read_meta(tuple(value.shape[1:]), spatial)
            if layout == "NHWC":
                return Layout.NHWC
        return Layout.NCHW
    raise FeatwrapValueError(
        f"Layer {key!r} returned a tensor of shape {tuple(value.shape)}: neither a map (4 dims) "
        "nor tokens (3 dims), so output_fmt cannot lay it out. Give output_fmt per layer, "
        "to the map layers only: Capture(path, output_fmt='NCHW')."
    )


def _tokens_to_nhwc(
    value: Tensor, tokens: Tokens, spatial: tuple[int, ...], key: str
) -> tuple[Tensor, Tensor | None]:
    if value.dim() != 3:
        raise FeatwrapValueError(
            f"Layer {key!r} is declared as tokens (B, L, C) but returned a tensor of shape "
            f"{tuple(value.shape)}. Declare layout='NCHW' or 'NHWC' for a map."
        )
    length = value.shape[1]
    prefix, grid = _prefix_and_grid(length, tokens, spatial, key)
    body = value[:, prefix:] if prefix else value
    if tokens.to_grid is not None:
        nhwc = tokens.to_grid(body)
    else:
        nhwc = body.reshape(value.shape[0], grid[0], grid[1], value.shape[2])
    return nhwc, (value[:, :prefix] if prefix else None)


def _prefix_and_grid(
    length: int, tokens: Tokens, spatial: tuple[int, ...], key: str
) -> tuple[int, tuple[int, int]]:
    """The prefix count and the grid ``(h, w)`` of ``length`` tokens for an input of ``spatial``."""
    if tokens.to_grid is not None:
        return tokens.prefix or 0, (0, 0)  # to_grid knows its grid
    grids = _candidate_grids(tokens, spatial)
    if tokens.prefix is not None:
        grids = [g for g in grids if g[0] * g[1] == length - tokens.prefix]
        fits = [(tokens.prefix, g) for g in grids]
    else:
        fits = sorted((length - g[0] * g[1], g) for g in grids if 0 <= length - g[0] * g[1] <= 16)
    if not fits:
        raise FeatwrapValueError(_no_grid(length, tokens, spatial, key))
    return fits[0]


def _candidate_grids(tokens: Tokens, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
    if tokens.grid is not None:
        return [(int(tokens.grid[0]), int(tokens.grid[1]))]
    if len(spatial) != 2:
        return []
    h, w = spatial
    if tokens.patch_size is not None:
        ph, pw = _pair(tokens.patch_size)
        return [(h // ph, w // pw)]
    return [(h // p, w // p) for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]


def _no_grid(length: int, tokens: Tokens, spatial: tuple[int, ...], key: str) -> str:
    if len(spatial) != 2 and tokens.grid is None:
        return (
            f"Layer {key!r} returned {length} tokens, but the input has no image size (B, C, H, W) "
            "to lay them out on. Declare the grid: Capture(path, layout=featwrap.Tokens(prefix=1, "
            "grid=(h, w)), output_fmt='NCHW')."
        )
    return (
        f"Layer {key!r} returned {length} tokens, which fit no grid of {tokens} for an input of "
        f"size {tuple(spatial)} (prefix tokens + h * w). Declare the layout with "
        "Capture(path, layout=featwrap.Tokens(prefix=..., patch_size=... or grid=(h, w)))."
    )


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

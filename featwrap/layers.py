"""Finding layers by path: listing, glob expansion, aliases and the errors that name close matches."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from torch import nn

from featwrap import maps
from featwrap.errors import FeatwrapTypeError, LayerNotFoundError, LayerSpecError
from featwrap.maps import LayoutSpec

__all__ = ["Capture", "LayerSpec", "ResolvedLayer", "Selector", "list_layers", "resolve_layers"]

#: Picks one part of a captured value: an index (``0``), a key or attribute name (``"last_hidden"``)
#: or a callable applied to the value.
Selector: TypeAlias = int | str | Callable[..., Any]

_GLOB_CHARS = frozenset("*?[")
_INPUT_SUFFIX = ":input"
_OUTPUT_SUFFIX = ":output"


@dataclass(frozen=True)
class Capture:
    """One layer to capture, when a plain path is not enough: its input, or one part of its output.

    Args:
        path: the module path (or an fnmatch glob), as for a plain layer.
        key: the key in the returned dict; by default the path, with ``":input"`` appended for an
            input. A glob that matches several modules takes no key.
        input: capture what the module was called with instead of what it returned. The value is
            taken when the module is entered, so a module that modifies its input in place
            (``ReLU(inplace=True)``) does not change it: the input of ``fc`` is the pooled
            embedding, the input of ``relu`` is the pre-activation.
        select: for an output, picks one part of it: an ``int`` indexes a tuple or list (``0`` of
            ``nn.MultiheadAttention``'s ``(out, weights)``), a ``str`` is a key of a dict or an
            attribute (dataclasses, ``ModelOutput``), a callable receives the output. For an input,
            an ``int`` picks a positional argument, a ``str`` a keyword argument and a callable
            receives the arguments as ``fn(*args, **kwargs)``; by default an input is the first
            positional argument. Without ``select`` an output is returned whole, structures
            included; either way ``detach`` and the in-place-safe copy apply to every tensor
            inside the value.
        layout: how the (selected) output is laid out, for ``output_fmt``: ``"NCHW"``,
            ``"NHWC"``, ``"NLC"`` (tokens) or a :class:`featwrap.Tokens` (prefix tokens, patch
            size, grid). ``None``: read from the shape (3 dims are tokens with the fewest prefix
            tokens that fit the input size; 4 dims are channels-last when only that reading fits).
        output_fmt: return this layer as ``"NCHW"`` (a map), ``"NHWC"`` or ``"NLC"`` (the grid's
            tokens, prefix left out), converted after the forward; ``None``: the
            FeatureModel's ``output_fmt``. See ``FeatureModel(output_fmt=...)``.

    The string ``"fc:input"`` is a shorthand for ``Capture("fc", input=True)`` (with key
    ``"fc:input"``), usable anywhere a path is: in a list, or as a key of an alias dict.

    >>> import torch
    >>> from torch import nn
    >>> from featwrap import FeatureModel
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    >>> fm = FeatureModel(net, ["1:input", Capture("1", key="relu")])
    >>> out = fm(torch.randn(3, 4))
    >>> bool((out["1:input"] < 0).any()), bool((out["relu"] >= 0).all())
    (True, True)
    """

    path: str
    key: str | None = None
    input: bool = False
    select: Selector | None = None
    layout: LayoutSpec | None = None
    output_fmt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise FeatwrapTypeError(
                f"Capture path must be a module path string, got {type(self.path).__name__}: "
                f"{self.path!r:.80}"
            )
        if self.key is not None and not isinstance(self.key, str):
            raise FeatwrapTypeError(f"Capture key must be a string or None, got {self.key!r:.80}")
        if not isinstance(self.input, bool):
            raise FeatwrapTypeError(f"Capture input must be True or False, got {self.input!r}")
        sel = self.select
        if sel is not None and (
            isinstance(sel, bool) or not (isinstance(sel, (int, str)) or callable(sel))
        ):
            raise FeatwrapTypeError(
                f"Capture select must be an int (index), a str (key or attribute) or a callable, "
                f"got {type(sel).__name__}: {sel!r:.80}"
            )
        maps.parse_layout(self.layout, "Capture layout")
        if self.output_fmt is not None:
            maps.parse_fmt(self.output_fmt, "Capture output_fmt")

    def default_key(self, path: str) -> str:
        return path + _INPUT_SUFFIX if self.input else path


#: What ``FeatureModel`` accepts as ``layers``: one path or glob (``"layer*"``, ``"fc:input"``) or
#: :class:`Capture`, a sequence of them, or a mapping ``{path: alias}`` whose values become keys.
LayerSpec: TypeAlias = str | Capture | Sequence[str | Capture] | Mapping[str, str]


@dataclass(frozen=True)
class ResolvedLayer:
    """One requested layer: the key it is returned under, its path and the module itself.

    ``input``, ``select``, ``layout`` and ``output_fmt`` come from a :class:`Capture` (or the
    ``":input"`` shorthand).
    """

    key: str
    path: str
    module: nn.Module
    input: bool = False
    select: Selector | None = None
    layout: LayoutSpec | None = None
    output_fmt: str | None = None


def list_layers(model: nn.Module, pattern: str | None = None) -> list[str]:
    """Every submodule path of ``model``, in ``named_modules()`` order, without the root.

    Args:
        model: any module.
        pattern: an optional fnmatch glob (``"layer*.0.conv?"``); only matching paths are kept.

    Returns:
        The paths, usable as ``layers`` of a :class:`~featwrap.FeatureModel`.

    >>> from torch import nn
    >>> list_layers(nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU())))
    ['0', '1', '1.0']
    >>> list_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), "1*")
    ['1']
    """
    if not isinstance(model, nn.Module):
        raise FeatwrapTypeError(
            f"list_layers expects a torch.nn.Module, got {type(model).__name__}: {model!r:.80}"
        )
    paths = [name for name, _ in model.named_modules() if name]
    if pattern is None:
        return paths
    if not isinstance(pattern, str):
        raise FeatwrapTypeError(f"pattern must be a glob string, got {type(pattern).__name__}")
    return [p for p in paths if fnmatch.fnmatchcase(p, pattern)]


def is_glob(path: str) -> bool:
    """Whether ``path`` holds a glob character (``*``, ``?`` or ``[``)."""
    return not _GLOB_CHARS.isdisjoint(path)


def resolve_layers(
    model: nn.Module, layers: LayerSpec, output_key: str | None
) -> list[ResolvedLayer]:
    """Turn a ``layers`` argument into ``(key, path, module)`` triples, in request order.

    Globs expand in ``named_modules()`` order at the place where they stand in the request.
    Raises a :class:`LayerNotFoundError` for a path that names nothing (with close matches) and a
    :class:`LayerSpecError` for an empty request, duplicated keys or a key equal to ``output_key``.
    """
    pairs = _path_alias_pairs(layers)
    if not pairs:
        raise LayerSpecError(
            "layers is empty: name at least one submodule path, e.g. FeatureModel(model, ['layer1']). "
            "featwrap.list_layers(model) lists them."
        )
    all_paths = [name for name, _ in model.named_modules() if name]
    resolved: list[ResolvedLayer] = []
    for item, alias in pairs:
        capture = _as_capture(item, all_paths)
        key = alias or capture.key
        path = capture.path
        if is_glob(path):
            matches = [p for p in all_paths if fnmatch.fnmatchcase(p, path)]
            if not matches:
                raise LayerNotFoundError(
                    f"The glob {path!r} matches no submodule of {type(model).__name__}. "
                    f"{_hint(model)}"
                )
            if key is not None and len(matches) > 1:
                raise LayerSpecError(
                    f"The glob {path!r} matches {len(matches)} layers ({_short(matches)}) but is "
                    f"given the single key {key!r}. Use a plain path per alias, or pass the "
                    "glob in a list to keep the paths as keys."
                )
            found = [(p, model.get_submodule(p)) for p in matches]
        else:
            found = [(path, _get_module(model, path, all_paths))]
        resolved += [
            ResolvedLayer(
                key or capture.default_key(p),
                p,
                m,
                capture.input,
                capture.select,
                capture.layout,
                capture.output_fmt,
            )
            for p, m in found
        ]
    _check_keys(resolved, output_key)
    return resolved


def _as_capture(item: str | Capture, all_paths: list[str]) -> Capture:
    """A Capture for a list item: ``"fc:input"`` is the input of ``fc`` unless a module has that
    very path."""
    if isinstance(item, Capture):
        return item
    if item.endswith(_INPUT_SUFFIX) and item not in all_paths:
        return Capture(item[: -len(_INPUT_SUFFIX)], input=True)
    return Capture(item)


def _path_alias_pairs(layers: LayerSpec) -> list[tuple[str | Capture, str | None]]:
    if isinstance(layers, (str, Capture)):
        return [(layers, None)]
    if isinstance(layers, Mapping):
        pairs: list[tuple[str | Capture, str | None]] = []
        for path, alias in layers.items():
            if not isinstance(path, str) or not isinstance(alias, str):
                raise FeatwrapTypeError(
                    "layers given as a dict must map path strings to alias strings, got "
                    f"{path!r}: {alias!r}. For an input or a selected part, use "
                    "featwrap.Capture(path, key=alias, input=..., select=...) in a list."
                )
            pairs.append((path, alias))
        return pairs
    if isinstance(layers, Sequence):
        for item in layers:
            if not isinstance(item, (str, Capture)):
                raise FeatwrapTypeError(
                    f"layers must hold module path strings (or featwrap.Capture), got "
                    f"{type(item).__name__}: {item!r:.80}. Paths are the names of "
                    "model.named_modules(), e.g. 'layer3.0.downsample.1'."
                )
        return [(item, None) for item in layers]
    raise FeatwrapTypeError(
        "layers must be a path string, a list/tuple of paths or a dict {path: alias}, got "
        f"{type(layers).__name__}: {layers!r:.80}"
    )


def _get_module(model: nn.Module, path: str, all_paths: list[str]) -> nn.Module:
    if path == "":
        raise LayerNotFoundError(
            "The empty path '' is the backbone itself; its return value is already in the result "
            "under output_key. Name a submodule instead. " + _hint(model)
        )
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    # get_submodule only walks nn.Module attributes; paths of shared modules (listed once by
    # named_modules) are found here too, but a typo is not.
    everything = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
    close = difflib.get_close_matches(path, everything, n=3, cutoff=0.6)
    if not close:
        close = [p for p in all_paths if p.endswith("." + path.rsplit(".", 1)[-1])][:3]
    suggestion = f" Did you mean {close[0]!r}?" if close else ""
    if len(close) > 1:
        suggestion += f" (Also close: {_or(close[1:])}.)"
    raise LayerNotFoundError(
        f"{path!r} is not a submodule of {type(model).__name__}.{suggestion} {_hint(model)}"
    )


def _check_keys(resolved: list[ResolvedLayer], output_key: str | None) -> None:
    seen: dict[str, str] = {}
    for layer in resolved:
        if layer.key == output_key:
            raise LayerSpecError(
                f"The layer key {layer.key!r} (path {layer.path!r}) equals output_key "
                f"{output_key!r}, where the backbone's own output goes. Give the layer an alias "
                f"({{{layer.path!r}: 'other_name'}}) or pass another output_key."
            )
        if layer.key in seen:
            first = seen[layer.key]
            what = "is requested twice" if first == layer.path else f"and {first!r} map to one key"
            raise LayerSpecError(
                f"Layer {layer.path!r} {what} ({layer.key!r}): each returned key must be unique. "
                "Remove the duplicate, or give distinct aliases with a dict {path: alias}."
            )
        seen[layer.key] = layer.path


def _hint(model: nn.Module) -> str:
    return (
        f"See featwrap.list_layers(model) for the {type(model).__name__}'s layer paths "
        "(or `featwrap layers MODEL` on the command line)."
    )


def _or(items: list[str]) -> str:
    quoted = [repr(i) for i in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _short(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")

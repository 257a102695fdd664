"""Finding layers by path: listing, glob expansion, aliases and the errors that name close matches."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from torch import nn

from featwrap.errors import FeatwrapTypeError, LayerNotFoundError, LayerSpecError

__all__ = ["LayerSpec", "ResolvedLayer", "list_layers", "resolve_layers"]

#: What ``FeatureModel`` accepts as ``layers``: one path or glob, a sequence of them, or a mapping
#: ``{path: alias}`` whose values become the keys of the returned dict.
LayerSpec: TypeAlias = str | Sequence[str] | Mapping[str, str]

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ResolvedLayer:
    """One requested layer: the key it is returned under, its path and the module itself."""

    key: str
    path: str
    module: nn.Module


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
    for path, alias in pairs:
        if is_glob(path):
            matches = [p for p in all_paths if fnmatch.fnmatchcase(p, path)]
            if not matches:
                raise LayerNotFoundError(
                    f"The glob {path!r} matches no submodule of {type(model).__name__}. "
                    f"{_hint(model)}"
                )
            if alias is not None and len(matches) > 1:
                raise LayerSpecError(
                    f"The glob {path!r} matches {len(matches)} layers ({_short(matches)}) but is "
                    f"given the single alias {alias!r}. Use a plain path per alias, or pass the "
                    "glob in a list to keep the paths as keys."
                )
            resolved += [ResolvedLayer(alias or p, p, model.get_submodule(p)) for p in matches]
        else:
            resolved.append(ResolvedLayer(alias or path, path, _get_module(model, path, all_paths)))
    _check_keys(resolved, output_key)
    return resolved


def _path_alias_pairs(layers: LayerSpec) -> list[tuple[str, str | None]]:
    if isinstance(layers, str):
        return [(layers, None)]
    if isinstance(layers, Mapping):
        pairs: list[tuple[str, str | None]] = []
        for path, alias in layers.items():
            if not isinstance(path, str) or not isinstance(alias, str):
                raise FeatwrapTypeError(
                    "layers given as a dict must map path strings to alias strings, got "
                    f"{path!r}: {alias!r}"
                )
            pairs.append((path, alias))
        return pairs
    if isinstance(layers, Sequence):
        for path in layers:
            if not isinstance(path, str):
                raise FeatwrapTypeError(
                    f"layers must hold module path strings, got {type(path).__name__}: {path!r:.80}"
                    ". Paths are the names of model.named_modules(), e.g. 'layer3.0.downsample.1'."
                )
        return [(path, None) for path in layers]
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

"""Walking the structures modules return: tensors inside tuples, lists, dicts, namedtuples and dataclasses.

Kept small and fast on purpose: the common case (a bare tensor) never enters the recursion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from featwrap.errors import EditError, LayerSpecError

Tensor = torch.Tensor


def tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor inside ``value``, depth first, in a stable order."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from tensors(getattr(value, field.name))


def map_tensors(fn: Callable[[Tensor], Tensor], value: Any) -> Any:
    """A copy of the structure ``value`` with ``fn`` applied to every tensor.

    Containers are rebuilt (lists and dicts too), so that a caller who later appends to the
    original list does not change the copy. Leaves that are not tensors are shared.
    """
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple):
        items = [map_tensors(fn, v) for v in value]
        if hasattr(value, "_fields"):  # namedtuple
            return type(value)(*items)
        return tuple(items) if type(value) is tuple else _rebuild(value, items)
    if isinstance(value, list):
        items = [map_tensors(fn, v) for v in value]
        return items if type(value) is list else _rebuild(value, items)
    if isinstance(value, dict):
        mapped = {k: map_tensors(fn, v) for k, v in value.items()}
        return mapped if type(value) is dict else _rebuild(value, mapped)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: map_tensors(fn, getattr(value, f.name)) for f in dataclasses.fields(value)
        }
        try:
            return dataclasses.replace(value, **changes)
        except (TypeError, ValueError):  # init=False fields and the like: copy field by field
            clone = object.__new__(type(value))
            clone.__dict__.update(value.__dict__)
            for name, item in changes.items():
                object.__setattr__(clone, name, item)
            return clone
    return value


def _rebuild(original: Any, items: Any) -> Any:
    """Rebuild a subclass of tuple/list/dict (OrderedDict, ModelOutput, ...) from its items."""
    try:
        return type(original)(items)
    except Exception:  # a subclass with another constructor: fall back to the plain container
        if isinstance(original, dict):
            return dict(items)
        return type(items)(items) if not isinstance(original, tuple) else tuple(items)


def snapshot(value: Any, detach: bool) -> Any:
    """A copy-on-write snapshot of every tensor in ``value`` (structures rebuilt).

    A snapshot shares memory with the original until either is written to in place; then the
    writer copies first. Tensors without copy-on-write support (sparse, nested) are cloned.
    """
    if detach:
        return map_tensors(_detached_snapshot, value)
    return map_tensors(_snapshot, value)


def _snapshot(t: Tensor) -> Tensor:
    try:
        return torch._lazy_clone(t)
    except (NotImplementedError, RuntimeError):
        return t.clone()


def _detached_snapshot(t: Tensor) -> Tensor:
    return _snapshot(t.detach())


def clone(value: Any, detach: bool) -> Any:
    """A copy of ``value`` whose tensors own their memory (autograd graph kept unless detach)."""
    if detach:
        return map_tensors(_detached_clone, value)
    return map_tensors(torch.Tensor.clone, value)


def _detached_clone(t: Tensor) -> Tensor:
    return t.detach().clone()


# -- selectors: one part of a captured value (featwrap.Capture(select=...)) ----------------------
def select_output(value: Any, selector: Any, key: str) -> Any:
    """The part of a module's output named by ``selector`` (None: all of it)."""
    if selector is None:
        return value
    if callable(selector):
        return selector(value)
    try:
        if isinstance(selector, int) or isinstance(value, Mapping):
            return value[selector]
        return getattr(value, selector)
    except (IndexError, KeyError, AttributeError, TypeError) as error:
        raise LayerSpecError(
            f"select={selector!r} for layer {key!r} does not fit its output, {describe_structure(value)} "
            f"({type(error).__name__}: {error}). Pick an index, key or attribute it has, or pass "
            "a callable."
        ) from None


def select_input(args: tuple[Any, ...], kwargs: dict[str, Any], selector: Any, key: str) -> Any:
    """The argument named by ``selector`` (None: the first positional argument)."""
    if callable(selector):
        return selector(*args, **kwargs)
    if selector is None:
        if args:
            return args[0]
        if len(kwargs) == 1:
            return next(iter(kwargs.values()))
    elif isinstance(selector, int) and -len(args) <= selector < len(args):
        return args[selector]
    elif isinstance(selector, str) and selector in kwargs:
        return kwargs[selector]
    raise LayerSpecError(
        f"select={selector!r} for the input of layer {key!r} does not fit the call: "
        f"{len(args)} positional argument(s) and keyword argument(s) {sorted(kwargs)}. Pick a "
        "positional index or a keyword name it has, or pass a callable fn(*args, **kwargs)."
    )


def replace_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], selector: Any, new: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` with the argument named by ``selector`` (as for :func:`select_input`)
    replaced by ``new``. A callable selector names no argument: the caller checks that first."""
    if selector is None:
        selector = 0 if args else next(iter(kwargs))
    if isinstance(selector, int):
        items = list(args)
        items[selector] = new
        return tuple(items), kwargs
    return args, {**kwargs, selector: new}


def replace_output(value: Any, selector: Any, new: Any, key: str) -> Any:
    """A copy of the structure ``value`` with the part named by ``selector`` (an index, key or
    attribute, as for :func:`select_output`) replaced by ``new``; the original is unchanged."""
    if selector is None:
        return new
    if isinstance(value, list):
        items = list(value)
        items[selector] = new
        return items if type(value) is list else _rebuild(value, items)
    if isinstance(value, tuple):
        items = list(value)
        if hasattr(value, "_fields"):  # namedtuple: an index or a field name
            items[selector if isinstance(selector, int) else value._fields.index(selector)] = new
            return type(value)(*items)
        items[selector] = new
        return tuple(items) if type(value) is tuple else _rebuild(value, items)
    if isinstance(value, Mapping):
        mapped = dict(value)
        mapped[selector] = new
        return mapped if type(value) is dict else _rebuild(value, mapped)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return dataclasses.replace(value, **{selector: new})
        except (TypeError, ValueError):  # init=False fields and the like
            clone = object.__new__(type(value))
            clone.__dict__.update(value.__dict__)
            object.__setattr__(clone, selector, new)
            return clone
    raise EditError(
        f"Cannot write the edited part {selector!r} of layer {key!r} back into its output, "
        f"{describe_structure(value)}. Edit the whole output instead (a FeatureModel whose layer has no "
        "select), returning the new structure."
    )


def describe_structure(value: Any) -> str:
    """A short description of a structure for error messages: its type and its keys or length."""
    name = type(value).__name__
    if isinstance(value, Mapping):
        return f"a {name} with keys {list(value)[:8]}"
    if isinstance(value, (tuple, list)):
        return f"a {name} of length {len(value)}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"a {name} with fields {[f.name for f in dataclasses.fields(value)]}"
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {name}"

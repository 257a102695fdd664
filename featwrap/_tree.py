"""Walking the structures modules return: tensors inside tuples, lists, dicts, namedtuples and dataclasses.

Kept small and fast on purpose: the common case (a bare tensor) never enters the recursion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

Tensor = torch.Tensor


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

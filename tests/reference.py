"""An independent reference: hand-written hooks that deep-clone every output at the moment it is
returned. Shares no code with featwrap, so tests compare featwrap against it."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def deep_clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(deep_clone(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(deep_clone(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, deep_clone(v)) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: deep_clone(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    return value


@contextmanager
def recording(model: nn.Module, paths: list[str]) -> Iterator[dict[str, list[Any]]]:
    """Record a deep clone of every call's output of each path, as lists in call order."""
    calls: dict[str, list[Any]] = {p: [] for p in paths}
    handles = []
    for path in paths:
        module = model.get_submodule(path)

        def hook(mod: nn.Module, args: Any, out: Any, path: str = path) -> None:
            calls[path].append(deep_clone(out))

        handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def reference(
    model: nn.Module, paths: list[str], *args: Any, **kwargs: Any
) -> tuple[Any, dict[str, list[Any]]]:
    """Run ``model`` once; return its output and every call's cloned output per path."""
    with recording(model, paths) as calls:
        out = model(*args, **kwargs)
    return out, calls


def assert_same(actual: Any, expected: Any, exact: bool = True) -> None:
    """Structures equal, tensors equal (bitwise by default)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), type(actual)
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        if exact:
            assert torch.equal(actual, expected), (actual - expected).abs().max()
        else:
            torch.testing.assert_close(actual, expected)
        return
    if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(actual) is type(expected)
        for f in dataclasses.fields(expected):
            assert_same(getattr(actual, f.name), getattr(expected, f.name), exact)
        return
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)), type(actual)
        assert len(actual) == len(expected), (len(actual), len(expected))
        assert type(actual) is type(expected), (type(actual), type(expected))
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e, exact)
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected)
        for k in expected:
            assert_same(actual[k], expected[k], exact)
        return
    assert actual == expected


# -- the same model without in-place ops: the reference for gradients ---------------------------
_INPLACE_DUNDERS = {
    "__iadd__": torch.Tensor.__add__,
    "__isub__": torch.Tensor.__sub__,
    "__imul__": torch.Tensor.__mul__,
    "__itruediv__": torch.Tensor.__truediv__,
}


class NoInplace(torch.overrides.TorchFunctionMode):
    """Runs every functional in-place op (``x += y``, ``x.add_(y)``, ``F.relu(x, inplace=True)``)
    as its out-of-place form. Python rebinds the name to the result of ``+=`` and models use the
    return value of ``F.relu_``-style calls, so the model computes the same values without ever
    writing a tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _INPLACE_DUNDERS:
            return _INPLACE_DUNDERS[name](*args, **kwargs)
        if kwargs.get("inplace") is True:
            kwargs = {**kwargs, "inplace": False}
        elif name.endswith("_") and not name.endswith("__") and not name.startswith("_"):
            base = name[:-1]
            for owner in (torch, torch.nn.functional, torch._C._nn):
                if hasattr(owner, base):
                    return getattr(owner, base)(*args, **kwargs)
            if isinstance(args[0], torch.Tensor) and hasattr(torch.Tensor, base):
                return getattr(torch.Tensor, base)(*args, **kwargs)
            raise NotImplementedError(f"no out-of-place form for {name}")
        return func(*args, **kwargs)


class CountWrites(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops that write into one of their arguments (in-place ops and ``out=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func._schema.is_mutable:
            self.writes.append(str(func))
        return func(*args, **(kwargs or {}))


def without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with ``inplace=False`` on every module that has the flag; run it
    under :class:`NoInplace` for the functional in-place ops of its forward."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    return clone


def reference_grads(
    model: nn.Module, keys: list[str], x: torch.Tensor, target: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None], list[str]]:
    """Each key's value (the last call's output; ``path:input`` its first argument; keys of
    modules that did not run are left out) and the gradient of ``target(output)`` with respect to it, on an in-place-free copy of ``model``;
    with the list of writes that ran (expected empty)."""
    clean = without_inplace(model)
    values: dict[str, torch.Tensor] = {}
    handles = []
    for key in keys:
        path, _, part = key.partition(":")
        module = clean.get_submodule(path)
        if part == "input":
            handles.append(
                module.register_forward_pre_hook(lambda m, a, k=key: values.__setitem__(k, a[0]))
            )
        else:
            handles.append(
                module.register_forward_hook(lambda m, a, o, k=key: values.__setitem__(k, o))
            )
    counter = CountWrites()
    try:
        with NoInplace(), counter:
            out = clean(x)
    finally:
        for h in handles:
            h.remove()
    ran = [k for k in keys if k in values]  # a module the forward never called has no value
    grads = torch.autograd.grad(target(out), [values[k] for k in ran], allow_unused=True)
    return values, dict(zip(ran, grads, strict=True)), counter.writes


@contextmanager
def editing(
    model: nn.Module, edits: dict[str, Any], call: int | None = None
) -> Iterator[dict[str, list[Any]]]:
    """Hand-written hooks that replace a path's output by ``fn(output)`` (``"path:input"``: its
    first positional argument, with a pre-hook), on every call or on call number ``call`` only;
    records a deep clone of each edited value, per call."""
    calls: dict[str, list[Any]] = {k: [] for k in edits}
    counts = dict.fromkeys(edits, 0)
    handles = []
    for key, fn in edits.items():
        path, _, part = key.partition(":")
        module = model.get_submodule(path)

        def change(value: Any, key: str = key, fn: Any = fn) -> Any:
            count = counts[key]
            counts[key] += 1
            if call is None or call == count:
                value = fn(value)
            calls[key].append(deep_clone(value))
            return value

        if part == "input":
            handles.append(
                module.register_forward_pre_hook(lambda m, a, c=change: (c(a[0]), *a[1:]))
            )
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, c=change: c(o)))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()

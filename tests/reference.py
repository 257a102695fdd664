"""An independent reference: hand-written hooks that deep-clone every output at the moment it is
returned. Shares no code with featwrap, so tests compare featwrap against it."""

from __future__ import annotations

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

"""Options for speed on a GPU: autocast, channels_last, torch.compile, pinned and async copies.

Each is correct on the CPU too: autocast runs the CPU's own (bfloat16 or float16) autocast;
pinned memory is used only where CUDA is, so asking for it on a machine without CUDA does
nothing. Features computed on a GPU are copied to pinned host buffers without waiting
(``non_blocking``), and the rows carry a CUDA event that the writer waits for: the next batch's
forward is queued while the previous features travel to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featwrap._text import dtype_name
from featwrap.errors import FeatwrapValueError

__all__ = ["HostRows", "Speed", "to_host"]

_AUTOCAST = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Speed:
    """How the forwards run: ``autocast`` dtype, ``channels_last``, ``compile``, ``pin_memory``
    (``None``: when the device is CUDA)."""

    autocast: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    pin_memory: bool | None = None

    @classmethod
    def parse(
        cls,
        autocast: torch.dtype | str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        pin_memory: bool | None = None,
    ) -> Speed:
        """Check the options; ``autocast`` as a dtype or its name (``"bfloat16"``, ``"fp16"``)."""
        dtype: torch.dtype | None = None
        if autocast is not None:
            name = dtype_name(autocast)
            name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name)
            if name not in _AUTOCAST:
                raise FeatwrapValueError(
                    f"autocast={autocast!r} is not an autocast dtype; use 'bfloat16' (bf16) or "
                    "'float16' (fp16), or None for full precision."
                )
            dtype = _AUTOCAST[name]
        return cls(dtype, bool(channels_last), bool(compile), pin_memory)

    def spec(self) -> dict[str, Any]:
        """The options that change the values, for the run's spec (only the ones set)."""
        spec: dict[str, Any] = {}
        if self.autocast is not None:
            spec["autocast"] = dtype_name(self.autocast)
        if self.channels_last:
            spec["channels_last"] = True
        if self.compile:
            spec["compile"] = True
        return spec

    def pins(self, device: torch.device) -> bool:
        """Whether batches go through pinned memory: only for a CUDA device, where CUDA is."""
        wanted = device.type == "cuda" if self.pin_memory is None else self.pin_memory
        return bool(wanted) and device.type == "cuda" and torch.cuda.is_available()

    def wrap(
        self, forward: Callable[..., Mapping[str, Any]], device: torch.device
    ) -> Callable[..., Mapping[str, Any]]:
        """``forward`` compiled (with ``compile``), its 4-D inputs in channels_last (with
        ``channels_last``), run under autocast (with ``autocast``)."""
        if self.autocast is None and not self.channels_last and not self.compile:
            return forward
        run: Callable[..., Mapping[str, Any]] = torch.compile(forward) if self.compile else forward
        autocast, channels_last = self.autocast, self.channels_last

        def fast(*args: Any, **kwargs: Any) -> Mapping[str, Any]:
            if channels_last:
                args = tuple(_channels_last(a) for a in args)
                kwargs = {k: _channels_last(v) for k, v in kwargs.items()}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                return run(*args, **kwargs)

        return fast


class model_format:
    """The module's 4-D parameters and buffers in channels_last during the run, each in its own
    format again afterwards."""

    def __init__(self, module: nn.Module, speed: Speed) -> None:
        self.module, self.on = module, speed.channels_last
        self.formats: list[tuple[torch.Tensor, torch.memory_format]] = []

    def __enter__(self) -> None:
        if not self.on:
            return
        for tensor in [*self.module.parameters(), *self.module.buffers()]:
            if tensor.ndim == 4:
                last = tensor.is_contiguous(memory_format=torch.channels_last)
                own = torch.channels_last if last and not tensor.is_contiguous() else None
                self.formats.append((tensor, own or torch.contiguous_format))
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)

    def __exit__(self, *exc: object) -> None:
        for tensor, memory_format in self.formats:
            tensor.data = tensor.data.contiguous(memory_format=memory_format)
        self.formats = []


def _channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


class HostRows(dict[str, Any]):
    """Rows on the host; on CUDA, their copies may still be in flight until :meth:`wait`."""

    event: Any = None

    def wait(self) -> None:
        """Block until the device-to-host copies of these rows are done."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None


def to_host(value: torch.Tensor) -> torch.Tensor:
    """A contiguous host copy of ``value``: for a CUDA tensor, into pinned memory, without
    waiting (record a :class:`HostRows` event after the copies, and wait for it before use)."""
    if value.device.type != "cuda":
        return value.to("cpu").contiguous()
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    return host


def finish(rows: HostRows, device: torch.device) -> HostRows:
    """Record the event after ``rows``' copies (CUDA), so that a consumer can wait for them."""
    if device.type == "cuda":
        rows.event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        rows.event.record()
    return rows

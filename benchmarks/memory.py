"""Memory per forward: the peak, what stays alive with the result, and what stays after it is dropped.

On CPU, the bytes come from PyTorch's own allocator events, recorded by
``torch.profiler.profile(profile_memory=True)``: every allocation and free of tensor memory (not
Python objects, not ``tracemalloc``), with its time and size. Summing them in time order gives the
net bytes at any point since the profile began:

* ``peak``: the highest net during the call (activations included);
* ``alive``: the net when the call has returned and its result is still held;
* ``result``: the bytes of the distinct tensor storages in the result;
* ``retained``: the net once the result is dropped and ``gc.collect()`` has run. Zero means the
  method keeps nothing of the forward (a global dict of activations is not zero).

With grad enabled, ``alive - result`` is what the result's autograd graph holds (saved tensors),
which is freed with the result. On CUDA the same figures come from ``torch.cuda.memory_allocated``
and ``max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MemoryUse", "measure", "result_bytes"]

_MARK = "benchmarks.forward"


@dataclass(frozen=True)
class MemoryUse:
    """Bytes for one forward (see the module's docstring)."""

    peak: int
    alive: int
    result: int
    retained: int

    @property
    def held_by_graph(self) -> int:
        """Alive with the result beyond its own tensors (an autograd graph's saved tensors)."""
        return self.alive - self.result


def result_bytes(value: Any) -> int:
    """The bytes of the distinct storages of the tensors in ``value`` (dicts, tuples, lists)."""
    seen: dict[int, int] = {}
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(seen.values())


def measure(run: Callable[[], Any], device: torch.device | str = "cpu") -> MemoryUse:
    """Measure one call of ``run`` (call it a few times first: first calls allocate caches)."""
    if torch.device(device).type == "cuda":
        return _measure_cuda(run)
    return _measure_cpu(run)


def _measure_cuda(run: Callable[[], Any]) -> MemoryUse:
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run()
    torch.cuda.synchronize()
    alive = torch.cuda.memory_allocated() - before
    peak = torch.cuda.max_memory_allocated() - before
    size = result_bytes(out)
    del out
    gc.collect()
    torch.cuda.synchronize()
    return MemoryUse(peak, alive, size, torch.cuda.memory_allocated() - before)


def _measure_cpu(run: Callable[[], Any]) -> MemoryUse:
    from torch.profiler import ProfilerActivity, profile, record_function

    gc.collect()
    with (
        _native_stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        with record_function(_MARK):
            out = run()
        size = result_bytes(out)
        del out
        gc.collect()
    events, mark_end = _allocations(prof)
    net = peak = alive = 0
    for start, nbytes in events:
        net += nbytes
        if start <= mark_end:
            peak = max(peak, net)
            alive = net
    return MemoryUse(peak, alive, size, net)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Keep the profiler's native start/stop lines ("USDT: ... profiler_start", written to file
    descriptor 2 whatever the log level) out of the bench's output. Python errors still show:
    they are printed after the descriptor is restored."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to silence
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocations(prof: Any) -> tuple[list[tuple[int, int]], int]:
    """(time ns, +/- bytes) of every CPU allocation and free, in order; the end of the call."""
    from torch._C._profiler import _EventType

    found: list[tuple[int, int]] = []
    mark_end = -1
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            if fields.device.type == "cpu":
                found.append((event.start_time_ns, int(fields.alloc_size)))
        elif event.name == _MARK:
            mark_end = event.end_time_ns
        stack.extend(event.children)
    if mark_end < 0:
        raise RuntimeError("benchmarks: the profiler recorded no forward; cannot measure memory")
    found.sort()
    return found, mark_end

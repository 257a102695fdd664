"""Interleaved timing: every method of a case runs once per round, in a shuffled order, in one process.

Shared machines drift by tens of percent within minutes, so absolute times mean little. Each round
times every method back to back; the result of a comparison is the median over rounds of the
*paired* ratio ``t_a / t_b`` from the same round, which cancels the drift that the rounds share.

The clock: on CPU with one thread, :func:`time.thread_time` (the CPU time of the calling thread,
where all of the forward runs), so that the time a busy machine makes the process wait for a core
is not counted; otherwise (several threads, CUDA) wall time after a device synchronisation.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["Timings", "interleaved"]


@dataclass
class Timings:
    """Seconds per call of each method, one sample per round (each sample averages ``number`` calls)."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    number: int = 1

    @property
    def rounds(self) -> int:
        return min((len(s) for s in self.samples.values()), default=0)

    def median(self, name: str) -> float:
        """Median seconds per call of ``name``."""
        return statistics.median(self.samples[name])

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of ``t_a / t_b`` (paired within each round)."""
        return statistics.median(self._paired(a, b, lambda x, y: x / y))

    def ratio_interval(self, a: str, b: str) -> tuple[float, float]:
        """A 95% confidence interval of the median paired ratio ``t_a / t_b`` (order statistics).

        Distribution-free: the interval between the order statistics ``n/2 -+ 1.96 sqrt(n)/2`` of
        the paired ratios holds the true median with about 95% probability.
        """
        values = sorted(self._paired(a, b, lambda x, y: x / y))
        n = len(values)
        if n == 0:
            return math.nan, math.nan
        half = 1.96 * math.sqrt(n) / 2
        low = max(0, math.floor(n / 2 - half))
        high = min(n - 1, math.ceil(n / 2 + half) - 1)
        return values[low], values[high]

    def difference(self, a: str, b: str) -> float:
        """Median over rounds of ``t_a - t_b`` in seconds (paired within each round)."""
        return statistics.median(self._paired(a, b, lambda x, y: x - y))

    def _paired(self, a: str, b: str, op: Callable[[float, float], float]) -> list[float]:
        return [op(x, y) for x, y in zip(self.samples[a], self.samples[b], strict=True)]


def interleaved(
    methods: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    min_rounds: int = 7,
    min_sample_s: float = 0.002,
    warmup: int = 3,
    budget_s: float | None = None,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    seed: int = 0,
) -> Timings:
    """Time ``methods`` round-robin: each round runs every method ``number`` times, order shuffled.

    Args:
        methods: name -> a callable that runs one forward (its result is dropped at once).
        rounds: the most rounds to run.
        min_rounds: the fewest rounds, whatever ``budget_s`` says.
        min_sample_s: each sample lasts at least this long (``number`` calls of the fastest method),
            so that timer resolution and call jitter stay small.
        warmup: calls of each method before timing (first calls allocate, JIT, probe).
        budget_s: stop adding rounds once the estimated total time exceeds this.
        sync: called before reading the clock (``torch.cuda.synchronize`` on CUDA).
        clock: seconds, e.g. ``time.perf_counter`` (wall) or ``time.thread_time`` (CPU time).
        seed: of the shuffling, so reruns time in the same order.

    Returns:
        The per-round samples, in seconds per call. The garbage collector is off while timing
        (as in ``timeit``) and runs between rounds, outside the timed region.
    """
    if not methods:
        return Timings()
    names = list(methods)
    wait = sync or _nothing
    once: dict[str, float] = {}
    for name in names:
        fn = methods[name]
        for _ in range(max(warmup, 1)):
            wait()
            start = clock()
            fn()
            wait()
            once[name] = clock() - start
    fastest = max(min(once.values()), 1e-7)
    number = max(1, math.ceil(min_sample_s / fastest))
    per_round = number * sum(once.values())
    if budget_s is not None:
        rounds = max(min_rounds, min(rounds, int(budget_s / max(per_round, 1e-9))))
    timings = Timings({name: [] for name in names}, number)
    order = list(names)
    rng = random.Random(seed)
    gc_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            rng.shuffle(order)
            for name in order:
                fn = methods[name]
                wait()
                start = clock()
                for _ in range(number):
                    fn()
                wait()
                timings.samples[name].append((clock() - start) / number)
            if r % 8 == 7:
                gc.collect()
    finally:
        if gc_enabled:
            gc.enable()
    return timings


def _nothing() -> None:
    return None

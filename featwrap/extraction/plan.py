"""Which samples each forward reads: batches that never cross a shard boundary.

A shard is ``shard_size`` consecutive samples, the unit a process computes and commits. Batches are
cut inside each shard, so that one process or several give the very same batches, hence the same
values.

>>> [s.indices for s in plan_batches(n=7, shard_size=4, batch_size=3, shards=[0, 1])]
[[0, 1, 2], [3], [4, 5, 6]]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Step", "plan_batches"]


@dataclass(frozen=True)
class Step:
    """One batch: its shard, the shard's rows ``[start, stop)``, its sample indices, and whether
    it is the shard's last batch (after which the shard is committed)."""

    shard: int
    span: tuple[int, int]
    indices: list[int]
    last: bool


def plan_batches(n: int, shard_size: int, batch_size: int, shards: Iterable[int]) -> list[Step]:
    """The batches of ``shards`` (in the order given) over ``n`` samples."""
    steps: list[Step] = []
    for shard in shards:
        start, stop = shard * shard_size, min(n, (shard + 1) * shard_size)
        for a in range(start, stop, batch_size):
            b = min(stop, a + batch_size)
            steps.append(Step(shard, (start, stop), list(range(a, b)), b == stop))
    return steps

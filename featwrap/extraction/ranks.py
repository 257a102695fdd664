"""Several processes on PyTorch's own engine (``torch.distributed``, as started by ``torchrun``).

Each rank takes every ``world``-th shard (shard ``k`` goes to rank ``k % world``): no sample is
padded or read twice, and a shard holds the same rows however many processes run, so the output
does not depend on the number of processes (and a run may resume with another number).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from featwrap.errors import FeatwrapError

__all__ = ["Ranks", "join_ranks"]

T = TypeVar("T")

# A rank waits for the others at the start and at the end; they may take a while (a slow rank, a
# long shard). torchrun stops every rank when one fails, so a long timeout does not hang a crash.
_TIMEOUT = datetime.timedelta(hours=6)


@dataclass
class Ranks:
    """This process's place among the extraction processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shards(self, n_shards: int) -> list[int]:
        """The shards this rank computes."""
        return list(range(self.rank, n_shards, self.world))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def agree(self, error: BaseException | None) -> None:
        """Wait for every rank; if any failed, raise its error on every rank (no rank hangs).

        A :class:`FeatwrapError` is raised again as the same type and message on the others.
        """
        if not self.distributed:
            if error is not None:
                raise error
            return
        mine = None if error is None else (type(error), str(error), self.rank)
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        if error is not None:
            raise error
        for item in gathered:
            if item is not None:
                cls, message, rank = item
                if isinstance(cls, type) and issubclass(cls, FeatwrapError):
                    raise cls(message)
                raise RuntimeError(f"extraction failed on rank {rank}: {cls.__name__}: {message}")

    def first(self, work: Callable[[], T]) -> T:
        """Rank 0 does ``work``; every rank waits, and raises its error if it failed."""
        result: Any = None
        error = None
        if self.rank == 0:
            try:
                result = work()
            except Exception as e:
                error = e
        self.agree(error)
        return result  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()
            self.created_group = False


def join_ranks(device: torch.device | None) -> Ranks:
    """This process's :class:`Ranks`: from an initialized process group, else from ``torchrun``'s
    environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; a group is created: gloo on CPU, nccl
    on CUDA), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local)
    if world <= 1 or not dist.is_available():
        return Ranks()
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), local, created_group=True)

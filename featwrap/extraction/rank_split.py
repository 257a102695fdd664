"""An ``IterableDataset`` that splits itself between ``torchrun`` ranks, when it says how.

A stream is cut into shards of ``shard_size`` consecutive samples, shard ``k`` computed by rank
``k % world``. Only the stream knows its samples, so by default every rank reads (and hashes)
all of it and computes its own shards: the reading is repeated on every rank. Tar shards avoid
that (each rank opens only its files); so does a stream that declares how to split itself, by
PyTorch's sharding protocol: a DataPipe graph with a ``sharding_filter()`` (or any node with
``apply_sharding``, as torchdata's have). Each rank then reads its own part, set with
``torch.utils.data.graph_settings.apply_sharding(copy, world, rank)`` on a copy (the dataset
given is left as it is); rank ``r``'s ``j``-th block of ``shard_size`` samples is shard
``j * world + r``.

What a rank's part holds is the dataset's choice and depends on the number of ranks: a resume
must use the same number (recorded in the run's spec), rows come in block order, and a sample
without a ``"__key__"`` is named by its rank and its position in that rank's part (``"1:7"``).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["rank_part", "split_protocol"]


def split_protocol(dataset: Any) -> str | None:
    """``"apply_sharding"`` when ``dataset`` is a DataPipe graph with a node that can shard it
    (``sharding_filter()``), else ``None`` (every rank reads the whole stream)."""
    from torch.utils.data import IterDataPipe

    if not isinstance(dataset, IterDataPipe):
        return None
    from torch.utils.data.graph import traverse_dps
    from torch.utils.data.graph_settings import get_all_graph_pipes

    pipes = get_all_graph_pipes(traverse_dps(dataset))
    return (
        "apply_sharding"
        if any(callable(getattr(p, "apply_sharding", None)) for p in pipes)
        else None
    )


def rank_part(dataset: Any, rank: int, world: int) -> Any:
    """A copy of ``dataset`` that yields rank ``rank``'s part of ``world``."""
    from torch.utils.data.graph_settings import apply_sharding

    part = copy.deepcopy(dataset)
    apply_sharding(part, world, rank)
    return part

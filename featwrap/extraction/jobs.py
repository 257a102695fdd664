"""What both extraction jobs share: the index-based one (``run.py``) and the shard-by-shard one
(``stream_run.py``).

- :func:`claimed_output`: the ranks joined (``torchrun``), each on its own GPU, and the output
  directory held by rank 0 for the whole job;
- :func:`spec_mismatch`: every rank must be started with the arguments of rank 0;
- :func:`model_spec` and :func:`model_manifest`: the model's part of the run's spec (what a resume
  must match) and of the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featwrap._text import dtype_name
from featwrap._version import __version__
from featwrap.extraction.errors import ResumeMismatchError
from featwrap.extraction.lock import OutputLock
from featwrap.extraction.pool import Pool, pool_name
from featwrap.extraction.ranks import Ranks, join_ranks
from featwrap.extraction.speed import Speed
from featwrap.extraction.store import FEATURES_FILE, Output, describe_changes
from featwrap.extraction.weights import WeightsDigest, parameters_digest

__all__ = [
    "ModelRecord",
    "claimed_output",
    "model_manifest",
    "model_spec",
    "parameters_digest",
    "spec_mismatch",
]


@dataclass
class ModelRecord:
    """The model of a job and what is recorded of it."""

    module: nn.Module
    name: str
    weights: str
    pretrained: bool | None
    preset: Any = None
    sha256: str | None = None
    _hashing: WeightsDigest | None = field(default=None, repr=False, compare=False)

    def start_digest(self) -> None:
        """Start hashing the weights on a thread, as they are now: before a run puts them in
        channels_last (hashing them in that format would first copy every 4-D one back to the
        contiguous layout) or moves them; :meth:`digest` waits for it."""
        if self.sha256 is None and self._hashing is None:
            self._hashing = WeightsDigest(self.module)

    def digest(self) -> str:
        """The weights' sha256, computed once (on the thread :meth:`start_digest` started)."""
        if self.sha256 is None:
            hashing, self._hashing = self._hashing, None
            self.sha256 = parameters_digest(self.module) if hashing is None else hashing.result()
        return self.sha256


@contextmanager
def claimed_output(
    root: Path, device: torch.device, module: nn.Module
) -> Iterator[tuple[Output, Ranks, torch.device]]:
    """``(output, ranks, device)`` for a job writing to ``root``: under ``torchrun`` on CUDA each
    rank uses ``cuda:LOCAL_RANK`` (``module`` moved there); rank 0 holds the output's lock until
    the job ends, and the process group made here is closed."""
    ranks = join_ranks(device)
    try:
        if ranks.distributed and device.type == "cuda":
            device = torch.device("cuda", ranks.local_rank)
            module.to(device)
        lock = OutputLock(root)  # one writer per output: rank 0 holds it for the job
        ranks.first(lock.acquire)
        try:
            yield Output(root), ranks, device
        finally:
            lock.release()
    finally:
        ranks.close()


def spec_mismatch(first: dict[str, Any], mine: dict[str, Any], rank: int) -> Exception | None:
    """The error of a rank started with other arguments than rank 0 (``first``), if it was."""
    if first == mine:
        return None
    return ResumeMismatchError(
        f"Rank {rank} was started with other arguments or data than rank 0 "
        f"({describe_changes(first, mine)}). Start every process with the same arguments."
    )


def model_spec(
    model: ModelRecord,
    paths: dict[str, str],
    pools: dict[str, Pool],
    dtype: torch.dtype | None,
    speed: Speed,
) -> dict[str, Any]:
    """What of the model and its options determines the values (a resume must match it)."""
    return {
        "model": model.name,
        "weights": model.weights,
        "parameters_sha256": model.digest(),
        "layers": dict(paths),
        "pool": {k: pool_name(p) for k, p in pools.items()},
        "dtype": None if dtype is None else dtype_name(dtype),
        **speed.spec(),
    }


def model_manifest(
    model: ModelRecord, paths: dict[str, str], pools: dict[str, Pool]
) -> dict[str, Any]:
    """The manifest's entries about the file, the versions, the model and its layers."""
    return {
        "format": "featwrap-features/1",
        "file": FEATURES_FILE,
        "featwrap": __version__,
        "torch": torch.__version__,
        "model": model.name,
        "weights": model.weights,
        "pretrained": model.pretrained,
        "layers": {k: {"path": p, "pool": pool_name(pools[k])} for k, p in paths.items()},
    }

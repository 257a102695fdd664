"""Data read shard by shard: tar shards, an IterableDataset, or a Dataset of dict samples.

A :class:`Stream` cuts its samples into shards, the unit a process computes, commits and skips
on resume: one shard per tar file; for an ``IterableDataset``, ``shard_size`` consecutive samples
of the stream; for a map-style Dataset, ``shard_size`` consecutive indices. Each sample has a key
(the tar key, a sample's ``"__key__"``, else its position) recorded with its row.

:class:`ShardBatches` is what a DataLoader's workers iterate: each worker takes whole shards
(tar shards are split between workers and ``torchrun`` ranks; a single stream is read by one
worker, every rank reading it and computing its own shards, unless it splits itself between the
ranks: ``rank_split.py``), batches them inside each shard (so
that the batches, hence the values, never depend on the number of workers or processes) and
yields tagged items:

- ``("batch", shard, keys, batch, failed)``: ``failed`` the ``(key, error)`` of unreadable samples;
- ``("end", shard, identity)``: the shard is complete (``identity``: what its file was);
- ``("error", shard, message)``: the shard cannot be read (not a tar, truncated);
- ``("seen", shard, keys, identity)``: a shard of a single stream that is not computed here, read
  through (a committed one is checked against what was recorded: its keys and a digest of its
  samples' content, the ``identity`` of a single stream's shard);
- ``("stop", shards)``: the stream ended after ``shards`` shards (of this rank's part, when the
  stream splits itself).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from featwrap.extraction.errors import DataError
from featwrap.extraction.identity import _hash_into as hash_into
from featwrap.extraction.inputs import is_keyword_batch, pad_collate
from featwrap.extraction.rank_split import rank_part, split_protocol
from featwrap.extraction.tars import decode_sample, is_tar_spec, read_tar, tar_paths

__all__ = ["ShardBatches", "Stream", "at_samples", "open_stream"]

Transform = Callable[[Any], Any]
Collate = Callable[[list[Any]], Any]


@dataclass
class Stream:
    """Samples read shard by shard, and what the manifest says about them."""

    kind: str  # "tar", "iterable" or "dicts"
    description: str
    shard_size: int
    files: list[Path] = field(default_factory=list)  # tar shards
    dataset: Any = None  # the IterableDataset or map-style Dataset
    transform: Transform | None = None
    transform_name: str | None = None
    collate_fn: Collate = pad_collate
    total: int | None = None  # samples, when known
    batch_size: int | None = None
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    #: how an IterableDataset splits itself between ranks (``rank_split.py``), if it can
    split: str | None = None

    @property
    def n_shards(self) -> int | None:
        """The number of shards, when known before reading (not for an IterableDataset)."""
        if self.kind == "tar":
            return len(self.files)
        if self.kind == "dicts" and self.total is not None:
            return -(-self.total // self.shard_size)
        return None

    def shard_name(self, shard: int) -> str:
        if self.kind == "tar":
            return str(self.files[shard])
        stop = (shard + 1) * self.shard_size
        if self.total is not None:
            stop = min(stop, self.total)
        return f"samples {shard * self.shard_size}-{stop - 1}"

    def identity(self, shard: int) -> dict[str, Any] | None:
        """What a tar shard's file was (size, modification time): a changed file is noticed."""
        if self.kind != "tar":
            return None
        stat = self.files[shard].stat()
        return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def spec(self) -> dict[str, Any]:
        """What determines the rows: a resumed run must match it."""
        spec: dict[str, Any] = {"data": self.description, "transform": self.transform_name}
        if self.kind == "tar":
            spec["shards"] = [str(p) for p in self.files]
        else:
            spec["shard_size"] = self.shard_size
        return spec


def open_stream(
    data: Any,
    transform_for_images: Callable[[], Transform],
    shard_size: int,
    stable_repr: Callable[[Any], str],
) -> Stream | None:
    """A :class:`Stream` for tar shards, an IterableDataset or a Dataset of dict samples (also
    inside a DataLoader); ``None`` for the other inputs, which extraction reads by index."""
    if is_tar_spec(data):
        files = tar_paths(data)
        transform = transform_for_images()
        first = str(data if isinstance(data, (str, os.PathLike)) else files[0])
        return Stream(
            "tar",
            f"tar shards {first!r} ({len(files)} files)",
            shard_size,
            files=files,
            transform=transform,
            transform_name=stable_repr(transform),
        )
    stream: Stream | None = None
    dataset: Any = data.dataset if isinstance(data, DataLoader) else data
    collate = data.collate_fn if isinstance(data, DataLoader) else None
    user_collate = collate if collate is not None and not _is_default(collate) else None
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if isinstance(dataset, IterableDataset):
        total = _length(dataset)
        shown = f"{total} samples" if total is not None else "a stream"
        stream = Stream("iterable", f"{name} ({shown})", shard_size, dataset=dataset, total=total)
        stream.split = split_protocol(dataset)
    elif _has_dict_samples(dataset, user_collate):
        n = len(dataset)
        stream = Stream("dicts", f"{name} ({n} samples)", shard_size, dataset=dataset, total=n)
    if stream is None:
        return None
    own = getattr(dataset, "transform", None)
    stream.transform_name = None if own is None else stable_repr(own)
    if user_collate is not None:
        stream.collate_fn = user_collate
    if isinstance(data, DataLoader):
        stream.batch_size = data.batch_size
        stream.loader_kwargs = {"num_workers": data.num_workers}
    return stream


def _is_default(collate: Any) -> bool:
    from torch.utils.data import default_collate

    return collate is default_collate or getattr(collate, "__name__", "") == "default_collate"


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except (TypeError, NotImplementedError):
        return None


def _has_dict_samples(dataset: Any, collate: Collate | None) -> bool:
    """Whether a map-style dataset's first sample (collated) is a dict, alone or first of a
    tuple; samples that cannot be read now are left to the index-based path."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        return False
    try:
        if len(dataset) == 0:
            return False
        first = dataset[0]
    except Exception:
        return False
    if isinstance(first, Mapping) or (
        isinstance(first, (tuple, list)) and first and isinstance(first[0], Mapping)
    ):
        return True
    if collate is None:
        return False
    try:
        return is_keyword_batch(collate([first]))
    except Exception:
        return False


class ShardBatches(IterableDataset[tuple[Any, ...]]):
    """The tagged items of the shards ``todo`` (see the module docstring), for a DataLoader."""

    def __init__(
        self, stream: Stream, batch_size: int, done: frozenset[int], rank: int = 0, world: int = 1
    ) -> None:
        self.stream, self.batch_size = stream, batch_size
        self.done, self.rank, self.world = done, rank, world
        #: each rank reads only its part of the stream (block ``j`` is shard ``j * world + rank``)
        self.split = stream.split is not None and world > 1

    def of_rank(self, shard: int) -> bool:
        """Whether ``shard`` is this rank's (``k % world``)."""
        return shard % self.world == self.rank

    def computed(self, shard: int) -> bool:
        """Whether this process computes ``shard``: one of its rank's, not committed before."""
        return self.of_rank(shard) and shard not in self.done

    @property
    def todo(self) -> list[int]:
        """The shards to compute here, when their number is known."""
        return [k for k in range(self.stream.n_shards or 0) if self.computed(k)]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.stream.kind == "iterable":
            if worker == 0:
                yield from self._single_stream()
            return
        for shard in self.todo[worker::workers]:
            yield from self._shard(shard)

    def _shard(self, shard: int) -> Iterator[tuple[Any, ...]]:
        samples = self._samples(shard)
        try:
            yield from self._batches(shard, samples)
        except DataError as error:
            yield ("error", shard, str(error))
            return
        yield ("end", shard, self.stream.identity(shard))

    def _samples(self, shard: int) -> Iterator[tuple[str, Any, str | None]]:
        """``(key, sample, error)``: a sample that cannot be decoded becomes its error."""
        stream = self.stream
        if stream.kind == "tar":
            for key, files in read_tar(stream.files[shard]):
                yield _guarded(key, decode_sample, key, files, stream.transform)
            return
        start = shard * stream.shard_size
        for index in range(start, min(start + stream.shard_size, stream.total or 0)):
            yield _guarded(str(index), stream.dataset.__getitem__, index)

    def _batches(
        self, shard: int, samples: Iterator[tuple[str, Any, str | None]]
    ) -> Iterator[tuple[Any, ...]]:
        keys: list[str] = []
        good: list[Any] = []
        failed: list[tuple[str, str]] = []
        for key, sample, error in samples:
            if error is None:
                keys.append(key)
                good.append(sample)
            else:
                failed.append((key, error))
            if len(keys) + len(failed) == self.batch_size:
                yield self._batch(shard, keys, good, failed)
                keys, good, failed = [], [], []
        if keys or failed:
            yield self._batch(shard, keys, good, failed)

    def _batch(
        self, shard: int, keys: list[str], good: list[Any], failed: list[tuple[str, str]]
    ) -> tuple[Any, ...]:
        try:
            batch = self.stream.collate_fn(good) if good else None
        except DataError as error:  # samples that cannot be batched together
            raise at_samples(error, keys, self.stream.shard_name(shard)) from error
        return ("batch", shard, keys, batch, failed)

    def _single_stream(self) -> Iterator[tuple[Any, ...]]:
        """Read the whole stream (or this rank's part); batch the shards this rank computes,
        pass over the others."""
        size = self.stream.shard_size
        block, keys, content = 0, [], hashlib.sha256()
        chunk: list[tuple[str, Any, str | None]] = []
        dataset = self.stream.dataset
        if self.split:
            dataset = rank_part(dataset, self.rank, self.world)
        shard = self._block_shard(0)
        for position, sample in enumerate(_read(dataset, self.stream.description)):
            key = sample.get("__key__") if isinstance(sample, Mapping) else None
            where = f"{self.rank}:{position}" if self.split else str(position)
            key = str(key) if key is not None else where
            if isinstance(sample, Mapping) and "__key__" in sample:
                sample = {k: v for k, v in sample.items() if k != "__key__"}
            content.update(key.encode() + b"\0")
            hash_into(content, sample)
            keys.append(key)
            if self.computed(shard):
                chunk.append((key, sample, None))
            if len(keys) == size:
                yield from self._close_chunk(shard, chunk, keys, content.hexdigest())
                block, keys, content, chunk = block + 1, [], hashlib.sha256(), []
                shard = self._block_shard(block)
        if keys:
            yield from self._close_chunk(shard, chunk, keys, content.hexdigest())
            block += 1
        yield ("stop", block)

    def _block_shard(self, block: int) -> int:
        """The shard of the stream's ``block``-th ``shard_size`` samples read here."""
        return block * self.world + self.rank if self.split else block

    def _close_chunk(
        self, shard: int, chunk: list[tuple[str, Any, str | None]], keys: list[str], content: str
    ) -> Iterator[tuple[Any, ...]]:
        identity = {"content_sha256": content}
        if chunk:
            yield from self._batches(shard, iter(chunk))
            yield ("end", shard, identity)
        else:
            yield ("seen", shard, keys, identity)


def at_samples(error: DataError, keys: list[str], shard: str) -> DataError:
    """``error``, naming the samples it is about and saying that what was written is kept."""
    shown = ", ".join(repr(k) for k in keys[:3]) + (", ..." if len(keys) > 3 else "")
    return DataError(f"{error} (samples {shown} of {shard}; the shards already written are kept)")


def _read(dataset: Any, description: str) -> Iterator[Any]:
    """The samples of ``dataset``; an error it raises becomes a :class:`DataError` saying how
    far it got."""
    iterator, count = iter(dataset), 0
    while True:
        try:
            sample = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            raise DataError(
                f"{description} failed after {count} samples ({type(error).__name__}: {error}). "
                "The shards already written are kept: fix the stream and run again to resume."
            ) from error
        count += 1
        yield sample


def _guarded(key: str, read: Callable[..., Any], *args: Any) -> tuple[str, Any, str | None]:
    try:
        return key, read(*args), None
    except Exception as error:
        return key, None, f"{type(error).__name__}: {error}".replace("\n", " ")

"""Extraction shard by shard: tar shards, IterableDatasets and dict (token) samples.

The counterpart of ``run.py``'s index-based job for data read as a :class:`Stream`: a DataLoader
over :class:`ShardBatches` yields each shard's batches; their rows go to the shard's piece
(``pieces.py``), committed at the shard's end. Resuming skips the committed shards (a tar shard
whose file changed since, or a stream whose committed samples changed, is an error); under
``torchrun`` shard ``k`` goes to rank ``k % world``, so the output does not depend on the number
of processes. What is checked of the data on resume, and when, is told in ``resume.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from featwrap._text import dtype_name
from featwrap.errors import FeatwrapValueError
from featwrap.extraction.errors import DataError, ResumeMismatchError, ResumeWarning
from featwrap.extraction.inputs import Parameters, split_batch
from featwrap.extraction.jobs import claimed_output, spec_mismatch
from featwrap.extraction.load import Features, load_features
from featwrap.extraction.pieces import MemoryPieces, PieceWriter, assemble, done_shards
from featwrap.extraction.pool import Pool
from featwrap.extraction.progress import Progress
from featwrap.extraction.ranks import Ranks
from featwrap.extraction.resume import check_stream, stream_digest
from featwrap.extraction.rows import Forward
from featwrap.extraction.speed import HostRows, Speed, finish, to_host
from featwrap.extraction.store import Output, write_atomic
from featwrap.extraction.streams import ShardBatches, Stream, at_samples
from featwrap.extraction.tokens import Ragged, token_pool

__all__ = ["StreamJob"]

#: ``(shard, keys, rows, targets)`` written once its device-to-host copies are done
_Pending = tuple[int, list[str], HostRows, "list[int] | None"]


@dataclass
class StreamJob:
    stream: Stream
    forward: Forward
    paths: dict[str, str]
    pools: dict[str, Pool]
    dtype: torch.dtype | None
    device: torch.device
    batch_size: int
    num_workers: int | None
    on_error: str
    progress: bool | None
    parameters: Parameters
    speed: Speed
    #: the model's part of the spec and of the manifest (``run.py``)
    spec: dict[str, Any]
    manifest: dict[str, Any]
    #: the content digest of each shard of a whole stream read here (every rank reads it all)
    read: dict[int, str] = field(default_factory=dict)

    # -- in memory -------------------------------------------------------------------------------
    def in_memory(self) -> Features:
        sink = MemoryPieces(list(self.paths))
        n_shards = self._run(ShardBatches(self.stream, self.batch_size, frozenset()), sink, {})
        if not any(m["keys"] for m in sink.markers.values()):
            raise DataError(f"No sample of {self.stream.description} could be read.")
        ordered = [sink.markers.get(k, {"keys": [], "targets": [], "skipped": []})
                   for k in range(n_shards)]  # fmt: skip
        ids = [key for m in ordered for key in m["keys"]]
        skipped = [s for m in ordered for s in m["skipped"]]
        tensors = sink.tensors(n_shards)
        manifest = self._manifest({"run": {**self.spec, **self.stream.spec()}})
        for key, value in tensors.items():
            data = value.values() if value.is_nested else value
            shape = [len(ids), None, *data.shape[1:]] if value.is_nested else list(data.shape)
            manifest["layers"][key].update(shape=shape, dtype=dtype_name(data.dtype))
        manifest.update(rows=len(ids), ids=ids, skipped=skipped)
        if all(m["targets"] is not None for m in ordered):
            manifest["targets"] = [t for m in ordered for t in m["targets"]]
        return Features(tensors, ids, skipped, manifest)

    # -- on disk ---------------------------------------------------------------------------------
    def to_directory(self, root: Path, overwrite: bool, module: torch.nn.Module) -> Features:
        """Write to ``root`` (``module``: the model, moved to this rank's GPU under torchrun)."""
        with claimed_output(root, self.device, module) as (output, ranks, device):
            self.device = device
            return self._locked(output, overwrite, ranks)

    def _locked(self, output: Output, overwrite: bool, ranks: Ranks) -> Features:
        spec = {**self.spec, **self.stream.spec()}
        if self.stream.split is not None and ranks.distributed:  # each rank's part: its own
            spec["rank_split"] = {"by": self.stream.split, "ranks": ranks.world}
        asked = self.batch_size
        opened = ranks.first(lambda: self._open(output, spec, overwrite))
        (state, batch_size), first = ranks.broadcast((opened, spec))
        ranks.agree(spec_mismatch(first, spec, ranks.rank))
        if state == "complete":
            return load_features(output.root)
        self.batch_size = batch_size  # the run's own: rows as in one uninterrupted run
        done = done_shards(output)
        error: Exception | None = None
        n_shards = 0
        batches = ShardBatches(self.stream, self.batch_size, frozenset(done), *ranks_of(ranks))
        self.read = {}
        try:
            n_shards = self._run(batches, PieceWriter(output, list(self.paths)), done)
        except Exception as e:
            error = e
        try:
            ranks.agree(error)
        except ResumeMismatchError:  # the stream, read through, differs from the shards written
            if not (overwrite and done):
                raise
            ranks.first(output.remove_run)
            self.batch_size = asked
            return self._locked(output, overwrite, ranks)  # anew: nothing to differ from
        if ranks.distributed and self.stream.kind == "iterable" and not batches.split:
            _check_same_stream(ranks.gather(self.read))
        if batches.split:  # rank r's j-th block is shard j * world + r
            counts = ranks.gather(n_shards)
            shards = sorted(j * ranks.world + r for r, c in enumerate(counts) for j in range(c))
        else:
            shards = list(range(ranks.broadcast(n_shards)))
        ranks.first(lambda: self._finalize(output, shards, spec))
        return load_features(output.root)

    def _open(self, output: Output, spec: dict[str, Any], overwrite: bool) -> tuple[str, int]:
        """Rank 0: check the directory against ``spec``; start the run in it if it is new.
        Returns the state and the run's batch size (a resume keeps it: padding changes values)."""
        state = output.start(spec, overwrite)
        digest = stream_digest(self.stream)
        if state != "new":
            try:
                check_stream(output, self.stream, state, digest)
            except ResumeMismatchError:  # the data changed since
                if not overwrite:
                    raise
                output.remove_run()
                state = "new"
        if state == "new":
            output.shards.mkdir(parents=True, exist_ok=True)
            record: dict[str, Any] = {"spec": spec, "layout": None, "pieces": True}
            record["batch_size"] = self.batch_size
            if digest is not None:
                record["content_sha256"] = digest
            write_atomic(output.run_json, _dump(record))
        if state != "running":
            return state, self.batch_size
        batch_size = int(json.loads(output.run_json.read_text()).get("batch_size", self.batch_size))
        if batch_size != self.batch_size:
            warnings.warn(
                f"Resuming with the run's batch size {batch_size}, not {self.batch_size}: the "
                "batches (their padding) must be those of the run being resumed.",
                ResumeWarning,
                stacklevel=5,
            )
        return state, batch_size

    def _finalize(self, output: Output, shards: list[int], spec: dict[str, Any]) -> None:
        """Rank 0, once every shard is committed: the features file, then the manifest."""
        made = assemble(output, list(self.paths), shards)
        manifest = self._manifest({"run": spec})
        digest = output.record().get("content_sha256")
        if digest is not None:
            manifest["content_sha256"] = digest
        for key, entry in made["layers"].items():
            manifest["layers"][key].update(entry)
        ids, skipped = made["ids"], made["skipped"]
        manifest.update(samples=len(ids) + len(skipped), rows=len(ids), ids=ids, skipped=skipped)
        if made["targets"] is not None:
            manifest["targets"] = made["targets"]
        manifest["shards"] = made["shards"]
        write_atomic(output.manifest, _dump(manifest))
        shutil.rmtree(output.work, ignore_errors=True)

    def _manifest(self, extra: dict[str, Any]) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(json.dumps(self.manifest))  # a deep copy
        manifest.update(data=self.stream.description, transform=self.stream.transform_name)
        manifest.update(extra)
        return manifest

    # -- the loop --------------------------------------------------------------------------------
    def _run(
        self,
        batches: ShardBatches,
        sink: PieceWriter | MemoryPieces,
        done: dict[int, dict[str, Any]],
    ) -> int:
        """Compute and write the shards' rows; the number of shards of the data."""
        loader = DataLoader(
            batches,
            batch_size=None,
            collate_fn=_same,
            num_workers=self._workers(batches),
            pin_memory=self.speed.pins(self.device),
        )
        bar = Progress(batches, done, self.progress)
        try:
            n_shards = self._loop(loader, batches, sink, done, bar)
            bar.finished()
            return n_shards
        finally:
            bar.close()

    def _workers(self, batches: ShardBatches) -> int:
        wanted = self.num_workers
        if wanted is None:
            wanted = self.stream.loader_kwargs.get("num_workers")
        if self.stream.kind == "iterable":  # one stream: one reader
            return min(1, wanted or 0)
        if wanted is None:
            wanted = min(4, os.cpu_count() or 1)
        return min(wanted, len(batches.todo))

    def _loop(
        self,
        loader: DataLoader[Any],
        batches: ShardBatches,
        sink: PieceWriter | MemoryPieces,
        done: dict[int, dict[str, Any]],
        bar: Progress,
    ) -> int:
        n_shards = self.stream.n_shards
        pending: _Pending | None = None
        for item in loader:
            kind, shard = item[0], item[1]
            if kind == "batch":
                keys, batch, failed = item[2], item[3], item[4]
                self._failed(sink, shard, failed)
                if batch is not None:
                    try:
                        rows = self._rows(batch, len(keys))
                    except DataError as error:  # the model cannot take these samples
                        raise at_samples(error, keys, self.stream.shard_name(shard)) from error
                    if pending is not None:  # written while this batch's features travel
                        _write(sink, pending)
                    pending = (shard, keys, rows, _targets(batch, len(keys)))
                bar.update(len(keys) + len(failed))
                continue
            if pending is not None:
                _write(sink, pending)
                pending = None
            if kind in ("end", "seen") and self.stream.kind == "iterable":
                self.read[shard] = item[-1]["content_sha256"]
            if kind == "end":
                sink.commit(shard, self.stream.shard_name(shard), item[2])
            elif kind == "error":
                self._unreadable_shard(sink, shard, item[2])
            elif kind == "seen":
                self._check_seen(shard, item[2], item[3], done.get(shard))
                bar.seen(shard, len(item[2]))
            elif kind == "stop":
                n_shards = shard
        if pending is not None:
            _write(sink, pending)
        if n_shards is None:
            raise DataError(f"{self.stream.description} ended before it could be read.")
        self._check_end(n_shards, done, batches)
        return n_shards

    def _failed(
        self, sink: PieceWriter | MemoryPieces, shard: int, failed: list[tuple[str, str]]
    ) -> None:
        for key, problem in failed:
            where = self.stream.shard_name(shard)
            if self.on_error == "fail":
                raise DataError(
                    f"Cannot read sample {key!r} ({where}): {problem}. Fix or remove it, or pass "
                    "on_error='skip' (--on-error skip) to leave it out; the shards already "
                    "written are kept."
                )
            sink.skip(shard, [{"id": key, "shard": where, "error": problem}])

    def _unreadable_shard(self, sink: PieceWriter | MemoryPieces, shard: int, message: str) -> None:
        if self.on_error == "fail":
            raise DataError(message)
        sink.discard(shard)
        sink.skip(shard, [{"id": None, "shard": self.stream.shard_name(shard), "error": message}])
        sink.commit(shard, self.stream.shard_name(shard), self.stream.identity(shard))

    def _check_seen(
        self,
        shard: int,
        keys: list[str],
        identity: dict[str, Any],
        marker: dict[str, Any] | None,
    ) -> None:
        """A committed shard of a single stream, read through again: the same samples?"""
        if marker is None:
            return  # another rank's shard
        recorded = [*marker["keys"], *(s["id"] for s in marker["skipped"])]
        if sorted(recorded) != sorted(keys):
            change = f"its samples were {_few(recorded)}, now {_few(keys)}"
        elif marker["identity"] != identity:
            change = f"the same keys {_few(keys)}, but their content differs"
        else:
            return
        raise ResumeMismatchError(
            f"The stream changed since shard {shard} was written: {change}. Resume with the "
            "same data, or pass overwrite=True (--overwrite) to start over."
        )

    def _check_end(
        self, n_shards: int, done: dict[int, dict[str, Any]], batches: ShardBatches
    ) -> None:
        """``n_shards``: of the stream, or of this rank's part when it splits itself."""
        if batches.split:
            beyond = [k for k in done if batches.of_rank(k) and k // batches.world >= n_shards]
        else:
            beyond = [k for k in done if k >= n_shards]
        if beyond:
            raise ResumeMismatchError(
                f"{self.stream.description} ended after {n_shards} shards, but the run being "
                f"resumed had written shard {max(beyond)}: the stream ended early or changed. "
                "Resume with the same data, or pass overwrite=True (--overwrite) to start over."
            )
        total, size = self.stream.total, self.stream.shard_size
        whole = self.stream.kind == "iterable" and not batches.split
        if whole and total is not None and n_shards != -(-total // size):
            raise DataError(
                f"{self.stream.description} ended after {n_shards} shards of {size} samples, but "
                f"its len() is {total}: the stream ended early (or __len__ is wrong). The shards "
                "written are kept; fix the stream or its __len__ and run again."
            )

    def _rows(self, batch: Any, n: int) -> HostRows:
        inputs = split_batch(batch, self.parameters).to(self.device)
        with torch.no_grad():
            out = self.forward(*inputs.args, **inputs.kwargs)
            rows = HostRows()
            for key, pool in self.pools.items():
                value = token_pool(pool, out[key], inputs.mask, key)
                data = value.values if isinstance(value, Ragged) else value
                if not isinstance(value, Ragged) and (data.ndim == 0 or data.shape[0] != n):
                    raise FeatwrapValueError(
                        f"Layer {key!r} gives {tuple(data.shape)} for a batch of {n} samples: "
                        "its first dimension is not the batch, so it cannot be stored as one row "
                        "per sample. Pass a pool callable for it that returns (batch, ...)."
                    )
                if self.dtype is not None and data.is_floating_point():
                    data = data.to(self.dtype)
                host = to_host(data.detach())
                rows[key] = Ragged(host, value.lengths) if isinstance(value, Ragged) else host
            return finish(rows, self.device)


def _check_same_stream(read: list[dict[int, str]]) -> None:
    """Every rank read the whole stream: the same shards, of the same content (each rank's
    ``{shard: content digest}``, in rank order)."""
    for rank, shards in enumerate(read[1:], 1):
        differ = sorted(k for k in set(shards) | set(read[0]) if shards.get(k) != read[0].get(k))
        if differ:
            raise DataError(
                f"The ranks read different streams: shard {differ[0]} holds other samples on "
                f"rank {rank} than on rank 0 ({len(differ)} shards differ), so their rows cannot "
                "be put together. Give every rank the same, unsplit stream (a dataset that "
                "splits itself by rank inside, as webdataset's split_by_node or HuggingFace's "
                "split_dataset_by_node, reads a different one on each rank), or a DataPipe with "
                "a sharding_filter(); then run again with overwrite=True (--overwrite)."
            )


def ranks_of(ranks: Ranks) -> tuple[int, int]:
    return ranks.rank, ranks.world


def _write(sink: PieceWriter | MemoryPieces, pending: _Pending) -> None:
    shard, keys, rows, targets = pending
    rows.wait()
    sink.write(shard, keys, dict(rows), targets)


def _targets(batch: Any, n: int) -> list[int] | None:
    """The class of each sample, when the batch is ``(inputs, int targets)``."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        return None
    target = batch[1]
    if isinstance(target, torch.Tensor) and target.shape == (n,) and not target.is_floating_point():
        return [int(t) for t in target.tolist()]
    return None


def _same(item: Any) -> Any:
    return item


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:3])
    return f"[{shown}{', ...' if len(keys) > 3 else ''}] ({len(keys)})"


def _dump(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()

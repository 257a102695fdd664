"""Where a batch of rows goes: tensors in memory, or the partial features file on disk.

:class:`FileSink` writes in a background thread (a queue of at most two batches, so memory stays
bounded while the next batch is computed) straight into the rows' place in the file, and commits
a shard, after flushing it to disk, once all its rows are written.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Protocol

import torch

from featwrap.extraction.safetensors_file import FilePlan, index_runs
from featwrap.extraction.space import disk_full, is_disk_full, unwritten_bytes
from featwrap.extraction.store import Output

__all__ = ["FileSink", "MemorySink", "Sink"]


class Sink(Protocol):
    def write(self, indices: list[int], rows: dict[str, torch.Tensor]) -> None: ...

    def commit(self, shard: int, span: tuple[int, int], skipped: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Rows gathered into ``(n, *shape)`` tensors, allocated at the first batch.

    A batch's rows are put in place when the next batch arrives (or at :meth:`close`): from a
    GPU, their device-to-host copies finish while the next forward runs, and waiting for them
    never stalls the queue of work on the device.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.tensors: dict[str, torch.Tensor] = {}
        self.skipped: list[dict[str, Any]] = []
        self._pending: tuple[list[int], dict[str, torch.Tensor]] | None = None

    def write(self, indices: list[int], rows: dict[str, torch.Tensor]) -> None:
        pending, self._pending = self._pending, (indices, rows)
        if pending is not None:
            self._store(*pending)

    def _store(self, indices: list[int], rows: dict[str, torch.Tensor]) -> None:
        getattr(rows, "wait", _nothing)()  # device-to-host copies in flight
        if not self.tensors:
            self.tensors = {
                k: torch.empty((self.n, *v.shape[1:]), dtype=v.dtype) for k, v in rows.items()
            }
        position = 0
        for a, b in index_runs(indices):
            for key, value in rows.items():
                self.tensors[key][a:b] = value[position : position + b - a]
            position += b - a

    def commit(self, shard: int, span: tuple[int, int], skipped: list[dict[str, Any]]) -> None:
        self.skipped += skipped

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._store(*pending)

    def result(self) -> dict[str, torch.Tensor]:
        self.close()
        if not self.skipped:
            return self.tensors
        gone = {int(s["index"]) for s in self.skipped}
        keep = torch.tensor([i for i in range(self.n) if i not in gone], dtype=torch.long)
        return {k: v.index_select(0, keep) for k, v in self.tensors.items()}


_STOP = object()


def _nothing() -> None:
    pass


class FileSink:
    """Writes rows into the partial file in place, in a background thread; commits shards."""

    def __init__(self, output: Output, plan: FilePlan) -> None:
        self.output = output
        self.plan = plan
        self._fd = os.open(output.partial, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._failed = False  # sticky: after a failed write, no later write or commit is done
        self._thread = threading.Thread(target=self._run, name="featwrap-writer", daemon=True)
        self._thread.start()

    def write(self, indices: list[int], rows: dict[str, torch.Tensor]) -> None:
        self._put(("write", indices, rows))

    def commit(self, shard: int, span: tuple[int, int], skipped: list[dict[str, Any]]) -> None:
        self._put(("commit", shard, span, skipped))

    def close(self) -> None:
        """Wait for every queued write and commit; re-raise a failure of the writer thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._raise()

    def _put(self, item: tuple[Any, ...]) -> None:
        self._raise()
        self._queue.put(item)

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._failed:
                continue  # keep draining so that the producer never blocks; commit nothing
            try:
                if item[0] == "write":
                    self._write(item[1], item[2])
                else:
                    _, shard, span, skipped = item
                    _sync(self._fd)
                    self.output.commit(shard, span, skipped)
            except OSError as error:
                self._failed = True
                self._error = error
                if is_disk_full(error):
                    rest = unwritten_bytes(self.output.partial, self.plan.file_bytes)
                    self._error = disk_full(self.output.root, error, "writing rows", rest)
            except BaseException as error:
                self._failed = True
                self._error = error

    def _write(self, indices: list[int], rows: dict[str, torch.Tensor]) -> None:
        getattr(rows, "wait", _nothing)()  # device-to-host copies in flight
        base = self.plan.data_start
        for key, value in rows.items():
            layer = self.plan[key]
            data = value.contiguous().reshape(-1).view(torch.uint8).numpy()
            rb = layer.row_bytes
            position = 0
            for a, b in index_runs(indices):
                chunk = data[position * rb : (position + b - a) * rb].data
                _pwrite_all(self._fd, chunk, base + layer.start + a * rb)
                position += b - a


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, data, offset)
        else:  # Windows: this thread is the file's only writer
            os.lseek(fd, offset, os.SEEK_SET)
            n = os.write(fd, data)
        data, offset = data[n:], offset + n


def _sync(fd: int) -> None:
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)

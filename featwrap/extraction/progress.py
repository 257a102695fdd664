"""The progress bar of data read shard by shard, with a total whenever one can be had cheaply.

The bar counts the samples of the shards this process computes (rank 0 shows it): a Dataset of
dict samples and an ``IterableDataset`` with ``__len__`` know their total up front (every rank
reads the whole of such a stream, so its bar counts the other ranks' shards as read through);
uncompressed tar shards are counted from their headers (:func:`~featwrap.extraction.tars.
count_samples`) in a background thread, so that the run starts at once: the total appears when
the count is done (a fraction of the time reading the shards takes), and is complete when the run
ends. Compressed shards, unreadable ones and a stream without ``__len__`` leave it unknown.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from featwrap.extraction.streams import ShardBatches
from featwrap.extraction.tars import count_samples

__all__ = ["Progress"]


class Progress:
    """A tqdm bar for the shards of ``batches``, ``done`` those committed before."""

    def __init__(
        self, batches: ShardBatches, done: dict[int, dict[str, Any]], show: bool | None
    ) -> None:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        stream = batches.stream
        shown = (show if show is not None else sys.stderr.isatty()) and batches.rank == 0
        whole = stream.kind == "iterable" and not batches.split  # every rank reads all of it
        mine = {k: m for k, m in done.items() if whole or batches.of_rank(k)}
        initial = sum(m["rows"] + len(m["skipped"]) for m in mine.values())
        total = stream.total if whole else None
        if stream.kind == "dicts" and stream.total is not None:
            size, n = stream.shard_size, stream.total
            ours = [k for k in range(stream.n_shards or 0) if batches.of_rank(k)]
            total = sum(min(size, n - k * size) for k in ours)
        self.done = done
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="item",
            disable=not shown,
            dynamic_ncols=True,
            desc="extract",
        )
        self._to_count = [stream.files[k] for k in batches.todo] if stream.kind == "tar" else []
        self._initial = initial
        self._count: _Count | None = None

    def update(self, n: int) -> None:
        """``n`` more samples computed or skipped (or, of a whole stream, read through). The
        first starts the count of tar shards: it never delays the first batch."""
        if self._count is None and self._to_count and not self.bar.disable:
            self._count = _Count(self._to_count, self._initial)
        elif self._count is not None and self._count.total is not None:
            self._set_total(self._count.total)
        self.bar.update(n)

    def seen(self, shard: int, n: int) -> None:
        """A stream's shard computed by another rank, read through here."""
        if shard not in self.done:
            self.bar.update(n)

    def finished(self) -> None:
        """The run read every shard: wait for the count (never longer than reading them took)."""
        if self._count is not None:
            self._count.thread.join()
            if self._count.total is not None:
                self._set_total(self._count.total)

    def close(self) -> None:
        if self._count is not None:
            self._count.stop.set()
        self.bar.close()

    def _set_total(self, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()


class _Count:
    """The samples of ``files`` (plus ``known``), counted in a daemon thread; ``total`` is set
    once every file is counted, and stays ``None`` if one cannot be."""

    def __init__(self, files: list[Path], known: int) -> None:
        self.files, self.known = files, known
        self.total: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="featwrap-count", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        total = self.known
        for path in self.files:
            n = count_samples(path, self.stop.is_set)
            if n is None or self.stop.is_set():
                return
            total += n
        self.total = total

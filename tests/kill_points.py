"""Where the resume tests kill an extraction: SIGKILL at the N-th pass through a point.

The library holds no test hooks: :func:`arm`, called in the process to be killed (a forked child,
or the script a subprocess runs), wraps the functions that mark each point so that the process
sends itself SIGKILL the N-th time one of them returns (``"batch:2"``, ``"commit"``: N=1):

- ``batch``: a batch's rows written, its shard not yet committed (``FileSink._write``, in the
  writer thread; ``PieceWriter.write`` for data read shard by shard);
- ``commit``: a shard's marker written (``Output.commit``; ``PieceWriter.commit``);
- ``finalize``: the features file in place, no manifest yet (the manifest's ``write_atomic``,
  in ``store.py`` and ``stream_run.py``, killed before it writes);
- ``compact``: part of the copy without skipped rows written (``store._copy``, one run of rows).

A point the code no longer passes through leaves the process alive, and the test's assertion
that the child was killed fails: a renamed function cannot hide a lost kill point.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featwrap.extraction import pieces, sinks, store, stream_run

__all__ = ["POINTS", "arm"]

POINTS = ("batch", "commit", "finalize", "compact")


def arm(kill_at: str) -> None:
    """Die at ``kill_at`` (``"POINT"`` or ``"POINT:N"``) in this process; patches for good."""
    point, _, nth = kill_at.partition(":")
    if point not in POINTS:
        raise ValueError(f"kill point {point!r} is not one of {POINTS}")
    reached = _counter(int(nth or 1))
    if point == "batch":
        _after(sinks.FileSink, "_write", reached)
        _after(pieces.PieceWriter, "write", reached)
    elif point == "commit":
        _after(store.Output, "commit", reached)
        _after(pieces.PieceWriter, "commit", reached)
    elif point == "finalize":
        for module in (store, stream_run):
            _before_manifest(module, reached)
    else:
        _after(store, "_copy", reached)


def _counter(nth: int) -> Callable[[], None]:
    count = 0

    def reached() -> None:
        nonlocal count
        count += 1
        if count >= nth:
            os.kill(os.getpid(), signal.SIGKILL)

    return reached


def _after(owner: Any, name: str, reached: Callable[[], None]) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        reached()
        return result

    setattr(owner, name, wrapped)


def _before_manifest(module: Any, reached: Callable[[], None]) -> None:
    original = module.write_atomic

    def wrapped(path: Path, data: bytes, **kwargs: Any) -> None:
        if path.name == store.MANIFEST_FILE:
            reached()
        original(path, data, **kwargs)

    module.write_atomic = wrapped

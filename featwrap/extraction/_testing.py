"""Crash points for the resume tests.

With ``FEATWRAP_TEST_KILL=POINT:N`` in the environment, a process sends itself SIGKILL the N-th
time it reaches ``point(POINT)``: ``batch`` (rows of a batch written, shard not yet committed),
``commit`` (a shard's marker written), ``finalize`` (the features file in place, no manifest yet),
``compact`` (part of the compacted copy written). Without the variable, ``point`` does nothing.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    """Count a pass through the crash point ``name``; die there if the environment says so."""
    spec = os.environ.get("FEATWRAP_TEST_KILL")
    if not spec:
        return
    where, _, nth = spec.partition(":")
    if where != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

"""One writer per output directory: a lock held for the whole run, released even by SIGKILL.

``DIR/.featwrap-lock`` is locked with an operating-system record lock (``fcntl.lockf``, which
NFS shares between machines; ``msvcrt.locking`` on Windows). The kernel drops the lock when its
process ends, however it ends, so a lock left by a killed run is stale by construction: the file
may remain, unlocked, and the next run takes it. The file holds who locked it (host, pid, start
time) for the message a second run gets. The lock is per process, so one process also refuses
a second extraction into a directory it is already writing (another thread's).

Under ``torchrun`` rank 0 takes the lock before any rank writes, and holds it until the manifest
is written: the ranks of one job cooperate, a second job is refused before it writes anything.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with OutputLock(root):
...     (root / LOCK_FILE).exists()
True
>>> (root / LOCK_FILE).exists()
False
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
from pathlib import Path
from types import TracebackType

from featwrap.extraction.errors import OutputBusyError, OutputError

__all__ = ["LOCK_FILE", "OutputLock"]

LOCK_FILE = ".featwrap-lock"

_held: set[str] = set()  # directories locked by this process
_held_guard = threading.Lock()


class OutputLock:
    """The lock of one output directory (created if needed), as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / LOCK_FILE
        self._fd = -1
        self._key = ""

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise :class:`OutputBusyError` naming the run that holds it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._key = str(self.root.resolve())
        except OSError as error:
            raise _unwritable(self.root, error) from error
        with _held_guard:
            if self._key in _held:
                raise OutputBusyError(
                    f"{str(self.root)!r} is being written by another extraction in this process. "
                    "Wait for it to finish, or choose another output directory (--out DIR)."
                )
            _held.add(self._key)
        try:
            self._fd = self._lock_file()
        except BaseException:
            with _held_guard:
                _held.discard(self._key)
            raise
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": stamp}
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, json.dumps(holder).encode())
        except OSError:
            pass  # who holds it is only for the message of a second run (a full disk, say)

    def _lock_file(self) -> int:
        """Open and lock the file; retry if it was replaced while we waited for it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise _unwritable(self.root, error) from error
            if not _try_lock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputBusyError(
                    f"{str(self.root)!r} is being written by another extraction ({holder}). "
                    "Wait for it to finish (then run again to reuse or resume its output), stop "
                    "it, or choose another output directory (--out DIR). A run that was killed "
                    "holds no lock."
                )
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # the holder removed the file as we locked it: lock the new one

    def release(self) -> None:
        """Remove the file and drop the lock (removed first, so nobody locks a removed file)."""
        if self._fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # Windows cannot remove an open file: it stays, unlocked, which is harmless
        finally:
            os.close(self._fd)  # closing drops the lock
            self._fd = -1
            with _held_guard:
                _held.discard(self._key)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _unwritable(root: Path, error: OSError) -> OutputError:
    reason = error.strerror or type(error).__name__
    return OutputError(
        f"Cannot write to the output directory {str(root)!r}: {reason}. Choose a writable "
        "directory (--out DIR)."
    )

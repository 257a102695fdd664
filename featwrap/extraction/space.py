"""Disk space: checked before a file is written when its size is known, explained when it runs out.

The features file is allocated at full size but sparse: its blocks are taken as rows are written,
so a disk can fill up halfway. Its size is known once the first batch has run, so a run checks
the free space then (and on resume, for the part not yet written); leaving out skipped samples
copies the file, which needs that much again. Running out anyway (another process filled the
disk) ends with an :class:`~featwrap.extraction.errors.OutputError` that says how much is
needed, never a traceback, and the temporary file is removed; the shards written are kept.

>>> human(3 * 2**20 + 2**19), human(512)
('3.5 MiB', '512 B')
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from featwrap.extraction.errors import OutputError

__all__ = ["check_space", "disk_full", "human", "is_disk_full", "unwritten_bytes"]

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def human(n: int) -> str:
    """A byte count in binary units."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def free_bytes(root: Path) -> int:
    return shutil.disk_usage(root).free


def unwritten_bytes(path: Path, size: int) -> int:
    """How much of a ``size``-byte sparse file at ``path`` still has to take disk space."""
    try:
        taken = os.stat(path).st_blocks * 512
    except (OSError, AttributeError):  # no file yet, or no st_blocks (Windows)
        taken = 0
    return max(0, size - taken)


def check_space(root: Path, need: int, what: str) -> None:
    """Raise :class:`OutputError` if the disk of ``root`` has less than ``need`` bytes free."""
    free = free_bytes(root)
    if need > free:
        raise OutputError(
            f"Not enough disk space in {str(root)!r}: {what} needs {human(need)} more, and "
            f"{human(free)} are free. Free some space (or choose another output directory, "
            "--out DIR) and run the same extraction again; nothing written so far is lost."
        )


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _FULL


def disk_full(root: Path, error: OSError, what: str, need: int | None = None) -> OutputError:
    """The error for a disk that filled up while ``what`` was being written."""
    free = free_bytes(root) if root.exists() else 0
    needed = f" {human(need)} more are needed;" if need else ""
    return OutputError(
        f"The disk of {str(root)!r} filled up while {what} ({error.strerror}):{needed} "
        f"{human(free)} are free. Free some space (or choose another output directory, --out "
        "DIR) and run the same extraction again; the shards already written are kept."
    )

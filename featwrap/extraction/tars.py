"""webdataset-style tar shards: file patterns, the samples of one shard, and their decoding.

A shard is a tar file whose members are grouped into samples by key, as the ``webdataset``
package writes them: ``000017.jpg`` and ``000017.cls`` are the image and the class of sample
``000017`` (the key is the member's path up to the first dot of its file name). Shards are named
by a brace pattern (``shards/train-{000..099}.tar``), a list of paths or one path. A small reader
over :mod:`tarfile` is enough for local files: it reads each shard sequentially (``r|*``, gzip
too) and checks that an uncompressed shard ends with tar's end-of-archive blocks, so a shard cut
short at a member boundary (which ``tarfile`` reads as a normal end) is reported as truncated.
:func:`count_samples` counts a shard's samples from its headers alone, seeking over the members'
data (for the progress bar's total).

>>> expand_braces("shards/s-{00..02}.tar")
['shards/s-00.tar', 'shards/s-01.tar', 'shards/s-02.tar']
>>> expand_braces("{train,val}-{1..2}.tar")
['train-1.tar', 'train-2.tar', 'val-1.tar', 'val-2.tar']
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from featwrap.extraction.errors import DataError

__all__ = [
    "TAR_ENDINGS",
    "count_samples",
    "decode_sample",
    "expand_braces",
    "is_tar_spec",
    "read_tar",
    "tar_paths",
]

TAR_ENDINGS = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "pgm", "tif", "tiff")
_LABEL_EXTS = ("cls", "cls.txt", "label", "target")
_BRACES = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")


def expand_braces(pattern: str) -> list[str]:
    """Every name of a brace pattern: ``{000..099}`` (zero-padded ranges) and ``{a,b}`` lists."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    span = _RANGE.fullmatch(body)
    if span is not None:
        a, b = span.groups()
        options = [str(i).zfill(len(a)) for i in range(int(a), int(b) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for option in options for name in expand_braces(head + option + tail)]


def is_tar_spec(data: Any) -> bool:
    """Whether ``data`` names tar shards: a path or pattern ending in .tar (.tar.gz, .tgz), or
    a non-empty list of them."""
    if isinstance(data, (str, os.PathLike)):
        return str(data).lower().endswith(TAR_ENDINGS)
    if isinstance(data, (list, tuple)) and data:
        return all(isinstance(d, (str, os.PathLike)) and is_tar_spec(d) for d in data)
    return False


def tar_paths(data: str | os.PathLike[str] | list[Any] | tuple[Any, ...]) -> list[Path]:
    """The shard files of ``data`` (patterns expanded, in the order given); every one must exist."""
    given = list(data) if isinstance(data, (list, tuple)) else [data]
    paths = [Path(name) for item in given for name in expand_braces(str(item))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3])
        raise DataError(
            f"{len(missing)} of the {len(paths)} tar shards do not exist ({shown}"
            f"{'...' if len(missing) > 3 else ''}). Check the path or the brace pattern "
            "('shards/shard-{000..099}.tar': zero-padded ranges and {a,b} lists)."
        )
    return paths


def read_tar(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of one shard in file order: ``(key, {extension: bytes})``.

    Raises:
        DataError: the file is not a tar file or is truncated (naming it and the samples read).
    """
    count = 0
    try:
        _check_end(path)
        with tarfile.open(path, mode="r|*") as tar:
            key, files = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, name = posixpath.split(member.name)
                if name.startswith("."):
                    continue
                stem, _, ext = name.partition(".")
                sample_key = posixpath.join(folder, stem)
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted is not None else b""
                if key is not None and sample_key != key:
                    count += 1
                    yield key, files
                    files = {}
                key = sample_key
                files[ext.lower()] = data
            if key is not None:
                count += 1
                yield key, files
    except (tarfile.TarError, EOFError, OSError, _Truncated) as error:
        raise DataError(
            f"The shard {str(path)!r} is not a readable tar file ({type(error).__name__}: "
            f"{error}; {count} samples read before). Replace or remove the shard, or pass "
            "on_error='skip' to leave it out; the shards already written are kept."
        ) from error


def count_samples(path: Path, stop: Callable[[], bool] = lambda: False) -> int | None:
    """The number of samples of an uncompressed tar shard, read from its 512-byte headers only
    (GNU long names and pax paths included), as :func:`read_tar` groups them; ``None`` for a
    compressed shard (its headers cannot be reached without decompressing it all), one that is
    not a tar file or is cut short, or when ``stop()`` turns true (checked every 1024 members)."""
    if not str(path).lower().endswith(".tar"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        return _count_headers(fd, os.fstat(fd).st_size, stop)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _count_headers(fd: int, end: int, stop: Callable[[], bool]) -> int | None:
    count, last, offset, members = 0, None, 0, 0
    long_name: str | None = None
    while offset + 512 <= end:
        block = _read_at(fd, 512, offset)
        if not block.strip(b"\0"):
            return count  # the end-of-archive blocks
        if not _checksum_ok(block):
            return None
        size, kind = _octal(block[124:136]), block[156:157]
        data, offset = offset + 512, offset + 512 + -(-size // 512) * 512
        members += 1
        if members % 1024 == 0 and stop():
            return None
        if kind == b"L":  # the next member's name: a GNU long name
            long_name = _read_at(fd, size, data).split(b"\0")[0].decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":  # or in a pax header
            long_name = _pax_path(_read_at(fd, size, data)) or long_name
            continue
        if kind == b"g":
            continue
        name = long_name or _header_name(block)
        long_name = None
        if kind not in (b"0", b"\0", b"7", b"S"):  # directories, links: not samples
            continue
        folder, base = posixpath.split(name)
        if base.startswith("."):
            continue
        key = posixpath.join(folder, base.partition(".")[0])
        if key != last:
            count, last = count + 1, key
    return None  # no end-of-archive blocks: cut short (the run reports it)


def _read_at(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def _checksum_ok(block: bytes) -> bool:
    stored = _octal(block[148:156])
    return stored == sum(block[:148]) + 256 + sum(block[156:])


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0")[0].strip()
    return int(digits, 8) if digits else 0


def _header_name(block: bytes) -> str:
    name = block[:100].split(b"\0")[0].decode("utf-8", "surrogateescape")
    if block[257:262] == b"ustar" and block[345]:
        prefix = block[345:500].split(b"\0")[0].decode("utf-8", "surrogateescape")
        name = f"{prefix}/{name}"
    return name


def _pax_path(raw: bytes) -> str | None:
    """The ``path`` record of a pax header (records ``b"LEN key=value\\n"``, LEN in bytes)."""
    position = 0
    while position < len(raw):
        space = raw.index(b" ", position)
        length = int(raw[position:space])
        if length <= 0:
            return None
        key, _, value = raw[space + 1 : position + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        position += length
    return None


class _Truncated(Exception):
    pass


def _check_end(path: Path) -> None:
    """An uncompressed tar ends with two zero blocks of 512 bytes; a cut file does not."""
    if not str(path).lower().endswith(".tar"):
        return  # gzip checks its own end
    size = path.stat().st_size
    if size < 1024 or size % 512:
        raise _Truncated(f"{size} bytes is not a whole number of 512-byte tar blocks")
    with open(path, "rb") as f:
        f.seek(size - 1024)
        if f.read(1024).strip(b"\0"):
            raise _Truncated("it does not end with tar's end-of-archive blocks: it was cut short")


def decode_sample(key: str, files: dict[str, bytes], transform: Callable[[Any], Any] | None) -> Any:
    """One tar sample as the model takes it: ``(image, class)`` or the image alone (decoded with
    PIL as RGB, through ``transform``), or a ``.pth`` member's tensor or dict (``torch.load``)."""
    image_ext = next((e for e in _IMAGE_EXTS if e in files), None)
    label_ext = next((e for e in _LABEL_EXTS if e in files), None)
    if image_ext is not None:
        from PIL import Image

        with Image.open(io.BytesIO(files[image_ext])) as image:
            value: Any = image.convert("RGB")
        if transform is not None:
            value = transform(value)
    elif "pth" in files:
        value = torch.load(io.BytesIO(files["pth"]), weights_only=True)
    else:
        raise DataError(
            f"Sample {key!r} has no image nor .pth member (it has {sorted(files)}): a shard "
            f"sample needs one of {', '.join(_IMAGE_EXTS)} or pth."
        )
    if label_ext is None:
        return value
    return value, int(files[label_ext].decode().strip())

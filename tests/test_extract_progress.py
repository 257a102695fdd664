"""The progress bar's total: tar shards counted from their headers alone, streams by their length.

:func:`count_samples` is checked against tarfile reading each shard whole and grouping its members
by key as webdataset does (an independent reader), over the header forms tar writers use: GNU long
names, pax paths, ustar prefixes, folders, hidden files. The bar is read from stderr.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
from pathlib import Path

import pytest

from featwrap import extract
from featwrap.extraction.tars import count_samples
from tests.streams_data import make_net, write_shards
from tests.test_extract_resume import _one_thread, killed
from tests.test_extract_streams import KWARGS, LAYERS, SIZES

__all__ = ["_one_thread"]  # the autouse fixture: one thread, bit-identical values


def keys_by_tarfile(path: Path) -> int:
    """Samples as webdataset groups members: consecutive files sharing the path up to the first
    dot of the file name, hidden files left out."""
    count, last = 0, None
    with tarfile.open(path) as tar:
        for member in tar:
            folder, name = posixpath.split(member.name)
            if not member.isfile() or name.startswith("."):
                continue
            key = posixpath.join(folder, name.partition(".")[0])
            count, last = count + (key != last), key
    return count


def write(
    path: Path, names: list[str], form: int = tarfile.GNU_FORMAT, folders: bool = False
) -> None:
    with tarfile.open(path, "w", format=form) as tar:
        for i, name in enumerate(names):
            if folders and i % 3 == 0:
                info = tarfile.TarInfo(posixpath.dirname(name) or "top")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            data = bytes([i % 256]) * (i * 37 % 1500)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


LONG = "a-folder-name-that-is-long/" * 5  # 135 characters: beyond the 100 of a plain header
NAMES = {
    "plain": [f"{k:05d}.{e}" for k in range(7) for e in ("jpg", "cls")],
    "long names": [f"{LONG}{k:05d}.{e}" for k in range(5) for e in ("png", "json", "cls")],
    "folders and hidden": [
        name
        for k in range(6)
        for name in (f"d{k % 2}/{k:03d}.jpg", f"d{k % 2}/{k:03d}.cls", f"d{k % 2}/._{k:03d}.jpg")
    ],
    "one member each": [f"s{k}.pth" for k in range(9)],
}


@pytest.mark.parametrize("form", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("kind", list(NAMES))
def test_count_samples_against_tarfile(tmp_path: Path, kind: str, form: int) -> None:
    path = tmp_path / "shard.tar"
    write(path, NAMES[kind], form, folders=kind == "folders and hidden")
    expected = keys_by_tarfile(path)
    assert expected > 1
    assert count_samples(path) == expected


def test_count_samples_unknown_for_compressed_and_damaged_shards(tmp_path: Path) -> None:
    path = tmp_path / "s.tar"
    write(path, NAMES["plain"])
    packed = tmp_path / "s.tar.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert count_samples(packed) is None  # only by decompressing all of it
    (tmp_path / "x.tar").write_bytes(b"not a tar file" * 100)
    assert count_samples(tmp_path / "x.tar") is None
    with tarfile.open(path) as tar:
        cut_at = tar.getmembers()[6].offset
    (tmp_path / "cut.tar").write_bytes(path.read_bytes()[:cut_at])
    assert count_samples(tmp_path / "cut.tar") is None  # no end-of-archive blocks


def test_the_bar_knows_the_total_of_tar_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_shards(tmp_path / "shards", SIZES)
    pattern = str(tmp_path / "shards" / "shard-{00..03}.tar")
    extract(make_net(), pattern, LAYERS, progress=True, **KWARGS)
    assert "18/18" in capsys.readouterr().err
    out = tmp_path / "out"
    killed("commit:2", extract, make_net(), pattern, LAYERS, out=out, **KWARGS)
    capsys.readouterr()
    extract(make_net(), pattern, LAYERS, out=out, progress=True, **KWARGS)
    err = capsys.readouterr().err
    assert "extract: 8item" in err  # resumed after two shards; the total is counted meanwhile
    assert "18/18" in err  # and known by the end

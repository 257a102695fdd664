"""Every user error of ``featwrap extract``: one line in the command's words, exit 2, nothing lost.

Each bad flag is tried on an output that holds two committed shards of an unfinished run: the
directory must be byte-identical afterwards. The library raises the same errors (in the featwrap
family) with its own words (``overwrite=True``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, get_worker_info

import featwrap
from featwrap import DataError, extract
from featwrap.cli import main
from featwrap.extraction import OutputError
from featwrap.extraction.lock import LOCK_FILE


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def one_error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["extract", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("featwrap extract: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(5):
        Image.new("RGB", (12, 12), (40 * i, 90, 200)).save(root / f"{i}.png")
    (root / "3.png").write_bytes(b"not a png")  # stops the first run after two shards
    return root


TINY = ["--model", "torch.nn:Identity", "--layers", "logits", "--image-size", "8",
        "--shard-size", "1", "--batch-size", "1", "--num-workers", "0", "--quiet"]  # fmt: skip


@pytest.fixture
def unfinished(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "out"
    one_error_line(capsys, "--data", str(images), "--out", str(out), *TINY)
    assert len(list((out / ".featwrap-run" / "shards").glob("*.json"))) == 3
    return out


def no_gpu() -> bool:
    return not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "cuda:99"], r"--device cuda:99 is not available"),
        (["--device", "tpu9"], r"--device tpu9 is not a device"),
        (["--num-workers", "-1"], r"--num-workers -1 is not a number of DataLoader workers"),
        (["--batch-size", "0"], r"--batch-size 0 must be a positive whole number"),
        (["--shard-size", "-3"], r"--shard-size -3 must be a positive whole number"),
        (["--image-size", "0"], r"--image-size 0 must be a positive whole number"),
        (["--image-size", "-5"], r"--image-size -5 must be a positive whole number"),
        (["--dtype", "int8"], r"--dtype int8 is not a floating-point dtype"),
        (["--dtype", "float99"], r"--dtype float99 is not a torch dtype"),
    ],
)
def test_bad_flags(
    flags: list[str],
    message: str,
    images: Path,
    unfinished: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kept = digest(unfinished)
    argv = [*TINY, "--data", str(images), "--out", str(unfinished)]
    for flag, value in zip(flags[::2], flags[1::2], strict=True):  # the bad value wins
        argv = [*argv, flag, value]
    err = one_error_line(capsys, *argv)
    assert re.search(message, err), err
    assert "=" not in err  # CLI words, not Python's
    assert digest(unfinished) == kept


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU: 'cuda' is available")
def test_cuda_without_a_gpu(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_error_line(
        capsys, *TINY, "--data", str(images), "--out", str(tmp_path / "o"), "--device", "cuda"
    )
    assert "--device cuda is not available" in err
    assert "--device cpu" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_the_library_says_it_in_python_words(images: Path, tmp_path: Path) -> None:
    for kwargs, message in [
        ({"num_workers": -1}, r"num_workers=-1 \(--num-workers -1\)"),
        ({"image_size": 0}, r"image_size=0 \(--image-size 0\)"),
        ({"dtype": torch.int8}, r"dtype='int8' \(--dtype int8\) is not a floating-point dtype"),
        ({"dtype": "int64"}, r"is not a floating-point dtype"),
    ]:
        with pytest.raises(featwrap.FeatwrapError, match=message):
            extract(nn.Identity(), images, ["logits"], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("damage", ["manifest", "run"])
def test_a_corrupt_record(
    damage: str, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [*TINY, "--data", str(images), "--out", str(out), "--on-error", "skip"]
    if damage == "manifest":
        assert main(["extract", *argv]) == 0
        record = out / "manifest.json"
    else:
        one_error_line(capsys, *TINY, "--data", str(images), "--out", str(out))
        record = out / ".featwrap-run" / "run.json"
    record.write_text(record.read_text()[:40])  # cut short, as by a full disk or a bad copy
    kept = digest(out)
    err = one_error_line(capsys, *argv)
    assert f"'{record}' is corrupt (not valid JSON" in err
    assert "--overwrite" in err
    assert "overwrite=True" not in err
    assert digest(out) == kept
    if damage == "manifest":
        with pytest.raises(DataError, match=r"manifest.json' is corrupt .*overwrite=True"):
            featwrap.load_features(out)
    assert main(["extract", *argv, "--overwrite"]) == 0
    assert featwrap.load_features(out).ids == ["0.png", "1.png", "2.png", "4.png"]


def test_a_missing_features_file_is_named(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extract(nn.Identity(), images, ["logits"], out=out, image_size=8, on_error="skip")
    (out / "features.safetensors").unlink()
    with pytest.raises(DataError, match=r"features.safetensors' is not a readable.*overwrite"):
        featwrap.load_features(out)


class DiesInWorker(Dataset[torch.Tensor]):
    """Sample 9 kills the DataLoader worker that reads it (as a segfault or the OOM killer)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 9 and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.full((3, 4, 4), float(i))


def test_a_worker_crash_names_the_samples(tmp_path: Path) -> None:
    out = tmp_path / "out"
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten())
    with pytest.raises(
        DataError, match=r"worker died while reading samples (\d+) to (\d+)"
    ) as info:
        extract(net, DiesInWorker(), ["0"], out=out, batch_size=2, shard_size=4, num_workers=1)
    first, last = map(int, re.findall(r"samples (\d+) to (\d+)", str(info.value))[0])
    assert first <= 9 <= last
    assert last - first < 8  # the batches in flight, not the whole dataset
    assert "num_workers=0 (--num-workers 0)" in str(info.value)
    shards = sorted(p.name for p in (out / ".featwrap-run" / "shards").iterdir())
    assert "000000.json" in shards  # written before it: kept (shard 1 too, if it was done)
    assert "000002.json" not in shards


def test_an_undecodable_file_name(tmp_path: Path) -> None:
    """A name that is not UTF-8 (a Latin-1 'café.png') is read; its id shows the byte escaped."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "a.png")
    raw = os.fsencode(str(root)) + b"/caf\xe9.png"
    Image.new("RGB", (8, 8), (200, 20, 30)).save(os.fsdecode(raw), format="PNG")
    features = extract(nn.Identity(), root, ["logits"], out=tmp_path / "out", image_size=8)
    assert features.ids == ["a.png", "caf\\xe9.png"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["ids"] == features.ids
    assert not torch.equal(features["logits"][0], features["logits"][1])


def run_quietly(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


class Small(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 14

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((3, 16, 16), i / 14)


WIDE = nn.Conv2d(3, 64, 1)  # 64 KiB per row: 14 rows, 0.9 MiB


def test_disk_full_while_writing_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write fails with ENOSPC (monkeypatched: the disk fills up halfway, from outside)."""
    sinks = __import__("featwrap.extraction.sinks", fromlist=["_pwrite_all"])
    real, calls = sinks._pwrite_all, []

    def fills_up(fd: int, data: Any, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(sinks, "_pwrite_all", fills_up)
    out = tmp_path / "out"
    kwargs: dict[str, Any] = {"batch_size": 2, "shard_size": 4, "num_workers": 0}
    with pytest.raises(OutputError, match=r"filled up while writing rows .* KiB more are needed"):
        extract(WIDE, Small(), ["logits"], out=out, **kwargs)
    shards = sorted(p.name for p in (out / ".featwrap-run" / "shards").iterdir())
    assert shards == ["000000.json", "000001.json"]  # the rows of batch 5 (shard 2) failed
    monkeypatch.setattr(sinks, "_pwrite_all", real)
    resumed = extract(WIDE, Small(), ["logits"], out=out, **kwargs)
    with torch.no_grad():
        expected = torch.cat([WIDE(torch.stack([Small()[i] for i in range(a, min(a + 2, 14))])) for a in range(0, 14, 2)])  # fmt: skip
    assert torch.equal(resumed["logits"], expected)


def can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and Path("/proc/mounts").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 4 MiB tmpfs (needs root; the test above covers a full disk without it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = run_quietly(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    gc.collect()  # features memory-mapped from it
    if run_quietly(["umount", str(mount)]).returncode != 0:
        run_quietly(["umount", "--lazy", str(mount)])  # detached now, freed once unused


@pytest.mark.skipif(not can_mount(), reason="mounting a small filesystem needs root on Linux")
def test_disk_full_on_a_small_filesystem(small_disk: Path) -> None:
    out = small_disk / "out"
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (int(3.5 * 2**20)))
    kwargs: dict[str, Any] = {"batch_size": 2, "shard_size": 4, "num_workers": 0}
    with pytest.raises(
        OutputError, match=r"the features file .* needs 896.1 KiB more, and 508.0 KiB are free"
    ):
        extract(WIDE, Small(), ["logits"], out=out, **kwargs)  # refused before computing
    assert sorted(p.name for p in out.iterdir()) == []
    filler.write_bytes(b"x" * (int(2.5 * 2**20)))  # room for the file, not for a second copy
    on_error: Any = {"on_error": "skip"}
    with pytest.raises(OutputError, match=r"assembling features.safetensors without .* needs"):
        extract(WIDE, Broken(), ["logits"], out=out, **kwargs, **on_error)
    assert not (out / "features.safetensors.tmp").exists()
    assert len(list((out / ".featwrap-run" / "shards").iterdir())) == 4  # every shard kept
    filler.unlink()
    features = extract(WIDE, Broken(), ["logits"], out=out, **kwargs, **on_error)
    assert features.ids == [str(i) for i in range(14) if i != 5]
    assert sorted(p.name for p in out.iterdir()) == ["features.safetensors", "manifest.json"]


class Broken(Small):
    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 5:
            raise OSError("unreadable")
        return super().__getitem__(i)

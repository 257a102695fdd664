"""Killed with SIGKILL at any point and run again, extraction ends with the uninterrupted output.

The killed runs are child processes: forked from this one (fast: no imports) and told where to die
by tests/kill_points.py (which wraps the functions that mark each point), or the real CLI killed
from outside.
Everything runs on one thread so that every process computes bit-identical values.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import featwrap
from featwrap import DataError, ResumeMismatchError, extract
from featwrap.extraction.lock import LOCK_FILE
from tests import kill_points

N = 22
KWARGS: dict[str, Any] = {"batch_size": 2, "shard_size": 4, "num_workers": 0}  # 6 shards
LAYERS = ["0", "2", "logits"]
#: for a child that never ends (a hang), not for speed: far beyond any loaded machine
PATIENCE = 1800


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 3, 10, 10, generator=generator))


@pytest.fixture(scope="module")
def uninterrupted(
    data: TensorDataset, tmp_path_factory: pytest.TempPathFactory
) -> featwrap.Features:
    torch.set_num_threads(1)
    return extract(make_net(), data, LAYERS, out=tmp_path_factory.mktemp("ref"), **KWARGS)


def killed(kill_at: str, target: Any, *args: Any, **kwargs: Any) -> None:
    """Run ``target(*args, **kwargs)`` in a forked child that SIGKILLs itself at ``kill_at``."""
    child = multiprocessing.get_context("fork").Process(
        target=_child, args=(kill_at, target, args, kwargs)
    )
    child.start()
    child.join(PATIENCE)
    assert child.exitcode == -signal.SIGKILL, f"the child was not killed at {kill_at}"


def _child(kill_at: str, target: Any, args: Any, kwargs: Any) -> None:
    kill_points.arm(kill_at)
    torch.set_num_threads(1)
    target(*args, **kwargs)


def assert_same_output(actual: featwrap.Features, expected: featwrap.Features) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        assert torch.equal(actual[key], expected[key]), key
    assert actual.ids == expected.ids  # no row lost, none duplicated, in order
    assert actual.manifest == expected.manifest


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize(
    "kill_at",
    [
        "batch:1",  # inside the first shard, nothing committed
        "batch:5",  # inside the third shard, two committed
        "commit:1",  # right after the first shard's marker
        "commit:6",  # every shard committed, nothing finalized
        "finalize",  # the file renamed in place, no manifest yet
    ],
)
def test_resume_after_sigkill(
    kill_at: str, data: TensorDataset, uninterrupted: featwrap.Features, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed(kill_at, extract, make_net(), data, LAYERS, out=out, **KWARGS)
    with pytest.raises(DataError, match="unfinished extraction"):  # nothing half-done is read
        featwrap.load_features(out)
    resumed = extract(make_net(), data, LAYERS, out=out, **KWARGS)
    assert_same_output(resumed, uninterrupted)
    assert_same_output(featwrap.load_features(out), uninterrupted)
    assert leftovers(out) == ["features.safetensors", "manifest.json"]


def test_killed_again_and_again(
    data: TensorDataset, uninterrupted: featwrap.Features, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for kill_at in ("batch:3", "batch:2", "commit:1", "batch:4"):
        killed(kill_at, extract, make_net(), data, LAYERS, out=out, **KWARGS)
    assert_same_output(extract(make_net(), data, LAYERS, out=out, **KWARGS), uninterrupted)


def test_resume_computes_only_the_missing_shards(
    data: TensorDataset,
    uninterrupted: featwrap.Features,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    killed("commit:4", extract, make_net(), data, LAYERS, out=out, **KWARGS)
    run = importlib.import_module("featwrap.extraction.run")  # featwrap.extract is the function
    rows: list[int] = []
    original = run.compute_rows

    def counting(forward: Any, inputs: torch.Tensor, n: int, *args: Any) -> Any:
        rows.append(n)
        return original(forward, inputs, n, *args)

    monkeypatch.setattr(run, "compute_rows", counting)
    resumed = extract(make_net(), data, LAYERS, out=out, **KWARGS)
    assert sum(rows) == N - 4 * 4  # shards 4 and 5 only
    assert_same_output(resumed, uninterrupted)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE  # who holds the output: not a record of the run
    }


def test_changed_arguments_on_resume(
    data: TensorDataset, uninterrupted: featwrap.Features, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed("commit:2", extract, make_net(), data, LAYERS, out=out, **KWARGS)
    before = tree_digest(out)
    other_net = make_net()
    with torch.no_grad():
        other_net[0].bias[0] += 1e-3
    more = TensorDataset(torch.cat([data.tensors[0], data.tensors[0][:1]]))
    changes: list[tuple[str, dict[str, Any], str]] = [
        ("layers", {"layers": ["0", "logits"]}, r"layers: '2' removed"),
        (
            "layer order",
            {"layers": ["2", "0", "logits"]},
            r"layer_order: \['0', '2', 'logits'\] -> \['2', '0', 'logits'\]",
        ),
        ("pool", {"pool": "avg"}, r"pool: '0' 'none' -> 'avg', '2' 'none' -> 'avg'"),
        ("dtype", {"dtype": torch.float16}, r"dtype: None -> 'float16'"),
        ("weights", {"model": other_net}, r"parameters_sha256: "),
        ("data", {"data": more}, r"data: 1 added \('22'\); samples: 22 -> 23"),
        ("shard size", {"shard_size": 8}, r"shard_size: 4 -> 8"),
    ]
    for what, change, message in changes:
        args: dict[str, Any] = {"model": make_net(), "data": data, "layers": LAYERS, **KWARGS}
        args.update(change)
        with pytest.raises(ResumeMismatchError, match=message) as info:
            extract(out=out, **args)
        assert "started with other arguments" in str(info.value), what
        assert "overwrite=True" in str(info.value)
        assert tree_digest(out) == before, f"{what}: the directory was changed"
    # another batch size: the run's own is kept (with a note), so the rows are the same bytes
    with pytest.warns(featwrap.extraction.ResumeWarning, match=r"batch_size=4 .* resuming with 2"):
        resumed = extract(make_net(), data, LAYERS, out=out, **{**KWARGS, "batch_size": 4})
    assert_same_output(resumed, uninterrupted)
    started_over = extract(make_net(), data, ["2"], out=out, overwrite=True, **KWARGS)
    assert torch.equal(started_over["2"], uninterrupted["2"])
    assert list(started_over) == ["2"]


def test_a_directory_of_other_files_is_left_alone(data: TensorDataset, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ResumeMismatchError, match=r"not empty.*holds no featwrap run"):
            extract(make_net(), data, LAYERS, out=tmp_path, overwrite=overwrite, **KWARGS)
    assert leftovers(tmp_path) == ["notes.txt"]


def write_images(root: Path, n: int, corrupt: frozenset[int] = frozenset()) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = root / f"img{i:03d}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
        else:
            Image.new("RGB", (9, 9), (i * 11 % 256, i * 29 % 256, 90)).save(path)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def test_corrupt_image_fail_keeps_shards_then_skip_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images, 14, corrupt=frozenset({9}))
    kwargs = {**KWARGS, "transform": to_tensor}
    with pytest.raises(DataError, match=r"Cannot read sample 'img009.png' \(index 9\).*skip"):
        extract(make_net(), images, LAYERS, out=out, **kwargs)
    markers = sorted(p.name for p in (out / ".featwrap-run" / "shards").iterdir())
    assert markers == ["000000.json", "000001.json"]  # what was written before it is kept
    run = importlib.import_module("featwrap.extraction.run")
    rows: list[int] = []
    original = run.compute_rows
    monkeypatch.setattr(
        run, "compute_rows", lambda f, x, n, *a: rows.append(n) or original(f, x, n, *a)
    )
    killed("compact", extract, make_net(), images, LAYERS, out=out, on_error="skip", **kwargs)
    resumed = extract(make_net(), images, LAYERS, out=out, on_error="skip", **kwargs)
    assert rows == []  # every shard was in place: only the compaction was done again
    assert resumed.ids == [f"img{i:03d}.png" for i in range(14) if i != 9]
    assert [(s["index"], s["id"]) for s in resumed.skipped] == [(9, "img009.png")]
    assert resumed.manifest["skipped"] == resumed.skipped
    clean = tmp_path / "clean"
    write_images(clean, 14)
    (clean / "img009.png").unlink()
    expected = extract(make_net(), clean, LAYERS, **kwargs)
    for key in LAYERS:  # the same batches, less one row: compare values, not bits
        torch.testing.assert_close(resumed[key], expected[key])


def test_cli_killed_from_outside_then_resumed(tmp_path: Path) -> None:
    """The real command, SIGKILLed by this test once a few shards are on disk, then rerun."""
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images, 40)
    (tmp_path / "tiny_model.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), "
        "nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )

    def argv(out: Path) -> list[str]:
        return ["extract", "--model", "tiny_model:build", "--weights", "none", "--layers",
                "0,logits", "--data", str(images), "--out", str(out), "--batch-size", "1",
                "--shard-size", "2", "--image-size", "48", "--num-workers", "0", "--quiet"]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "featwrap", *argv(out)], env=env)
    shards = out / ".featwrap-run" / "shards"
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline and process.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.json"))) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait(PATIENCE) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "manifest.json").exists()
    sys.path.insert(0, str(tmp_path))
    try:
        from featwrap.cli import main

        assert main(argv(out)) == 0
        fresh = tmp_path / "fresh"
        assert main(argv(fresh)) == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiny_model", None)
    resumed, expected = featwrap.load_features(out), featwrap.load_features(fresh)
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
    assert resumed.ids == expected.ids == [f"img{i:03d}.png" for i in range(40)]

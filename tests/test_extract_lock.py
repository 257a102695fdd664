"""One writer per output: a second run on the same ``--out`` is refused while the first writes.

The writers are real processes: the CLI started with ``subprocess``, or a child that holds the
lock as a running extraction does. A lock left by a killed process does not block the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import featwrap
from featwrap import extract
from featwrap.cli import main
from featwrap.extraction import OutputBusyError
from featwrap.extraction.lock import LOCK_FILE, OutputLock

#: Long enough for any loaded machine; a hang still ends the test, with a clear failure.
PATIENCE = 1800


def tiny() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def data() -> TensorDataset:
    return TensorDataset(torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)))


def hold_lock_in_child(out: Path) -> subprocess.Popen[str]:
    """A second process that holds the output's lock (as a running extraction does) until
    killed; returns once it holds it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from featwrap.extraction.lock import OutputLock
        lock = OutputLock(Path({str(out)!r}))
        lock.acquire()
        print("locked", flush=True)
        time.sleep({PATIENCE})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_held_output_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    child = hold_lock_in_child(out)
    try:
        with pytest.raises(OutputBusyError, match=r"being written by another extraction \(pid"):
            extract(tiny(), data(), ["0"], out=out, batch_size=2, num_workers=0)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing was written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(PATIENCE)
    assert (out / LOCK_FILE).exists()  # left behind by the killed holder: stale, not blocking
    features = extract(tiny(), data(), ["0"], out=out, batch_size=2, num_workers=0)
    expected = extract(tiny(), data(), ["0"], batch_size=2, num_workers=0)
    assert torch.equal(features["0"], expected["0"])
    assert sorted(p.name for p in out.iterdir()) == ["features.safetensors", "manifest.json"]


def test_the_same_process_cannot_write_one_output_twice(tmp_path: Path) -> None:
    with OutputLock(tmp_path), pytest.raises(OutputBusyError, match="in this process"):
        extract(tiny(), data(), ["0"], out=tmp_path, batch_size=2, num_workers=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_two_cli_runs_on_one_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's double-click: the second run is refused in one line (exit 2) while the first
    writes; the first finishes an output equal to a run alone; a third run after it reuses it.

    The first run's model waits while the file ``hold`` exists, so that the second run surely
    comes while the first holds the output (no race with the machine's speed)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.new("RGB", (9, 9), (i * 11 % 256, i * 29 % 256, 90)).save(images / f"{i:02d}.png")
    hold = tmp_path / "hold"
    (tmp_path / "held_model.py").write_text(
        "import os, time\nfrom torch import nn\n\n"
        "class Held(nn.Module):\n"
        "    def forward(self, x):\n"
        f"        while os.path.exists({str(hold)!r}):\n"
        "            time.sleep(0.01)\n"
        "        return x\n\n"
        "def build():\n"
        "    return nn.Sequential(Held(), nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )

    def argv(out: Path) -> list[str]:
        return ["extract", "--model", "held_model:build", "--weights", "none", "--layers",
                "1,logits", "--data", str(images), "--out", str(out), "--batch-size", "1",
                "--shard-size", "2", "--image-size", "16", "--num-workers", "0", "--quiet"]  # fmt: skip

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    hold.touch()
    first = subprocess.Popen([sys.executable, "-m", "featwrap", *argv(out)], env=env)
    lock = out / LOCK_FILE
    deadline = time.monotonic() + PATIENCE
    while not (lock.exists() and "pid" in lock.read_text()):  # the first run holds the output
        assert first.poll() is None, "the first run ended before it held the output"
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.01)
    sys.path.insert(0, str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv(out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"'{out}' is being written by another extraction (pid {first.pid} on" in err
        hold.unlink()
        assert first.wait(PATIENCE) == 0
        assert main(argv(tmp_path / "alone")) == 0
        stamp = (out / "features.safetensors").stat().st_mtime_ns
        assert main(argv(out)) == 0  # after it: the finished output is reused as it is
        assert (out / "features.safetensors").stat().st_mtime_ns == stamp
    finally:
        hold.unlink(missing_ok=True)
        if first.poll() is None:
            first.kill()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("held_model", None)
        torch.set_num_threads(threads)
    both, alone = featwrap.load_features(out), featwrap.load_features(tmp_path / "alone")
    for key in alone:
        assert torch.equal(both[key], alone[key]), key
    assert both.ids == alone.ids
    assert sorted(p.name for p in out.iterdir()) == ["features.safetensors", "manifest.json"]

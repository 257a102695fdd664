"""Memory stays flat: the peak RSS of an extraction to disk does not grow with the dataset.

Measured, not timed: each run is a forked child that resets its peak RSS (VmHWM, through
/proc/self/clear_refs) just before extracting and reports it after. The same measurement of
in-memory extraction, which must hold every row, shows that the method sees growth, and a run
that leaks half of its batches is caught.

The tolerance is derived from the signal, not from the noise: between the two sizes the features
grow by 157 MiB, so a leak of even a quarter of the rows (39 MiB) fails, while the allocator's
noise on a loaded machine (13-17 MiB measured on 160 vs 640 rows) passes with room. Each size is
measured twice and the lower peak kept: noise only ever adds.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from featwrap import extract

ROW_BYTES = 16 * 48 * 48 * 4  # one row of the stored layer: 144 KiB
SMALL, LARGE = 160, 1280  # 22.5 MiB and 180 MiB of features
GROWN = (LARGE - SMALL) * ROW_BYTES
TOLERANCE = GROWN // 4  # a leak of a quarter of the rows still fails
#: for a child process that never ends (a hang), not for speed: far beyond any loaded machine
PATIENCE = 1800

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS"
)


class Synthetic(Dataset[torch.Tensor]):
    """Samples made on the fly: the dataset itself takes no memory."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((3, 48, 48), i / self.n)


def _peak_rss(n: int, out: Path | None, leak: bool = False, repeats: int = 1) -> int:
    """The lowest peak RSS of ``repeats`` runs (noise only ever adds to a peak)."""
    peaks = []
    for _ in range(repeats):
        context = multiprocessing.get_context("fork")
        queue: Any = context.SimpleQueue()
        child = context.Process(target=_measure, args=(n, out, queue, leak))
        child.start()
        child.join(PATIENCE)
        assert child.exitcode == 0
        peaks.append(queue.get())
        if out is not None:
            for path in sorted(out.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
    return min(peaks)


def _measure(n: int, out: Path | None, queue: Any, leak: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    warm = extract(model, Synthetic(8), ["0"], batch_size=8, num_workers=0)  # allocator warm-up
    del warm
    if leak:  # keep every other batch's rows alive, as a leaking writer would
        from featwrap.extraction import sinks

        kept: list[Any] = []
        write = sinks.FileSink.write

        def leaky(self: Any, indices: list[int], rows: Any) -> None:
            if len(kept) % 2 == 0:
                kept.append(rows)
            else:
                kept.append(None)
            write(self, indices, rows)

        sinks.FileSink.write = leaky  # type: ignore[method-assign]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    features = extract(model, Synthetic(n), ["0", "2"], out=out, batch_size=32, num_workers=0)
    assert len(features.ids) == n
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            queue.put(int(line.split()[1]) * 1024)
            return
    queue.put(-1)


def test_peak_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    small = _peak_rss(SMALL, tmp_path / "small", repeats=2)
    large = _peak_rss(LARGE, tmp_path / "large", repeats=2)
    assert large - small < TOLERANCE, (
        f"peak RSS grew by {(large - small) >> 20} MiB for {GROWN >> 20} MiB more features"
    )
    # The same measurement sees a leak of half the batches, and in-memory extraction grow:
    leaking = _peak_rss(LARGE, tmp_path / "leak", leak=True)
    assert leaking - small > TOLERANCE, f"a leak of {(GROWN // 2) >> 20} MiB went unseen"
    small_memory = _peak_rss(SMALL, None)
    large_memory = _peak_rss(LARGE, None)
    assert large_memory - small_memory > GROWN * 0.8

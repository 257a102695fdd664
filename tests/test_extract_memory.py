"""Memory stays flat: the peak RSS of an extraction to disk does not grow with the dataset.

Measured, not timed: each run is a forked child that resets its peak RSS (VmHWM, through
/proc/self/clear_refs) just before extracting and reports it after. The same measurement of
in-memory extraction, which must hold every row, shows that the method sees growth.
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
SMALL, LARGE = 160, 640  # 22.5 MiB and 90 MiB of features
TOLERANCE = 12 << 20

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


def _peak_rss(n: int, out: Path | None) -> int:
    queue: Any = multiprocessing.get_context("fork").SimpleQueue()
    child = multiprocessing.get_context("fork").Process(target=_measure, args=(n, out, queue))
    child.start()
    child.join(300)
    assert child.exitcode == 0
    peak: int = queue.get()
    return peak


def _measure(n: int, out: Path | None, queue: Any) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    warm = extract(model, Synthetic(8), ["0"], batch_size=8, num_workers=0)  # allocator warm-up
    del warm
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    features = extract(model, Synthetic(n), ["0", "2"], out=out, batch_size=32, num_workers=0)
    assert len(features.ids) == n
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            queue.put(int(line.split()[1]) * 1024)
            return
    queue.put(-1)


def test_peak_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    small = _peak_rss(SMALL, tmp_path / "small")
    large = _peak_rss(LARGE, tmp_path / "large")
    grown = (LARGE - SMALL) * ROW_BYTES
    assert large - small < TOLERANCE, (
        f"peak RSS grew by {(large - small) >> 20} MiB for {grown >> 20} MiB more features"
    )
    # The same measurement sees in-memory extraction grow (it must keep every row):
    small_memory = _peak_rss(SMALL, None)
    large_memory = _peak_rss(LARGE, None)
    assert large_memory - small_memory > grown * 0.8

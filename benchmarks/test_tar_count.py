"""What the progress bar's total of tar shards costs: counting a shard from its headers against
reading it, and the start of a run with the bar shown against one without.

    uv run pytest benchmarks/test_tar_count.py -s

One shard of ``BENCH_TAR_N`` samples (``BENCH_TAR_KB`` KiB each: a small ``.pth`` tensor and a
payload member, as a JPEG would be; the file is in the page cache, so reading is as fast as it
gets and the ratio is the least favourable to counting). Rounds alternate the variants; the
figures are ratios of medians measured in the same run. Reports, never asserts a time.
"""

from __future__ import annotations

import io
import os
import statistics
import tarfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featwrap import extract
from featwrap.extraction.tars import count_samples, read_tar

N = int(os.environ.get("BENCH_TAR_N", "4000"))
KB = int(os.environ.get("BENCH_TAR_KB", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def _shard(path: Path) -> None:
    payload = os.urandom(KB * 1024)
    with tarfile.open(path, "w") as tar:
        for i in range(N):
            tensor = io.BytesIO()
            torch.save(torch.full((4,), float(i)), tensor)
            for ext, data in (("pth", tensor.getvalue()), ("bin", payload)):
                info = tarfile.TarInfo(f"{i:07d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


class _FirstCall(nn.Module):
    """A linear layer that notes when its first forward starts."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.first: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            self.first = time.perf_counter()
        return self.linear(x)  # type: ignore[no-any-return]


def test_count_vs_read_and_start(benchmark: Any, tmp_path: Path) -> None:
    path = tmp_path / "shard-0.tar"
    _shard(path)
    assert count_samples(path) == N
    runs: dict[str, list[float]] = {"count": [], "read": [], "start bar": [], "start no bar": []}
    runs.update({"run bar": [], "run no bar": []})

    def start(progress: bool) -> float:
        model = _FirstCall()
        began = time.perf_counter()
        extract(model, str(path), ["linear"], batch_size=64, num_workers=0, progress=progress)
        runs["run bar" if progress else "run no bar"].append(time.perf_counter() - began)
        assert model.first is not None
        return model.first - began

    def compare() -> None:
        for _ in range(ROUNDS):
            began = time.perf_counter()
            count_samples(path)
            runs["count"].append(time.perf_counter() - began)
            began = time.perf_counter()
            for _ in read_tar(path):
                pass
            runs["read"].append(time.perf_counter() - began)
            runs["start bar"].append(start(True))
            runs["start no bar"].append(start(False))

    benchmark.pedantic(compare, rounds=1, iterations=1)
    med = {name: statistics.median(times) for name, times in runs.items()}
    mib = path.stat().st_size / 2**20
    print(f"\none shard of {N} samples ({mib:.0f} MiB), {ROUNDS} rounds (medians):")
    print(f"  count from headers {med['count'] * 1e3:7.1f} ms = {med['count'] / med['read']:.3f} "
          f"of reading the shard ({med['read'] * 1e3:.1f} ms)")  # fmt: skip
    print(f"  first forward after {med['start bar'] * 1e3:.1f} ms with the bar, "
          f"{med['start no bar'] * 1e3:.1f} ms without "
          f"({med['start bar'] / med['start no bar']:.3f})")  # fmt: skip
    print(f"  the whole run {med['run bar'] * 1e3:.1f} ms with the bar, "
          f"{med['run no bar'] * 1e3:.1f} ms without ({med['run bar'] / med['run no bar']:.3f})")  # fmt: skip
    benchmark.extra_info["count / read"] = med["count"] / med["read"]
    benchmark.extra_info["start with bar / without"] = med["start bar"] / med["start no bar"]
    benchmark.extra_info["run with bar / without"] = med["run bar"] / med["run no bar"]

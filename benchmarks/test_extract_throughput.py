"""Throughput of featwrap.extract against the best bare loop of plain forwards with the same
settings (autocast dtype, channels_last, pinned memory and non-blocking copies on CUDA) over the
same DataLoader.

    uv run pytest benchmarks/test_extract_throughput.py -s
    BENCH_MODEL=resnet50 BENCH_SIZE=224 BENCH_N=2048 uv run pytest benchmarks/... -s -k bf16  # GPU

``BENCH_MODEL`` is a torchvision model (``resnet18``, ``resnet50``, ``vit_b_16``), ``BENCH_DEVICE``
the device (default: CUDA when available).

Rounds interleave the bare loop, extract to disk and extract in memory (each in every position in
turn), so that all see the same machine;
the figures are ratios of median throughputs, by wall clock and by CPU time (this process and its
DataLoader workers: steadier on a machine shared with other jobs). Reports, never asserts a time.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

from featwrap import extract

N = int(os.environ.get("BENCH_N", "128"))
SIZE = int(os.environ.get("BENCH_SIZE", "160"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
MODEL = os.environ.get("BENCH_MODEL", "resnet18")
DEVICE = torch.device(
    os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
)
LAYERS = {
    "vit_b_16": ["encoder.layers.encoder_layer_5", "encoder.ln", "logits"],
}.get(MODEL, ["maxpool", "layer3.0.downsample.1", "avgpool", "logits"])
SETTINGS = {"fp32": {}, "bf16": {"autocast": "bfloat16", "channels_last": True}}


class Images(Dataset[tuple[torch.Tensor, int]]):
    """Synthetic normalized images, made by the workers (as decoding would be)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, SIZE, SIZE, generator=g), i % 10


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - wall, _cpu() - cpu


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("pool", ["none", "avg"])
def test_extract_vs_bare_loop(benchmark: Any, tmp_path: Path, pool: str, setting: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, MODEL)(weights=None).eval().to(DEVICE)
    options: dict[str, Any] = SETTINGS[setting]
    cuda = DEVICE.type == "cuda"
    loader = DataLoader(Images(), batch_size=32, num_workers=2, pin_memory=cuda)
    autocast = getattr(torch, options.get("autocast", "float32"))
    channels_last = options.get("channels_last", False)

    def bare() -> None:  # the best plain loop with the same settings
        if channels_last:
            model.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for x, _ in loader:
                x = x.to(DEVICE, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(DEVICE.type, dtype=autocast, enabled="autocast" in options):
                    model(x)
        if cuda:
            torch.cuda.synchronize()
        model.to(memory_format=torch.contiguous_format)

    def to_disk() -> None:
        extract(model, loader, LAYERS, out=tmp_path / "out", pool=pool, device=DEVICE, **options)
        shutil.rmtree(tmp_path / "out")

    def in_memory() -> None:
        extract(model, loader, LAYERS, pool=pool, device=DEVICE, **options)

    runs: dict[str, list[tuple[float, float]]] = {"bare loop": [], "to disk": [], "in memory": []}

    order = list(zip(runs, (bare, to_disk, in_memory), strict=True))

    def compare() -> None:
        for r in range(ROUNDS):  # each variant in each position in turn
            for name, fn in order[r % 3 :] + order[: r % 3]:
                runs[name].append(_timed(fn))

    benchmark.pedantic(compare, rounds=1, iterations=1)
    wall0 = statistics.median(w for w, _ in runs["bare loop"])
    cpu0 = statistics.median(c for _, c in runs["bare loop"])
    print(f"\n{MODEL} {LAYERS} on {DEVICE}, {setting} {options}, pool={pool}: {N} images "
          f"{SIZE}px, batch 32, 2 workers, {torch.get_num_threads()} threads, {ROUNDS} rounds "
          "(medians)")  # fmt: skip
    for name, times in runs.items():
        wall = statistics.median(w for w, _ in times)
        cpu = statistics.median(c for _, c in times)
        print(f"  {name:10s} {N / wall:6.1f} images/s wall ({wall0 / wall:.3f} of bare), "
              f"{N / cpu:6.1f} images/CPU-s ({cpu0 / cpu:.3f} of bare)")  # fmt: skip
        benchmark.extra_info[f"{name} wall ratio"] = wall0 / wall
        benchmark.extra_info[f"{name} cpu ratio"] = cpu0 / cpu

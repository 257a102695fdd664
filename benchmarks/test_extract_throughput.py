"""Throughput of featwrap.extract against the best bare loop with the same settings
(benchmarks/throughput.py: the same features kept in the same dtype, written to the same folder
or kept in memory; pinned memory, non-blocking copies and no per-batch sync on CUDA).

    uv run pytest benchmarks/test_extract_throughput.py -s
    BENCH_DEVICE=cuda BENCH_SIZE=224 BENCH_N=2048 uv run pytest benchmarks/... -s -k resnet50

``BENCH_MODELS`` (comma-separated, default ``resnet18,vit_ti16``; on CUDA ``resnet50,vit_b_16``),
``BENCH_N``, ``BENCH_SIZE``, ``BENCH_ROUNDS``, ``BENCH_DEVICE`` (default: CUDA when available).
The ratios (extract's images/s over the bare loop's, median of paired rounds, wall and CPU time)
go to ``extra_info`` and the terminal; no time is asserted, only that extract's features equal
the bare loop's (checked before timing).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from benchmarks.throughput import SETTINGS, measure, table

DEVICE = os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
DEFAULT_MODELS = "resnet50,vit_b_16" if DEVICE.startswith("cuda") else "resnet18,vit_ti16"
MODELS = os.environ.get("BENCH_MODELS", DEFAULT_MODELS).split(",")
N = int(os.environ.get("BENCH_N", "64"))
SIZE = int(os.environ.get("BENCH_SIZE", "160"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
CASES = [(m, s) for m in MODELS for s in SETTINGS if not (s == "bf16+cl" and m.startswith("vit"))]


@pytest.mark.parametrize(("model", "setting"), CASES)
def test_extract_vs_bare_loop(benchmark: Any, model: str, setting: str) -> None:
    result = benchmark.pedantic(
        measure,
        args=(model, SETTINGS[setting]),
        kwargs={"device": DEVICE, "n": N, "size": SIZE, "rounds": ROUNDS},
        rounds=1,
        iterations=1,
    )
    print("\n" + table([result]))
    for where in ("to disk", "in memory"):
        benchmark.extra_info[f"{where} images/s"] = result.images_per_s[f"extract {where}"]
        benchmark.extra_info[f"{where} wall ratio"] = result.wall_ratio[f"extract {where}"]
        benchmark.extra_info[f"{where} cpu ratio"] = result.cpu_ratio[f"extract {where}"]

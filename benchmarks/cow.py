"""featwrap's copy-on-write snapshots (``torch._lazy_clone``) on a device: values, copies, costs.

    uv run python -m benchmarks.cow --device cuda --json out/cow.json

Three questions, answered on the device given (CUDA is the one that matters; CPU runs the same):

1. **Values**: a FeatureModel's features of layers that a later in-place op overwrites
   (``ReLU(inplace=True)``) equal clones taken by plain hooks the moment each module returned.
2. **Reading copies nothing**: reading a snapshot (a sum, a slice, a copy to the host) leaves it
   copy-on-write (``torch._C._is_cow_tensor``) and allocates no device memory for it.
3. **The cost of a write after capture**: an in-place write to a tensor with a live snapshot
   copies it first; timed against the same write with no snapshot and against a plain ``clone``,
   with the device memory it allocates (the median of interleaved rounds).

Every figure is reported; only a wrong value (1) or a copy on read (2) is a failed check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.checks import reference_features

__all__ = ["check", "main"]

#: whether a tensor's memory is copy-on-write (None where this PyTorch cannot say)
_IS_COW: Callable[[torch.Tensor], bool] | None = getattr(torch._C, "_is_cow_tensor", None)


def _is_cow(tensor: torch.Tensor) -> bool | None:
    return None if _IS_COW is None else _IS_COW(tensor)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def values(device: torch.device) -> dict[str, Any]:
    """Features of layers overwritten in place later, against cloning hooks (question 1)."""
    from featwrap import FeatureModel

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval().to(device)  # fmt: skip
    x = torch.randn(8, 3, 64, 64, device=device)
    layers = {"1": "bn1", "3": "conv2", "4": "bn2", "5": "relu2"}
    with torch.no_grad():
        expected = reference_features(model, layers, "logits", x)
        got = FeatureModel(model, layers, output_key="logits")(x)
    wrong = [k for k, v in expected.items() if not torch.equal(got[k], v)]
    return {"layers": list(expected), "wrong": wrong, "ok": not wrong}


def reads(device: torch.device, numel: int) -> dict[str, Any]:
    """Whether reading a snapshot copies it (question 2)."""
    x = torch.randn(numel, device=device)
    _sync(device)
    before = _allocated(device)
    snap = torch._lazy_clone(x)
    at_capture = _allocated(device)
    total, half, host = snap.sum(), snap[: numel // 2].sum(), snap[:1024].cpu()
    same = torch.equal(snap, x)
    del total, half, host
    _sync(device)
    after_reads = _allocated(device)
    cow = _is_cow(snap) is not False and _is_cow(x) is not False
    return {
        "cow_after_capture_and_reads": cow,
        "equal": same,
        "device_bytes_of_capture": _delta(before, at_capture),
        "device_bytes_kept_after_reads": _delta(before, after_reads),
        "ok": cow and same,
    }


def _delta(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def write_cost(device: torch.device, numel: int, rounds: int) -> dict[str, Any]:
    """The first in-place write after a capture, timed against a write with no snapshot and a
    plain clone, interleaved (question 3)."""
    x = torch.randn(numel, device=device)

    def plain_write() -> None:
        x.add_(1.0)

    def write_after_capture() -> torch.Tensor:
        snap = torch._lazy_clone(x)
        x.add_(1.0)
        return snap

    def clone() -> torch.Tensor:
        return x.clone()

    variants: dict[str, Callable[[], Any]] = {
        "write": plain_write,
        "write after capture": write_after_capture,
        "clone": clone,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    snap = torch._lazy_clone(x)
    expected = x.clone()
    expected_bytes = _allocated(device)
    x.add_(1.0)  # the write copies the shared memory for x; snap keeps the captured values
    _sync(device)
    after = _allocated(device)
    exact = torch.equal(snap, expected)
    del snap
    for _ in range(rounds):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            kept = fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            del kept
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "bytes": numel * 4,
        "median_s": median,
        "write_after_capture_vs_write": median["write after capture"] / median["write"],
        "write_after_capture_vs_clone_plus_write": median["write after capture"]
        / (median["clone"] + median["write"]),
        "device_bytes_allocated_by_the_write": _delta(expected_bytes, after),
        "snapshot_exact_after_write": exact,
        "ok": exact,
    }


def check(device: str = "cuda", mib: int = 64, rounds: int = 20) -> dict[str, Any]:
    """All three checks on ``device`` with tensors of ``mib`` MiB."""
    dev = torch.device(device)
    numel = mib * 2**20 // 4
    result: dict[str, Any] = {
        "device": str(dev),
        "name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "values": values(dev),
        "reads": reads(dev, numel),
        "write": write_cost(dev, numel, rounds),
    }
    result["ok"] = all(result[k]["ok"] for k in ("values", "reads", "write"))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cow", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="default: %(default)s")
    p.add_argument("--mib", type=int, default=64, help="tensor size (default: %(default)s MiB)")
    p.add_argument("--rounds", type=int, default=20, help="default: %(default)s")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    args = p.parse_args(argv)
    result = check(args.device, args.mib, args.rounds)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

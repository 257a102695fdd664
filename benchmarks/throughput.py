"""Extraction throughput: ``featwrap.extract`` against the best bare loop with the same settings.

    uv run python -m benchmarks.throughput                     # CPU: resnet18 and a ViT-Ti, 160 px
    uv run python -m benchmarks.throughput --device cuda --models resnet50 vit_b_16 --size 224 \\
        --n 2048 --settings bf16 bf16+cl --json out/throughput.json

The bare loop does the useful work extract does, as well as a user would write it: forward hooks
that keep the same layers' outputs (references, no copies), ``torch.no_grad`` (as fast as
``torch.inference_mode`` here, and twice as fast for a ViT under CPU bf16 autocast), the same
autocast dtype and memory format, the features pooled alike, made contiguous in the same dtype and
either written to one file per layer in the same folder or kept in memory (one tensor per layer,
concatenated at the end; the model is put in channels_last for the run and back after it, as
extract leaves it). On CUDA its batches come through pinned memory with ``non_blocking`` copies, the
features go to pinned host buffers without waiting, and a batch is written only after the next
one's forward is queued (one CUDA event per batch, no other synchronisation). Before timing, the
outputs of extract (to disk and in memory) are checked equal to the bare loop's.

Each round runs the four variants (bare and extract, to disk and in memory) back to back in a
shuffled order; a ratio is the median over rounds of the ratio within a round (95% interval from
order statistics), by wall clock and by CPU time (this process and its DataLoader workers, which
a busy shared machine disturbs less). Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.timing import Timings

__all__ = [
    "MODELS",
    "SETTINGS",
    "BareLoop",
    "Images",
    "Result",
    "Setting",
    "build_model",
    "main",
    "measure",
]

#: model name -> the layers kept (``logits``: the model's own output)
MODELS: dict[str, list[str]] = {
    "resnet18": ["maxpool", "layer3.0.downsample.1", "avgpool", "logits"],
    "resnet50": ["maxpool", "layer3.0.downsample.1", "avgpool", "logits"],
    "vit_ti16": ["encoder.layers.encoder_layer_5", "encoder.ln", "logits"],
    "vit_b_16": ["encoder.layers.encoder_layer_5", "encoder.ln", "logits"],
}
VARIANTS = ("bare to disk", "extract to disk", "bare in memory", "extract in memory")


@dataclass(frozen=True)
class Setting:
    """How the forwards run: the autocast dtype (``None``: full precision), channels_last."""

    name: str
    autocast: str | None = None
    channels_last: bool = False

    def options(self) -> dict[str, Any]:
        """Extract's keyword arguments for this setting."""
        return {"autocast": self.autocast, "channels_last": self.channels_last}


SETTINGS = {
    s.name: s
    for s in (Setting("fp32"), Setting("bf16", "bfloat16"), Setting("bf16+cl", "bfloat16", True))
}


class Images(Dataset[tuple[torch.Tensor, int]]):
    """Synthetic normalized images, made in the DataLoader's workers (as decoding would be)."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=g), i % 10


def build_model(name: str, size: int) -> nn.Module:
    """A torchvision model with seeded random weights (``vit_ti16``: ViT-Ti/16, 12 blocks of 192)."""
    import torchvision
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model: nn.Module
    if name == "vit_ti16":
        model = VisionTransformer(size, 16, 12, 3, 192, 768)
    elif name.startswith("vit"):
        model = getattr(torchvision.models, name)(weights=None, image_size=size)
    else:
        model = getattr(torchvision.models, name)(weights=None)
    return model.eval()


def _pool(value: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "avg" and value.ndim > 2:
        return value.mean(dim=tuple(range(2, value.ndim)))
    return value


class BareLoop:
    """The best plain loop for the job: hooks keep the layers' outputs, the rows go to disk or
    memory (see the module's docstring)."""

    def __init__(
        self, model: nn.Module, layers: Sequence[str], setting: Setting, device: torch.device,
        pool: str = "none",
    ) -> None:  # fmt: skip
        self.model, self.layers, self.setting = model, list(layers), setting
        self.device, self.pool = device, pool
        self.dtype = getattr(torch, setting.autocast) if setting.autocast else None

    def run(self, loader: DataLoader[Any], out: Path | None) -> dict[str, torch.Tensor] | None:
        """One pass over ``loader``; the features in memory (``out=None``) or files in ``out``."""
        kept: dict[str, torch.Tensor] = {}
        cuda = self.device.type == "cuda"
        last = torch.channels_last if self.setting.channels_last else torch.contiguous_format
        with ExitStack() as stack:
            for key in self.layers:
                if key != "logits":
                    module = self.model.get_submodule(key)
                    hook = module.register_forward_hook(_keeper(kept, key))
                    stack.callback(hook.remove)
            if self.setting.channels_last:
                self.model.to(memory_format=torch.channels_last)
                stack.callback(self.model.to, memory_format=torch.contiguous_format)
            sink = stack.enter_context(_sink(out, self.layers))
            stack.enter_context(torch.no_grad())  # inference_mode: slower for bf16 ViTs on CPU
            pending: tuple[dict[str, torch.Tensor], Any] | None = None
            for x, _ in loader:
                x = x.to(self.device, non_blocking=True).contiguous(memory_format=last)
                with torch.autocast(self.device.type, self.dtype, enabled=self.dtype is not None):
                    kept["logits"] = self.model(x)
                rows = {k: _to_host(_pool(kept[k], self.pool), cuda) for k in self.layers}
                event = torch.cuda.Event() if cuda else None  # type: ignore[no-untyped-call]
                if event is not None:
                    event.record()
                if pending is not None:
                    sink(*pending)  # the previous batch, while this one's forward runs
                pending = rows, event
            if pending is not None:
                sink(*pending)
            return getattr(sink, "result", lambda: None)()


def _keeper(kept: dict[str, torch.Tensor], key: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        kept[key] = output

    return hook


def _to_host(value: torch.Tensor, cuda: bool) -> torch.Tensor:
    if not cuda:
        return value.contiguous()
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    return host.copy_(value, non_blocking=True)


@contextmanager
def _sink(out: Path | None, layers: list[str]) -> Iterator[Any]:
    """``sink(rows, event)``: rows written to one file per layer, or gathered in memory."""
    if out is None:
        memory = _Memory()
        yield memory
        return
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        files = {k: stack.enter_context(open(out / f"{k}.bin", "wb")) for k in layers}
        yield _Files(files)


@dataclass
class _Files:
    files: Mapping[str, BinaryIO]

    def __call__(self, rows: dict[str, torch.Tensor], event: Any) -> None:
        if event is not None:
            event.synchronize()
        for key, value in rows.items():
            self.files[key].write(value.reshape(-1).view(torch.uint8).numpy().data)


@dataclass
class _Memory:
    parts: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def __call__(self, rows: dict[str, torch.Tensor], event: Any) -> None:
        if event is not None:
            event.synchronize()
        for key, value in rows.items():
            self.parts.setdefault(key, []).append(value)

    def result(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.parts.items()}


def _cpu_s() -> float:
    """CPU seconds of this process and of its waited-for children (the DataLoader's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


@dataclass
class Result:
    """One model and setting: images/s (medians) and extract's ratios to the bare loop."""

    model: str
    setting: str
    device: str
    images: int
    size: int
    batch_size: int
    workers: int
    rounds: int
    images_per_s: dict[str, float]
    wall_ratio: dict[str, float]
    wall_interval: dict[str, tuple[float, float]]
    cpu_ratio: dict[str, float]
    images_per_cpu_s: dict[str, float]


def measure(
    model_name: str, setting: Setting, *, device: str = "cpu", n: int = 64, size: int = 160,
    batch_size: int = 32, workers: int = 2, rounds: int = 7, pool: str = "none",
    folder: Path | None = None, seed: int = 0,
) -> Result:  # fmt: skip
    """Check extract's features against the bare loop's, then time the four variants interleaved."""
    from featwrap import extract, load_features

    dev = torch.device(device)
    model = build_model(model_name, size).to(dev)
    layers = MODELS[model_name]
    cuda = dev.type == "cuda"
    loader = DataLoader(
        Images(n, size), batch_size=batch_size, num_workers=workers, pin_memory=cuda
    )
    bare = BareLoop(model, layers, setting, dev, pool)
    options = {**setting.options(), "pool": pool, "device": dev}
    root = Path(tempfile.mkdtemp(prefix="featwrap-throughput-", dir=folder))

    def bare_disk() -> None:
        bare.run(loader, root / "bare")
        shutil.rmtree(root / "bare")

    def extract_disk() -> None:
        extract(model, loader, layers, out=root / "extract", **options)
        shutil.rmtree(root / "extract")

    def bare_memory() -> None:
        bare.run(loader, None)

    def extract_memory() -> None:
        extract(model, loader, layers, **options)

    variants = dict(
        zip(VARIANTS, (bare_disk, extract_disk, bare_memory, extract_memory), strict=True)
    )
    try:
        _check(bare.run(loader, None), extract(model, loader, layers, **options), "in memory")
        extract(model, loader, layers, out=root / "extract", **options)
        _check(bare.run(loader, None), load_features(root / "extract"), "to disk")
        shutil.rmtree(root / "extract")
        wall, cpu = _interleaved(variants, rounds, seed, cuda)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    pairs = {"extract to disk": "bare to disk", "extract in memory": "bare in memory"}
    return Result(
        model_name, setting.name, str(dev), n, size, batch_size, workers, rounds,
        images_per_s={k: n / wall.median(k) for k in VARIANTS},
        wall_ratio={k: wall.ratio(b, k) for k, b in pairs.items()},
        wall_interval={k: _inverse(wall.ratio_interval(k, b)) for k, b in pairs.items()},
        cpu_ratio={k: cpu.ratio(b, k) for k, b in pairs.items()},
        images_per_cpu_s={k: n / cpu.median(k) for k in VARIANTS},
    )  # fmt: skip


def _inverse(interval: tuple[float, float]) -> tuple[float, float]:
    """The interval of ``b / a`` from that of ``a / b``."""
    return 1 / interval[1], 1 / interval[0]


def _check(expected: Any, got: Any, where: str) -> None:
    for key, value in expected.items():
        if not torch.equal(got[key], value):
            raise AssertionError(f"extract {where}: {key!r} differs from the bare loop's")


def _interleaved(
    variants: dict[str, Callable[[], None]], rounds: int, seed: int, cuda: bool
) -> tuple[Timings, Timings]:
    """Wall and CPU seconds of each variant, one sample per round, each round in a new order."""
    wall = Timings({k: [] for k in variants})
    cpu = Timings({k: [] for k in variants})
    order, rng = list(variants), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            if cuda:
                torch.cuda.synchronize()
            w, c = time.perf_counter(), _cpu_s()
            variants[name]()
            if cuda:
                torch.cuda.synchronize()
            wall.samples[name].append(time.perf_counter() - w)
            cpu.samples[name].append(_cpu_s() - c)
    return wall, cpu


# -- report ----------------------------------------------------------------------------------------
def table(results: Sequence[Result]) -> str:
    """A markdown table: images/s of each variant and extract's ratios to the bare loop."""
    lines = [
        "| model | setting | bare to disk | extract to disk | ratio (95%) | CPU ratio "
        "| bare in memory | extract in memory | ratio (95%) | CPU ratio |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        cells = [r.model, r.setting]
        for where in ("to disk", "in memory"):
            low, high = r.wall_interval[f"extract {where}"]
            cells += [
                f"{r.images_per_s[f'bare {where}']:.1f}",
                f"{r.images_per_s[f'extract {where}']:.1f}",
                f"{r.wall_ratio[f'extract {where}']:.3f} ({low:.3f}-{high:.3f})",
                f"{r.cpu_ratio[f'extract {where}']:.3f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="featwrap.extract against the best bare loop with the same settings, to disk "
        "and in memory, interleaved: images/s and ratios (wall and CPU time).",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default: %(default)s)")
    p.add_argument("--models", nargs="+", default=["resnet18", "vit_ti16"], choices=list(MODELS),
                   help="default: %(default)s")  # fmt: skip
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                   help="default: %(default)s (bf16+cl: CNNs only)")  # fmt: skip
    p.add_argument("--n", type=int, default=64, help="images per run (default: %(default)s)")
    p.add_argument("--size", type=int, default=160, help="image size (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers (default: %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=7, help="default: %(default)s")
    p.add_argument("--pool", default="none", choices=["none", "avg"], help="default: %(default)s")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--folder", type=Path, help="where the features are written (default: tmp)")
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.add_argument("--markdown", type=Path, help="write the table as markdown")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: list[Result] = []
    for name in args.models:
        for setting in args.settings:
            if setting == "bf16+cl" and name.startswith("vit"):
                continue  # no 4-D activations past the patch embedding
            result = measure(
                name, SETTINGS[setting], device=args.device, n=args.n, size=args.size,
                batch_size=args.batch_size, workers=args.workers, rounds=args.rounds,
                pool=args.pool, folder=args.folder,
            )  # fmt: skip
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    header = (
        f"{args.n} images of {args.size} px, batch {args.batch_size}, {args.workers} workers, "
        f"pool={args.pool}, {torch.get_num_threads()} threads, {args.rounds} rounds on "
        f"{args.device} (torch {torch.__version__})"
    )
    print(header + "\n" + table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(header + "\n\n" + table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

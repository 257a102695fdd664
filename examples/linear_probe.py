"""Extract a dataset's features once, then fit a linear probe on each layer.

A linear probe asks how much of a task a frozen network's features already
hold: a linear classifier is fitted on the features of one layer, and its
accuracy on held-out images is the answer. The features are extracted once,
to disk (resumable, memory-mapped); the probes then cost seconds, and a
second run reuses the extraction.

    uv run python examples/linear_probe.py  # generated images, random weights
    uv run python examples/linear_probe.py --data imagenette/train
    # pretrained features: add --weights DEFAULT --image-size 224
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from featwrap import Features, extract

LAYERS = ("layer1", "layer2", "layer3", "avgpool")
CLASSES = {"coarse": (12.0, 20.0), "medium": (6.0, 10.0), "fine": (2.5, 4.0)}


def make_images(
    root: Path, per_class: int = 40, size: int = 48, seed: int = 0
) -> Path:
    """A small image folder, one subfolder per class: stripes whose period
    (in pixels) is coarse, medium or fine, at a random angle and phase, in
    random colours, with noise (so that no pixel statistic gives the class
    away)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(size), torch.arange(size), indexing="ij"
    )
    for name, (low, high) in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            period, angle, phase = torch.rand(3, generator=g).tolist()
            period = low + (high - low) * period
            angle, phase = math.pi * angle, 2 * math.pi * phase
            along = xs * math.cos(angle) + ys * math.sin(angle)
            mix = (torch.sin(2 * math.pi * along / period + phase) + 1) / 2
            a = torch.rand(3, 1, 1, generator=g)
            pixels = a * mix + (1 - a) * (1 - mix)  # complementary colours
            pixels += 0.1 * torch.randn(3, size, size, generator=g)
            array = (pixels.clamp(0, 1) * 255).byte().permute(1, 2, 0)
            Image.fromarray(array.numpy()).save(root / name / f"{k:03}.png")
    return root


def split(
    n: int, val_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices for training and validation, shuffled with ``seed``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    return order[n_val:], order[:n_val]


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-3,
    steps: int = 100,
) -> nn.Module:
    """A linear classifier on standardized features, fitted by L-BFGS on
    the mean cross-entropy plus ``weight_decay * |W|^2 / 2`` (a convex
    problem: one optimum, whatever the start)."""
    x = x.flatten(1).float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe"
    )
    z = (x - mean) / std

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = probe_loss(linear, z, y, weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)
    return nn.Sequential(Standardize(mean, std), nn.Flatten(), linear)


def probe_loss(
    linear: nn.Linear, z: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """The probe's objective on standardized features ``z``."""
    penalty = 0.5 * weight_decay * linear.weight.square().sum()
    return nn.functional.cross_entropy(linear(z), y) + penalty


class Standardize(nn.Module):
    """``(x - mean) / std`` with the training features' statistics."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).float() - self.mean) / self.std


@dataclass
class ProbeResult:
    layer: str
    dims: int
    train_accuracy: float
    val_accuracy: float


def accuracy(probe: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (probe(x).argmax(1) == y).float().mean().item()


def probe_layers(features: Features, seed: int = 0) -> list[ProbeResult]:
    """Fit one probe per extracted layer on the same split; its accuracies."""
    if features.targets is None:
        raise ValueError(
            "The features have no classes: extract a folder with one "
            "subfolder per class (or a torchvision ImageFolder)."
        )
    y = torch.tensor(features.targets)
    train, val = split(len(y), seed=seed)
    results = []
    for layer, x in features.items():
        probe = fit_probe(x[train], y[train], num_classes=int(y.max()) + 1)
        results.append(
            ProbeResult(
                layer,
                x[0].numel(),
                accuracy(probe, x[train], y[train]),
                accuracy(probe, x[val], y[val]),
            )
        )
    return results


def main(
    data: str | None = None,
    out: str = "probe-features",
    model: str | nn.Module = "torchvision:resnet18",
    weights: str = "none",
    image_size: int = 64,
    layers: tuple[str, ...] = LAYERS,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
) -> list[ProbeResult]:
    if data is None:  # no data given: generate a small labelled folder
        data = str(make_images(Path(out).with_name(Path(out).name + "-images")))
    # once per dataset: the features of every layer, average-pooled
    features = extract(
        model, data, list(layers), out=out, pool="avg",
        weights=weights, image_size=image_size, transform=transform,
        batch_size=32,
    )  # fmt: skip
    classes = features.classes or []
    chance = 1 / max(1, len(classes))
    print(f"{len(features.ids)} images, classes {classes}")
    print(f"chance accuracy {chance:.2f}")
    results = probe_layers(features)
    print(f"{'layer':10} {'dims':>6} {'train':>6} {'val':>6}")
    for r in results:
        print(
            f"{r.layer:10} {r.dims:>6} "
            f"{r.train_accuracy:>6.2f} {r.val_accuracy:>6.2f}"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="images, one subfolder per class")
    parser.add_argument("--out", default="probe-features")
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS))
    args = parser.parse_args()
    main(
        args.data, args.out, args.model, args.weights,
        args.image_size, tuple(args.layers),
    )  # fmt: skip

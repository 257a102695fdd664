"""torch.compile of a FeatureModel in a training step.

A small residual CNN (BatchNorm, ``ReLU(inplace=True)``, ``out += x``: the
in-place patterns featwrap guards against) is wrapped in a FeatureModel that
returns its logits and two intermediate features, compiled with
``fullgraph=True`` (a graph break would raise), and trained with a loss on
the logits and on the features. The hooks, registered at construction, are
traced into the graph with the rest of the forward.

Run it: ``uv run python examples/compile_training.py`` (the first step
compiles: about 30 s on a CPU).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F

from featwrap import FeatureModel


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x  # modifies bn's output in place
        return self.relu(out)


class SmallNet(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.block1 = Block(width)
        self.block2 = Block(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


#: The features returned next to the logits: a BatchNorm output that
#: ``+=`` modifies in place in eager mode, and the output of the first block.
LAYERS = {"block1.bn": "bn", "block1": "block1"}


def loss_of(out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus a small penalty on the features' magnitude."""
    penalty = out["bn"].square().mean() + out["block1"].square().mean()
    return F.cross_entropy(out["logits"], labels) + 0.01 * penalty


def train_step(
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> float:
    """One step through ``forward`` (the compiled FeatureModel); the loss."""
    loss = loss_of(forward(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def main(
    steps: int = 10, batch_size: int = 16, image_size: int = 16
) -> list[float]:
    """Train the compiled FeatureModel on random images; the losses."""
    torch.manual_seed(0)
    model = FeatureModel(SmallNet(), LAYERS).train()
    compiled = torch.compile(model, fullgraph=True)  # a graph break raises
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 10, (batch_size,))
    losses = [
        train_step(compiled, optimizer, images, labels) for _ in range(steps)
    ]
    print(f"compiled training: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    main(args.steps)

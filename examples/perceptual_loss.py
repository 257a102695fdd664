"""Perceptual loss: train a generator against a frozen VGG16 FeatureModel.

The loss compares VGG16 activations (relu1_2, relu2_2, relu3_3 and relu4_3,
as in Johnson et al., 2016) of the generated image and of the target. The VGG
is frozen: gradients flow *through* it to the generator's parameters, never
into it. ``output_key=None`` stops VGG's forward after relu4_3, so its later
layers never run.

Run it: ``uv run python examples/perceptual_loss.py`` (random weights; pass
``--weights DEFAULT`` when torchvision's VGG16 weights are in your cache).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import vgg16

from featwrap import FeatureModel

#: Paths in ``vgg16().features`` of the ReLUs whose outputs are compared.
VGG16_LAYERS = {
    "3": "relu1_2",
    "8": "relu2_2",
    "15": "relu3_3",
    "22": "relu4_3",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """Mean squared distance between VGG16 features of an image and a target.

    Args:
        weights: torchvision weights for VGG16 (``"DEFAULT"`` in real use;
            ``None``: random).
        layers: ``{path in vgg16().features: name}`` of the compared layers.
    """

    def __init__(
        self,
        weights: str | None = None,
        layers: dict[str, str] = VGG16_LAYERS,
    ) -> None:
        super().__init__()
        # the convolutional part only (no classifier), frozen
        vgg = vgg16(weights=weights).features
        vgg.eval().requires_grad_(False)
        # output_key=None: the forward stops after the last requested layer
        self.vgg = FeatureModel(vgg, layers, output_key=None)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Keep the frozen VGG in eval mode, whatever the mode of the rest."""
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """VGG16 features of images with values in [0, 1]."""
        return self.vgg((image - self.mean) / self.std)

    def forward(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():  # the target is a constant: no graph needed
            wanted = self.features(target)
        got = self.features(image)
        losses = [F.mse_loss(got[k], wanted[k]) for k in wanted]
        return torch.stack(losses).sum()


class Generator(nn.Module):
    """A small image-to-image network (a stand-in for your generator)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.body(x)).clamp(0, 1)


def train(
    generator: nn.Module,
    loss_fn: PerceptualLoss,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
) -> list[float]:
    """Train ``generator`` to map ``noisy`` to ``clean``; the losses."""
    generator.train()
    loss_fn.train()
    # the optimizer sees the generator's parameters only
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(generator(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(
    steps: int = 20,
    image_size: int = 64,
    batch_size: int = 4,
    weights: str | None = None,
) -> list[float]:
    """Denoise a batch of random images; the loss of every step."""
    torch.manual_seed(0)
    clean = torch.rand(batch_size, 3, image_size, image_size)
    noisy = (clean + 0.2 * torch.randn_like(clean)).clamp(0, 1)
    loss_fn = PerceptualLoss(weights)
    losses = train(Generator(), loss_fn, noisy, clean, steps)
    print(f"perceptual loss: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--weights", default=None, help="e.g. DEFAULT")
    args = parser.parse_args()
    main(args.steps, args.image_size, weights=args.weights)

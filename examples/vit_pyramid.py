"""A ViT backbone feeding a multi-scale head: a simple feature pyramid.

A plain ViT keeps one stride (16) and returns tokens ``(B, 1 + HW, C)``.
``featwrap.stages`` returns its blocks as NCHW maps (the class token split
off, the tokens laid out on the patch grid of the actual input), so the
last block's map feeds a simple feature pyramid as in ViTDet: transposed
convolutions up to strides 4 and 8, the map itself at 16, a max-pool down
to 32. A 1x1 convolution classifies every pixel of the finest level. The
whole model trains end to end.

    uv run python examples/vit_pyramid.py
    uv run python examples/vit_pyramid.py --model timm:deit_tiny_patch16_224
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from featwrap import FeatureModel, stages
from featwrap.hub import load_model


class SimplePyramid(nn.Module):
    """One stride-16 map -> maps at strides 4, 8, 16 and 32."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        c = channels
        self.scales = nn.ModuleList(
            [
                nn.Sequential(  # stride 4
                    nn.ConvTranspose2d(c, c // 2, 2, stride=2),
                    nn.GELU(),
                    nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2),
                ),
                nn.ConvTranspose2d(c, c // 2, 2, stride=2),  # stride 8
                nn.Identity(),  # stride 16
                nn.MaxPool2d(2),  # stride 32
            ]
        )
        self.outputs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(inner, out_channels, 1),
                nn.Conv2d(out_channels, out_channels, 3, padding=1),
            )
            for inner in (c // 4, c // 2, c, c)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            f"p{level}": out(scale(x))
            for level, scale, out in zip(
                (2, 3, 4, 5), self.scales, self.outputs, strict=True
            )
        }


class ViTSegmenter(nn.Module):
    """ViT's last block as a map -> simple pyramid -> per-pixel classes."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        # the last block, as an NCHW map; output_key=None: the forward
        # stops there (no final norm, no pooling, no classifier)
        last = stages(backbone, out_indices=1)
        self.body = FeatureModel(backbone, last, output_key=None)
        info = self.body.feature_info((3, image_size, image_size))
        (channels,) = info.channels()
        self.pyramid = SimplePyramid(int(channels or 0), out_channels=64)
        self.classifier = nn.Conv2d(64, num_classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (feature,) = self.body(images).values()  # (B, C, H/16, W/16)
        finest = self.pyramid(feature)["p2"]  # stride 4
        logits = self.classifier(finest)
        return nn.functional.interpolate(
            logits, size=images.shape[-2:], mode="bilinear"
        )


def toy_task(
    batch: int, image_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks with something to learn: a pixel's class is the
    channel where the image, smoothed over 16x16 cells, is largest."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randn(
        batch, 3, image_size // 16, image_size // 16, generator=g
    )
    smooth = nn.functional.interpolate(cells, scale_factor=16.0)
    noise = 0.1 * torch.randn(smooth.shape, generator=g)
    return smooth + noise, smooth.argmax(dim=1)


def train(
    backbone: nn.Module,
    steps: int = 20,
    image_size: int = 64,
    batch: int = 4,
    seed: int = 0,
) -> list[float]:
    """Fit the ViT segmenter on the toy task; the loss of each step."""
    torch.manual_seed(seed)
    model = ViTSegmenter(backbone, num_classes=3, image_size=image_size)
    model.train()
    images, masks = toy_task(batch, image_size, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:vit_tiny_patch16_224")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    backbone = load_model(args.model, args.weights).model
    losses = train(backbone, args.steps, args.image_size)
    print(f"{args.model}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()

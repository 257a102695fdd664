"""A multi-scale head on any backbone: FeatureModel(backbone, stages(backbone)) -> FPN.

The stages come from ``featwrap.stages`` (timm's own feature_info, or torchvision's families), the
FPN's input channels from ``feature_info`` (a dry run on fake tensors: no compute), and the whole
thing trains end to end, gradients flowing through the captured features into the backbone.

    uv run python examples/multiscale_fpn.py --model torchvision:resnet18 --steps 20
    uv run python examples/multiscale_fpn.py --model timm:convnext_atto
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from featwrap import FeatureModel, stages
from featwrap.hub import load_model


class SegmentationFPN(nn.Module):
    """Backbone stages -> FPN -> a per-pixel classifier on the finest level, upsampled."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        # the last four stages (strides 4 to 32); the forward stops after the last one
        self.body = FeatureModel(
            backbone, stages(backbone, out_indices=4), output_key=None
        )
        info = self.body.feature_info((3, image_size, image_size))
        self.fpn = FeaturePyramidNetwork(info.channels(), out_channels=64)  # type: ignore[arg-type]
        self.classifier = nn.Conv2d(64, num_classes, kernel_size=1)
        self.layouts = [info[k].layout for k in info.layer_keys()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = OrderedDict(
            (key, _channels_first(value, layout))
            for (key, value), layout in zip(
                self.body(images).items(), self.layouts, strict=True
            )
        )
        finest = next(iter(self.fpn(features).values()))
        logits = self.classifier(finest)
        return nn.functional.interpolate(
            logits, size=images.shape[-2:], mode="bilinear"
        )


def _channels_first(value: torch.Tensor, layout: str | None) -> torch.Tensor:
    """Swin-style stages are channels-last (``N*C``); an FPN wants ``NCHW``."""
    return value.permute(0, 3, 1, 2) if layout == "N**C" else value


def train(
    backbone: nn.Module,
    steps: int = 20,
    image_size: int = 64,
    batch: int = 4,
    seed: int = 0,
) -> list[float]:
    """Fit the segmentation FPN on random images; the losses, step by step.

    The task has something to learn: each pixel's class is the channel where the image (smoothed
    over 4x4 cells) is largest.
    """
    torch.manual_seed(seed)
    model = SegmentationFPN(
        backbone, num_classes=3, image_size=image_size
    ).train()
    cells = torch.randn(batch, 3, image_size // 4, image_size // 4)
    images = nn.functional.interpolate(
        cells, scale_factor=4.0
    ) + 0.1 * torch.randn(batch, 3, image_size, image_size)
    masks = images.argmax(dim=1)
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
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    backbone = load_model(args.model).model
    losses = train(backbone, steps=args.steps, image_size=args.image_size)
    print(
        f"{args.model}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps"
    )


if __name__ == "__main__":
    main()

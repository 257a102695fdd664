"""A multi-scale head on any backbone: stages -> FPN -> segmentation head.

``featwrap.stages`` names the backbone's stages (timm's own feature_info,
or torchvision's families); ``feature_info`` gives their channels with a
dry run on fake tensors (no compute); torchvision's FeaturePyramidNetwork
merges them; a 1x1 convolution classifies every pixel. The whole model
trains end to end: gradients flow through the captured features into the
backbone.

    uv run python examples/multi_scale.py
    uv run python examples/multi_scale.py --model timm:convnext_atto
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
    """Backbone stages -> FPN -> per-pixel classes, upsampled to the input."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        # the last four stages (strides 4 to 32); output_key=None: the
        # forward stops after the last one (no pooling, no classifier)
        self.body = FeatureModel(
            backbone, stages(backbone, out_indices=4), output_key=None
        )
        info = self.body.feature_info((3, image_size, image_size))
        channels = [int(c or 0) for c in info.channels()]
        self.fpn = FeaturePyramidNetwork(channels, out_channels=64)
        self.classifier = nn.Conv2d(64, num_classes, kernel_size=1)
        # Swin-like stages are channels-last ("NHWC"); an FPN wants NCHW
        self.last = [info[k].layout == "NHWC" for k in info.layer_keys()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = OrderedDict(
            (key, value.permute(0, 3, 1, 2) if last else value)
            for (key, value), last in zip(
                self.body(images).items(), self.last, strict=True
            )
        )
        finest = next(iter(self.fpn(features).values()))  # stride 4
        logits = self.classifier(finest)
        return nn.functional.interpolate(
            logits, size=images.shape[-2:], mode="bilinear"
        )


def toy_task(
    batch: int, image_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks with something to learn: a pixel's class is the
    channel where the image, smoothed over 4x4 cells, is largest."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randn(batch, 3, image_size // 4, image_size // 4, generator=g)
    smooth = nn.functional.interpolate(cells, scale_factor=4.0)
    noise = 0.1 * torch.randn(smooth.shape, generator=g)
    return smooth + noise, smooth.argmax(dim=1)


def train(
    backbone: nn.Module,
    steps: int = 20,
    image_size: int = 64,
    batch: int = 4,
    seed: int = 0,
) -> list[float]:
    """Fit the segmentation FPN on the toy task; the loss of each step."""
    torch.manual_seed(seed)
    model = SegmentationFPN(backbone, num_classes=3, image_size=image_size)
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
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    backbone = load_model(args.model, args.weights).model
    losses = train(backbone, args.steps, args.image_size)
    print(f"{args.model}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()

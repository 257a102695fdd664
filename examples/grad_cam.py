"""Grad-CAM: where in the image a classifier looks for a class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a convolutional
layer by the mean gradient of the class score with respect to it, sums the
weighted channels, keeps the positive part and upsamples it to the image.
featwrap returns the layer's activation on the autograd graph, so
``torch.autograd.grad(score, out[layer])`` is the gradient at that layer,
also for a layer that a later in-place op (``ReLU(inplace=True)``) modifies.

Run it: ``uv run python examples/grad_cam.py`` (random weights; pass
``--weights DEFAULT`` when torchvision's resnet18 weights are in your cache).
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F
from torchvision.models import resnet18

from featwrap import FeatureModel


def normalize(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``cam`` (batch, height, width) to [0, 1]."""
    low = cam.amin(dim=(1, 2), keepdim=True)
    cam = cam - low
    return cam / (1e-7 + cam.amax(dim=(1, 2), keepdim=True))


def grad_cam(
    fm: FeatureModel, images: torch.Tensor, classes: torch.Tensor, layer: str
) -> torch.Tensor:
    """Grad-CAM heat maps (batch, height, width) in [0, 1], one per image
    for its class, at the size of the images."""
    out = fm(images)
    score = out["logits"].gather(1, classes[:, None]).sum()
    acts = out[layer]  # (batch, channels, h, w), on the graph
    (grads,) = torch.autograd.grad(score, acts)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # one per channel
    cam = (weights * acts).sum(dim=1).clamp(min=0).detach()
    size = images.shape[-2:]
    cam = F.interpolate(normalize(cam)[:, None], size=size, mode="bilinear")[
        :, 0
    ]
    return normalize(cam)


def main(weights: str | None = None, layer: str = "layer4") -> torch.Tensor:
    """Heat maps of two random images for their top class."""
    torch.manual_seed(0)
    fm = FeatureModel(resnet18(weights=weights).eval(), [layer])
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        classes = fm.backbone(images).argmax(dim=1)
    cam = grad_cam(fm, images, classes, layer)
    peak = [divmod(int(c.argmax()), c.shape[1]) for c in cam]
    print(f"Grad-CAM {tuple(cam.shape)}, peaks (row, col): {peak}")
    return cam


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None, help="e.g. DEFAULT")
    parser.add_argument("--layer", default="layer4")
    args = parser.parse_args()
    main(args.weights, args.layer)

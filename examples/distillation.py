"""Knowledge distillation with intermediate features: ResNet-50 to ResNet-18.

Both networks are FeatureModels returning their logits and two stages
(strides 8 and 16). The student's stages have fewer channels than the
teacher's (128/256 against 512/1024), so a 1x1 convolution per stage (an
adapter, trained with the student) maps one onto the other. The loss is:

* cross-entropy on the labels,
* KL divergence to the teacher's softened logits (Hinton et al., 2015),
* mean squared distance between adapted student features and teacher
  features (FitNets, Romero et al., 2015).

The teacher is frozen and in eval mode: it never changes.

Run it: ``uv run python examples/distillation.py`` (random weights; a real
teacher is trained).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet18, resnet50

from featwrap import FeatureModel

#: The stages compared, with the names they get in both models' outputs.
STAGES = {"layer2": "stride8", "layer3": "stride16"}


def channels(model: FeatureModel, image_size: int = 32) -> dict[str, int]:
    """The channel count of each feature, from one forward on a dummy batch."""
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    return {k: v.shape[1] for k, v in out.items() if k != model.output_key}


class Distiller(nn.Module):
    """The student and its adapters (trained), and the teacher (frozen)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        stages: dict[str, str] = STAGES,
        temperature: float = 4.0,
        feature_weight: float = 1.0,
    ) -> None:
        super().__init__()
        teacher.eval().requires_grad_(False)
        self.student = FeatureModel(student, stages)
        self.teacher = FeatureModel(teacher, stages)
        t_channels = channels(self.teacher)
        s_channels = channels(self.student)
        self.adapters = nn.ModuleDict(
            {
                k: nn.Conv2d(s_channels[k], t_channels[k], kernel_size=1)
                for k in s_channels
            }
        )
        self.temperature = temperature
        self.feature_weight = feature_weight

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics must not move
        return self

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The loss terms for one batch (their sum under ``"loss"``)."""
        with torch.no_grad():
            teacher = self.teacher(images)
        student = self.student(images)
        t = self.temperature
        kd = F.kl_div(
            F.log_softmax(student["logits"] / t, dim=1),
            F.log_softmax(teacher["logits"] / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        feature = torch.stack(
            [
                F.mse_loss(adapter(student[k]), teacher[k])
                for k, adapter in self.adapters.items()
            ]
        ).sum()
        ce = F.cross_entropy(student["logits"], labels)
        loss = ce + kd + self.feature_weight * feature
        return {"loss": loss, "ce": ce, "kd": kd, "feature": feature}


def train(
    distiller: Distiller,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float = 0.01,
) -> list[float]:
    """Train the student and adapters on one batch; the total losses."""
    trained = [
        *distiller.student.parameters(),
        *distiller.adapters.parameters(),
    ]
    optimizer = torch.optim.SGD(trained, lr=lr, momentum=0.9)
    distiller.train()
    losses = []
    for _ in range(steps):
        loss = distiller(images, labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(
    steps: int = 10,
    image_size: int = 64,
    batch_size: int = 8,
    num_classes: int = 10,
) -> list[float]:
    """Distil on a batch of random images; the loss of every step."""
    torch.manual_seed(0)
    teacher = resnet50(num_classes=num_classes)  # in real use: trained
    distiller = Distiller(resnet18(num_classes=num_classes), teacher)
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, num_classes, (batch_size,))
    losses = train(distiller, images, labels, steps)
    print(f"distillation loss: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    main(args.steps)

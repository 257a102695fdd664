"""DistributedDataParallel with a FeatureModel backbone, on CPU processes.

Launch: ``torchrun --standalone --nproc_per_node 2 examples/distributed.py``

Two set-ups, each trained for a few steps on a different random shard per
process (gloo backend), both wrapped in plain DDP
(``find_unused_parameters=False``, the default):

* ``logits``: the backbone's output and a feature both enter the loss:
  every parameter gets a gradient.
* ``early_stop``: ``output_key=None``, features up to ``layer3``: the
  forward stops there, so ``layer4`` and ``fc`` never run. The FeatureModel
  leaves them out of its parameters (``fm.unused_modules``), so DDP and the
  optimizer never see them, and of its state dict. Nothing to do by hand.

With ``--out DIR``, each process writes ``DIR/MODE-rankN.json`` (losses,
the unused modules, which parameters got gradients, hashes of the trained
parameters and of the backbone's unused ones) and ``DIR/MODE-rankN.pt``
(the trained state dict).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.models import resnet18

from featwrap import FeatureModel

MODES = ("logits", "early_stop")
LR = 0.02


class Classifier(nn.Module):
    """A FeatureModel backbone and a small head on its ``layer3`` feature."""

    def __init__(self, early_stop: bool, num_classes: int = 10) -> None:
        super().__init__()
        backbone = resnet18(num_classes=num_classes)
        output_key = None if early_stop else "logits"
        self.features = FeatureModel(
            backbone, {"layer3": "c4"}, output_key=output_key
        )
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.features(x)
        out["head"] = self.head(out["c4"].mean((2, 3)))
        return out


def loss_of(out: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(out["head"], y)
    if "logits" in out:
        loss = loss + F.cross_entropy(out["logits"], y)
    return loss


def digest(named: Any) -> str:
    """A hash of named parameters."""
    sha = hashlib.sha256()
    for name, parameter in named:
        sha.update(name.encode())
        sha.update(parameter.detach().numpy().tobytes())
    return sha.hexdigest()


def unused_of(model: Classifier) -> list[tuple[str, nn.Parameter]]:
    """The backbone's parameters that the FeatureModel leaves out."""
    backbone = model.features.backbone
    return [
        (f"{path}.{name}", parameter)
        for path in model.features.unused_modules
        for name, parameter in backbone.get_submodule(path).named_parameters()
    ]


def shard(batch_size: int, image_size: int) -> tuple[torch.Tensor, ...]:
    """This rank's data: a different random batch on each rank."""
    gen = torch.Generator().manual_seed(1000 + dist.get_rank())
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    return x, y


def train(
    mode: str, steps: int, batch_size: int, image_size: int
) -> dict[str, Any]:
    """Train one set-up on this rank's shard; what this rank saw."""
    x, y = shard(batch_size, image_size)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = Classifier(early_stop=mode == "early_stop")
    ddp = DDP(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
    unused_before = digest(unused_of(model))
    losses = []
    for _ in range(steps):
        loss = loss_of(ddp(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    named = list(model.named_parameters())
    return {
        "mode": mode,
        "world_size": dist.get_world_size(),
        "losses": losses,
        "unused_modules": list(model.features.unused_modules),
        "parameters": [n for n, _ in named],
        "with_grad": [n for n, p in named if p.grad is not None],
        "trained_digest": digest(named),
        "unused_digest_before": unused_before,
        "unused_digest_after": digest(unused_of(model)),
        "state_dict": model.state_dict(),
    }


def main(
    modes: list[str],
    steps: int,
    batch_size: int,
    image_size: int,
    out: Path | None,
) -> None:
    torch.set_num_threads(1)  # the processes share the machine's cores
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        for mode in modes:
            result = train(mode, steps, batch_size, image_size)
            state = result.pop("state_dict")
            if out is not None:
                stem = out / f"{mode}-rank{rank}"
                torch.save(state, stem.with_suffix(".pt"))
                text = json.dumps(result, indent=1)
                stem.with_suffix(".json").write_text(text)
            if rank == 0:
                losses = result["losses"]
                print(f"{mode}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
            dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write results here")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error(
            f"launch with: torchrun --standalone --nproc_per_node 2 {__file__}"
        )
    modes = list(MODES) if args.mode == "all" else [args.mode]
    main(modes, args.steps, args.batch_size, args.image_size, args.out)

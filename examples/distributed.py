"""DistributedDataParallel with a FeatureModel backbone, on CPU processes.

Launch: ``torchrun --standalone --nproc_per_node 2 examples/distributed.py``

Three set-ups, each trained for a few steps on a different random shard per
process (gloo backend):

* ``logits``: the backbone's output and a feature both enter the loss: every
  parameter gets a gradient, plain DDP works.
* ``freeze``: early stop (``output_key=None``) after ``layer3``: ``layer4``
  and ``fc`` never run, so their parameters get no gradient. Found by one
  probe forward/backward before wrapping, they are frozen
  (``requires_grad_(False)``), and DDP ignores frozen parameters.
  Recommended: no cost per step, and the checkpoint keeps its keys.
* ``find_unused``: the same model as it is, wrapped with
  ``find_unused_parameters=True``: after every forward, DDP searches the
  autograd graph for the parameters that will get no gradient. Correct, a
  little slower.

Then ``naive`` wraps the early-stopping model with plain DDP, which raises
at the second step ("Expected to have finished reduction in the prior
iteration"): the error that both fixes avoid.

With ``--out DIR``, each process writes ``DIR/MODE-rankN.json`` (losses,
hashes of the trained and of the unused parameters, which parameters got
gradients) and ``DIR/MODE-rankN.pt`` (the trained state dict).
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

MODES = ("logits", "freeze", "find_unused")
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


def unused_parameters(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> list[str]:
    """The parameters that get no gradient from one forward/backward."""
    loss_of(model(x), y).backward()
    unused = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    model.zero_grad(set_to_none=True)
    return unused


def build(
    mode: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[nn.Module, DDP, list[str]]:
    """The model (same initial weights on every rank), its DDP wrapper, and
    the names of its unused parameters."""
    torch.manual_seed(0)
    model = Classifier(early_stop=mode != "logits")
    unused = unused_parameters(model, x, y)
    if mode == "freeze":
        for name, parameter in model.named_parameters():
            if name in unused:
                parameter.requires_grad_(False)
    if mode in ("logits", "freeze", "naive"):
        return model, DDP(model), unused
    if mode == "find_unused":
        return model, DDP(model, find_unused_parameters=True), unused
    raise ValueError(f"mode={mode!r} is not one of {(*MODES, 'naive')}")


def digest(model: nn.Module, names: list[str], exclude: bool = False) -> str:
    """A hash of the parameters named in ``names`` (or of all the others)."""
    sha = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if (name in names) != exclude:
            sha.update(name.encode())
            sha.update(parameter.detach().numpy().tobytes())
    return sha.hexdigest()


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
    model, ddp, unused = build(mode, x, y)
    unused_before = digest(model, unused)
    trained = [p for p in ddp.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=LR)
    losses = []
    for _ in range(steps):
        loss = loss_of(ddp(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    return {
        "mode": mode,
        "world_size": dist.get_world_size(),
        "losses": losses,
        "unused": unused,
        "with_grad": sorted(with_grad),
        "trained_digest": digest(model, unused, exclude=True),
        "unused_digest_before": unused_before,
        "unused_digest_after": digest(model, unused),
        "state_dict": model.state_dict(),
    }


def naive(steps: int, batch_size: int, image_size: int) -> dict[str, Any]:
    """Plain DDP on the early-stopping model: the error at the second step."""
    x, y = shard(batch_size, image_size)
    _, ddp, _ = build("naive", x, y)
    try:
        for _ in range(steps):
            loss_of(ddp(x), y).backward()
    except RuntimeError as error:
        return {"mode": "naive", "error": str(error)}
    return {"mode": "naive", "error": None}


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
            sizes = (steps, batch_size, image_size)
            result = naive(*sizes) if mode == "naive" else train(mode, *sizes)
            state = result.pop("state_dict", None)
            if out is not None:
                stem = out / f"{mode}-rank{rank}"
                if state is not None:
                    torch.save(state, stem.with_suffix(".pt"))
                text = json.dumps(result, indent=1)
                stem.with_suffix(".json").write_text(text)
            if rank == 0:
                losses = result.get("losses")
                if losses:
                    print(f"{mode}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
                else:
                    print(f"{mode}: {result['error']}")
            dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    choices = [*MODES, "naive", "all"]
    parser.add_argument("--mode", choices=choices, default="all")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write results here")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error(
            f"launch with: torchrun --standalone --nproc_per_node 2 {__file__}"
        )
    modes = [*MODES, "naive"] if args.mode == "all" else [args.mode]
    main(modes, args.steps, args.batch_size, args.image_size, args.out)

"""Run under torchrun by tests/test_training_dist.py: DDP and FSDP2 over early-stopping
FeatureModels, and their references, on 2 CPU processes (gloo).

Usage: ``torchrun --standalone --nproc_per_node 2 tests/dist_training.py OUT [CASE ...]``

Each rank writes ``OUT/CASE-rankN.pt``: the gradients of the first step and the parameters after
the last, keyed by state-dict key, and the first step's features. The references are computed
without any wrapper: a hand-truncated backbone under plain DDP, and in every process the
unsharded model stepped on the mean of both ranks' gradients.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.models import resnet18

from featwrap import FeatureModel, parameters_by_key

STEPS, BATCH, SIZE, LR = 2, 4, 32, 0.05
CASES = ("ddp", "ddp_truncated", "ddp_checkpointing", "fsdp", "fsdp_checkpointing", "reference")


class Net(nn.Module):
    """A backbone returning a dict of features, and a linear head on the last one."""

    def __init__(self, features: nn.Module, channels: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.features(x)
        last = feats[list(feats)[-1]]
        pooled = last.mean((2, 3)) if last.dim() == 4 else last.mean(1)
        return self.head(pooled), feats


def resnet_net(truncated: bool = False) -> Net:
    torch.manual_seed(0)
    backbone = resnet18(num_classes=10)
    if truncated:  # by hand: the children up to layer3, in a Sequential that returns a dict
        children = list(backbone.named_children())[:7]
        return Net(TruncatedResNet(OrderedDict(children)), 256)
    return Net(FeatureModel(backbone, {"layer2": "c3", "layer3": "c4"}, output_key=None), 256)


class TruncatedResNet(nn.Sequential):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        out = {}
        for name, module in self.named_children():
            x = module(x)
            if name in ("layer2", "layer3"):
                out[{"layer2": "c3", "layer3": "c4"}[name]] = x
        return out


def vit_net(checkpointing: bool = True) -> Net:
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, embed_dim=32,
        depth=4, num_heads=2, num_classes=10,
    )  # fmt: skip
    vit.set_grad_checkpointing(checkpointing)
    return Net(FeatureModel(vit, {"blocks.1": "b1", "blocks.2": "b2"}, output_key=None), 32)


def shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)  # fmt: skip


def loss_of(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
    logits, feats = net(x)
    return F.cross_entropy(logits, y), feats


def full(t: torch.Tensor | None) -> torch.Tensor | None:
    """A DTensor's whole value (FSDP2), else the tensor."""
    if t is None:
        return None
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()


def train(net: nn.Module, wrapped: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """STEPS of SGD on this rank's batch through ``wrapped``; what the test compares."""
    by_key = parameters_by_key(net)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=LR)
    result: dict[str, Any] = {}
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss, feats = loss_of(wrapped, x, y)
        loss.backward()
        if step == 0:
            result["features"] = {k: full(v.detach()) for k, v in feats.items()}
            result["grads"] = {k: full(p.grad) for k, p in by_key.items()}
        optimizer.step()
    result["params"] = {k: full(p.detach()) for k, p in by_key.items()}
    result["n_optimized"] = len(optimizer.param_groups[0]["params"])
    return result


def reference(build: Callable[[], Net]) -> dict[str, Any]:
    """The unsharded model in this process, stepped on the mean of both ranks' gradients."""
    net = build()
    by_key = parameters_by_key(net)
    shards = [shard(0), shard(1)]
    result: dict[str, Any] = {}
    for step in range(STEPS):
        grads = []
        for x, y in shards:
            net.zero_grad(set_to_none=True)
            loss, feats = loss_of(net, x, y)
            loss.backward()
            grads.append({k: p.grad for k, p in by_key.items()})
            if step == 0 and (x is shards[dist.get_rank()][0]):
                result["features"] = {k: v.detach().clone() for k, v in feats.items()}
        mean = {k: (grads[0][k] + grads[1][k]) / 2 for k in by_key}
        if step == 0:
            result["grads"] = mean
        with torch.no_grad():
            for k, p in by_key.items():
                p -= LR * mean[k]
    result["params"] = {k: p.detach().clone() for k, p in by_key.items()}
    return result


def sharded(net: Net) -> Net:
    """FSDP2 as its docs do it: each block of the backbone, then the whole model. The unused
    modules are taken out first (fm.prune()): fully_shard walks children(), not the view."""
    from torch.distributed.fsdp import fully_shard

    net.features.prune()  # type: ignore[operator]
    backbone = net.features.backbone  # type: ignore[union-attr]
    blocks = backbone.blocks if hasattr(backbone, "blocks") else [
        block for name in ("layer1", "layer2", "layer3") for block in getattr(backbone, name)
    ]  # fmt: skip
    for block in blocks:
        if any(True for _ in block.parameters()):  # not the placeholders of pruned blocks
            fully_shard(block)
    fully_shard(net)
    return net


def run(case: str) -> dict[str, Any]:
    x, y = shard(dist.get_rank())
    if case == "reference":
        return {"resnet": reference(resnet_net), "vit": reference(vit_net)}
    if case in ("ddp", "ddp_truncated", "ddp_checkpointing"):
        net = {"ddp": resnet_net, "ddp_checkpointing": vit_net}.get(
            case, lambda: resnet_net(truncated=True)
        )()
        return train(net, DDP(net), x, y)  # find_unused_parameters=False: the default
    net = sharded(resnet_net() if case == "fsdp" else vit_net())
    return train(net, net, x, y)


def main(out: Path, cases: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        for case in cases:
            try:
                result = run(case)
            except Exception as error:  # the test reports it
                result = {"error": f"{type(error).__name__}: {error}"}
            torch.save(result, out / f"{case}-rank{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or list(CASES))

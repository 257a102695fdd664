"""Small edge-case models (in the spirit of torchinfo's test fixtures)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import namedtuple
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class ReuseReLU(nn.Module):
    """One ReLU module called three times."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.head(self.relu(x - 0.1))


class Shared(nn.Module):
    """One submodule registered under two names and called through both (Siamese-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.other = self.encoder
        self.head = nn.Linear(12, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(a), self.other(b)], dim=1))


Pair = namedtuple("Pair", ["low", "high"])


@dataclass
class Out:
    features: torch.Tensor
    extra: list[torch.Tensor]


class TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.a(x)
        return y, y * 2


class DictBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": x.sum(1, keepdim=True), "neg": -x}


class NamedBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> Pair:
        return Pair(x - 1, x + 1)


class DataclassBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> Out:
        return Out(x * 3, [x, x + 5])


class Structured(nn.Module):
    """Submodules returning a tuple, a dict, a namedtuple, a dataclass; the parent then modifies
    tensors of those structures in place."""

    def __init__(self) -> None:
        super().__init__()
        self.tup = TupleBlock()
        self.dic = DictBlock()
        self.named = NamedBlock()
        self.dc = DataclassBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.tup(x)
        a.mul_(10)  # modifies a captured tensor inside a tuple
        d = self.dic(b)
        d["neg"].add_(1)
        p = self.named(d["neg"])
        o = self.dc(p.high)
        o.extra[1].zero_()
        o.extra.append(x)  # mutates the captured list
        return o.features + o.extra[0]


class InplaceChain(nn.Module):
    """BatchNorm -> ReLU(inplace) -> `+=` -> Hardtanh(inplace): each output clobbered later."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.clip = nn.Hardtanh(0.0, 0.5, inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        z = self.conv2(y)
        z += y
        z = self.clip(z)
        return self.pool(z).flatten(1)


class Conditional(nn.Module):
    """Which branch runs depends on the data (so FX cannot trace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.pos = nn.Linear(4, 3)
        self.neg = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if h.sum() > 0:
            return self.pos(h)
        return self.neg(h)


class ConditionalInplace(nn.Module):
    """An in-place op on a captured output that happens only for some inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if x.mean() > 0:
            h.mul_(-1)
        return self.head(h)


class Loop(nn.Module):
    """A block applied a data-dependent number of times (untraceable by FX)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = int(x.abs().sum().item()) % 3 + 1
        for _ in range(steps):
            x = self.block(x)
        return self.head(x)


class KwargsOnly(nn.Module):
    """Inputs passed by keyword only, and an optional flag."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Linear(4, 4)
        self.txt = nn.Linear(3, 4)
        self.fuse = nn.Linear(8, 2)

    def forward(
        self, *, image: torch.Tensor, text: torch.Tensor, scale: float = 1.0
    ) -> dict[str, torch.Tensor]:
        fused = self.fuse(torch.cat([self.img(image), self.txt(text)], dim=1)) * scale
        return {"score": fused, "image_embedding": self.img(image)}


class Slow(nn.Module):
    """Sleeps between layers so that forwards from several threads interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.entered = threading.Barrier(4, timeout=600)  # long: a loaded machine is slow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.entered.wait()
        time.sleep(0.01)
        return self.b(y)


class Checkpointed(nn.Module):
    """Activation checkpointing inside the backbone."""

    def __init__(self, use_reentrant: bool) -> None:
        super().__init__()
        self.use_reentrant = use_reentrant
        self.stem = nn.Linear(4, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = checkpoint(self.block, h, use_reentrant=self.use_reentrant)
        return self.head(h)


class Failing(nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.a(x)
        raise self.error

"""Leaving a model as found: its train/eval modes, restored module by module.

>>> from torch import nn
>>> net = nn.Sequential(nn.Dropout(), nn.Dropout()).train()
>>> net[1].eval()  # doctest: +ELLIPSIS
Dropout(...)
>>> with evaluating(net):
...     [m.training for m in net]
[False, False]
>>> [m.training for m in net]
[True, False]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["evaluating"]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; afterwards every submodule's own ``training`` flag is
    as it was (a model may hold a frozen, eval-mode part inside a training one)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode

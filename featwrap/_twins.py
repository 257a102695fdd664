"""Copy-on-write twins for the captures that are not one bare output tensor: gradients at every
tensor inside a structured output (a tuple, dict or dataclass), a selected part, a module input.

The rule is the bare tensor's (see :mod:`featwrap._capture`): with grad enabled, the model goes
on with a copy-on-write *twin* of each captured tensor, so that later in-place ops write to the
twin and the module's own tensor, returned by the forward, stays untouched and on the path to the
output. Here a capture may hold several tensors, and the model continues with a *holder* (the
module's output structure, or its ``(args, kwargs)``) in which each of them is swapped for its
twin, found by identity.

A twin must never change what the model computes. A write to a twin reaches nobody who holds the
module's own tensor, so a tensor gets a twin only when nothing else the model can still reach
shares its memory: not the module's inputs (``nn.Identity``, dropout in eval mode, an in-place
activation and a flatten return their input or a view of it), not another tensor of the holder.
Such a tensor keeps its snapshot's exact value; if a later in-place op modifies it, its gradient
is not available and featwrap warns (see :meth:`featwrap._capture.Session.lost_gradient`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import torch

from featwrap import _tree

Tensor = torch.Tensor
_lazy_clone = torch._lazy_clone


def root(t: Tensor) -> Tensor:
    """The tensor whose memory ``t`` uses: its view base (always the outermost one), or itself."""
    base = t._base
    return t if base is None else base


def aliases(t: Tensor, inputs: tuple[Any, ...]) -> bool:
    """Whether ``t`` shares its memory with one of ``inputs`` (top-level tensors only: cheap)."""
    base = root(t)
    for a in inputs:  # noqa: SIM110 (a loop is faster than any() on the hot path)
        if isinstance(a, Tensor) and (a is base or a._base is base):
            return True
    return False


class Twins:
    """One captured value with grad: the module's own tensors and their versions, a copy-on-write
    snapshot of each, and the twins the model continues with (for those it can get one)."""

    __slots__ = ("lost", "own", "snapshot", "twin_versions", "twins", "value", "versions")

    def __init__(self, value: Any, holders: Any) -> None:
        """``value``: the captured value; ``holders``: every structure in which the model can
        still reach tensors after the hook (the holder it continues with, the module's inputs).
        A tensor of ``value`` gets a twin when it requires grad and its memory appears exactly
        once among ``holders`` (where the twin replaces it)."""
        self.value = value
        self.snapshot = _tree.snapshot(value, detach=False)
        self.own = own = list(_tree.tensors(value))
        # the versions of the tensors that require grad (the others: their snapshot is returned)
        self.versions = [t._version if t.requires_grad else None for t in own]
        counts = Counter(id(root(t)) for t in _tree.tensors(holders))
        self.twins: dict[int, Tensor] = {}
        self.twin_versions: dict[int, int] = {}
        # whether a tensor requires grad but got no twin: its gradient is lost if it is modified
        self.lost = [False] * len(own)
        for j, t in enumerate(own):
            if id(t) in self.twins or not t.requires_grad:
                continue
            if counts[id(root(t))] == 1:
                try:
                    twin = self.twins[id(t)] = _lazy_clone(t)
                except (NotImplementedError, RuntimeError):  # no copy-on-write for this layout
                    self.lost[j] = True
                    continue
                self.twin_versions[id(t)] = twin._version
            else:
                self.lost[j] = True

    def handed(self, holder: Any) -> Any:
        """``holder`` with each twinned tensor replaced by its twin (``holder`` itself if none, or
        if a container of it cannot be rebuilt as its own type: the model must see the same
        structure; its tensors then go without twins)."""
        twins = self.twins
        if not twins:
            return holder
        new = _tree.map_tensors(lambda t: twins.get(id(t), t), holder)
        if _same_types(holder, new):
            return new
        for j, t in enumerate(self.own):
            if id(t) in twins:
                self.lost[j] = True
        self.twins = {}
        return holder

    def final(self) -> tuple[Any, bool, bool]:
        """The value to return, whether a later in-place op modified a tensor of it, and whether
        one without a twin was modified (its gradient is then lost).

        Per tensor: the module's own if nothing wrote to it, else its twin if the model's writes
        went elsewhere (an alias wrote to the own tensor), else the snapshot."""
        chosen: list[Tensor] = []
        modified = lost = False
        twins = self.twins
        snapshots = list(_tree.tensors(self.snapshot))
        for j, t in enumerate(self.own):
            version = self.versions[j]
            if version is None:  # no graph: the snapshot, exact
                chosen.append(snapshots[j])
                continue
            twin = twins.get(id(t))
            twin_written = twin is not None and twin._version != self.twin_versions[id(t)]
            if t._version == version:
                chosen.append(t)
                modified = modified or twin_written
            elif twin is not None and not twin_written:
                chosen.append(twin)
                modified = True
            else:
                chosen.append(snapshots[j])
                modified = True
                lost = lost or self.lost[j]
        it = iter(chosen)
        return _tree.map_tensors(lambda _: next(it), self.value), modified, lost


def _same_types(a: Any, b: Any) -> bool:
    """Whether ``b`` (a rebuilt copy of ``a``) has the same container types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return all(_same_types(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return all(_same_types(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(
            _same_types(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    return True

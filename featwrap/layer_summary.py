"""The layer table: every module's path, type, output shape, channels and reduction.

Measured by one dry run on fake tensors (no compute), through featwrap's own hooks, so it also
shows what matters when picking layers: modules that run several times per forward (a FeatureModel
returns the last call by default) and outputs that a later in-place op modifies (featwrap copies
those; a hand-written hook would return the modified value).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featwrap import _layout
from featwrap._dryrun import dry_run
from featwrap._text import table as text_table
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError, LayerNotFoundError
from featwrap.layers import list_layers
from featwrap.model import FeatureModel

__all__ = ["LayerRow", "LayerSummary", "summary"]

_OUTPUT_KEY = "\0output"  # a key no module path can equal


@dataclass(frozen=True)
class LayerRow:
    """One module of the table.

    Attributes:
        path: the module path (a layer name for FeatureModel).
        module: the module's class name.
        shapes: the output's shape without batch (of the last call), or a structure of shapes;
            ``None`` if the module did not run.
        channels: see :class:`featwrap.FeatureMeta`.
        reduction: input spatial size / output spatial size.
        calls: how many times the module ran in one forward.
        modified: a later in-place op modified the output (featwrap copies it at capture).
    """

    path: str
    module: str
    shapes: Any
    channels: int | None
    reduction: float | None
    calls: int
    modified: bool


class LayerSummary(Sequence[LayerRow]):
    """The rows of :func:`summary`; ``str()`` gives the table."""

    def __init__(
        self,
        model_name: str,
        rows: list[LayerRow],
        input_size: tuple[int, ...] | None,
        real_forward: bool,
    ) -> None:
        self.model_name = model_name
        self.rows = rows
        self.input_size = input_size
        self.real_forward = real_forward

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    def __str__(self) -> str:
        header = ("path", "module", "output shape", "channels", "reduction", "notes")
        table = [header] + [_cells(r) for r in self.rows]
        lines = text_table(table)
        how = (
            "a real forward (the model cannot run on fake tensors)"
            if self.real_forward
            else ("fake tensors, no compute")
        )
        size = "given inputs" if self.input_size is None else f"input {self.input_size}"
        title = f"{self.model_name}, {size}, measured with {how}; shapes without batch"
        legend = (
            "notes: 'N calls' = the module runs N times per forward (shape of the last call; "
            "FeatureModel(repeats=...) chooses); 'modified later' = a later in-place op changes "
            "this output (featwrap returns the value as the module returned it)"
        )
        marked = any(r.calls > 1 or r.modified for r in self.rows)
        return "\n".join([title, *lines] + ([legend] if marked else []))

    def __repr__(self) -> str:
        return str(self)


def _cells(row: LayerRow) -> tuple[str, ...]:
    notes = []
    if row.calls > 1:
        notes.append(f"{row.calls} calls")
    if row.modified:
        notes.append("modified later")
    shape = "not run" if row.calls == 0 else _layout.format_shapes(row.shapes)
    return (
        row.path,
        row.module,
        shape,
        "-" if row.channels is None else str(row.channels),
        "-" if row.reduction is None else str(row.reduction),
        ", ".join(notes),
    )


def summary(
    model: nn.Module,
    input_size: Sequence[int] | int | None = None,
    *,
    pattern: str | None = None,
    depth: int | None = None,
    layers: Sequence[str] | None = None,
    inputs: Any = None,
) -> LayerSummary:
    """The table of ``model``'s modules with their outputs for an input of ``input_size``.

    Args:
        model: any module (a FeatureModel's backbone is used).
        input_size: ``(C, H, W)`` without batch, or ``S`` for ``(3, S, S)``; default: the
            model's own (see :func:`featwrap.feature_info`).
        pattern: only paths matching this fnmatch glob.
        depth: only paths with at most this many parts (``1``: the children of the root).
        layers: exactly these paths (``featwrap.stages(model)`` for instance).
        inputs: example inputs instead of ``input_size`` (a tensor, a tuple or a dict).

    Returns:
        A :class:`LayerSummary`: a sequence of :class:`LayerRow`; ``print()`` it for the table.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True))
    >>> print(summary(net, (3, 32, 32)))  # doctest: +NORMALIZE_WHITESPACE
    Sequential, input (3, 32, 32), measured with fake tensors, no compute; shapes without batch
    path  module  output shape  channels  reduction  notes
    0     Conv2d  (8, 16, 16)   8         2          modified later
    1     ReLU    (8, 16, 16)   8         2
    notes: 'N calls' = the module runs N times per forward (shape of the last call;
    FeatureModel(repeats=...) chooses); 'modified later' = a later in-place op changes this
    output (featwrap returns the value as the module returned it)
    """
    if isinstance(model, FeatureModel):
        model = model.backbone
    if not isinstance(model, nn.Module):
        raise FeatwrapTypeError(f"summary expects a torch.nn.Module, got {type(model).__name__}")
    paths = _paths(model, pattern, depth, layers)
    run = dry_run(
        FeatureModel,
        model,
        paths,
        input_size=input_size,
        inputs=inputs,
        output_key=_OUTPUT_KEY,
        repeats="all",
    )
    rows = []
    for path in paths:
        calls = run.values[path] or []
        last = calls[-1] if calls else None
        channels = reduction = None
        if isinstance(last, torch.Tensor):
            _, channels, reduction = _layout.read_meta(tuple(last.shape[1:]), run.spatial)
        rows.append(
            LayerRow(
                path,
                type(model.get_submodule(path)).__name__,
                None if last is None else _layout.shapes_without_batch(last),
                channels,
                reduction,
                len(calls),
                path in run.modified,
            )
        )
    return LayerSummary(type(model).__name__, rows, run.input_size, run.real)


def _paths(
    model: nn.Module, pattern: str | None, depth: int | None, layers: Sequence[str] | None
) -> list[str]:
    paths = list(layers) if layers is not None else list_layers(model)
    if pattern is not None:
        paths = [p for p in paths if fnmatch.fnmatchcase(p, pattern)]
    if depth is not None:
        if not isinstance(depth, int) or depth < 1:
            raise FeatwrapValueError(
                f"depth must be a positive int, got {depth!r}: 1 keeps the model's children, "
                "2 their children too; None (no --depth) keeps every path."
            )
        paths = [p for p in paths if p.count(".") < depth]
    if not paths:
        raise LayerNotFoundError(
            f"No layer of {type(model).__name__} matches pattern={pattern!r}, depth={depth!r}. "
            "featwrap.list_layers(model) lists every path."
        )
    return paths

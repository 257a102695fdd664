"""Feature metadata without compute: shapes, channels and reductions from a dry run on fake tensors.

The backbone runs once on ``FakeTensorMode`` tensors (shapes and dtypes, no storage): no FLOPs, no
real memory, and the module keeps its own parameters and buffers (BatchNorm running statistics,
``num_batches_tracked``) untouched, because the run uses fake copies of them. Only when the model
cannot run on fake tensors (data-dependent control flow such as ``if x.sum() > 0``, ``.item()``,
an operator without a fake kernel) is a real forward used instead, with a :class:`DryRunWarning`
saying so; even then the buffers and the random number generator are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from featwrap import _layout
from featwrap._dryrun import DryRunWarning, default_input_size, dry_run
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError

if TYPE_CHECKING:
    from featwrap.layers import LayerSpec
    from featwrap.model import FeatureModel

__all__ = ["DryRunWarning", "FeatureInfo", "FeatureMeta", "default_input_size", "feature_info"]

#: ``input_size`` as ``(C, H, W)`` (any number of spatial dims) or one int ``S`` for ``(3, S, S)``.
InputSize = Sequence[int] | int


@dataclass(frozen=True)
class FeatureMeta:
    """What one key of a FeatureModel's output looks like, for a given input size.

    Attributes:
        key: the key in the returned dict.
        path: the module path (``None`` for the backbone's own output).
        shape: the tensor's shape without the batch (first) dimension; ``None`` for a value that
            is not a tensor (see ``shapes``).
        channels: the channel count: dim 0 of ``shape`` for channels-first maps (``NCHW``), the last
            dim for channels-last maps (``NHWC``, Swin) and tokens (``NLC``, ViT), the only dim of
            a vector; ``None`` when the layout is unclear.
        reduction: input spatial size / feature spatial size (``32`` for a ResNet's ``layer4``),
            an int when it divides exactly; for tokens, the patch size; ``None`` without spatial dims.
        layout: ``"NCHW"``-style (``"NC*"``), ``"NHWC"``-style (``"N*C"``), ``"NLC"`` (tokens),
            ``"NC"`` (vector) or ``None``.
        dtype: the tensor's dtype (``None`` for structures).
        shapes: the value with every tensor replaced by its shape without batch (structures,
            ``repeats="all"`` lists); equal to ``shape`` for a tensor.
    """

    key: str
    path: str | None
    shape: tuple[int, ...] | None
    channels: int | None
    reduction: float | None
    layout: str | None
    dtype: torch.dtype | None
    shapes: Any


class FeatureInfo(Mapping[str, FeatureMeta]):
    """``{key: FeatureMeta}`` for every key a FeatureModel returns, in the same order.

    :meth:`channels` and :meth:`reduction` follow timm's ``feature_info`` and cover the layer keys
    only (not ``output_key``): what a neck such as an FPN takes.

    Attributes:
        input_size: the input size measured, without batch.
        output_key: the key of the backbone's own output (``None`` if left out).
        real_forward: ``True`` when fake tensors could not run the model and a real forward did.
    """

    def __init__(
        self,
        metas: Sequence[FeatureMeta],
        input_size: tuple[int, ...] | None,
        output_key: str | None,
        real_forward: bool,
    ) -> None:
        self._metas = {m.key: m for m in metas}
        self.input_size = input_size
        self.output_key = output_key
        self.real_forward = real_forward

    def __getitem__(self, key: str) -> FeatureMeta:
        return self._metas[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._metas)

    def __len__(self) -> int:
        return len(self._metas)

    def layer_keys(self) -> list[str]:
        """The keys of the requested layers, without ``output_key``."""
        return [k for k in self._metas if k != self.output_key]

    def channels(self, keys: Sequence[str] | None = None) -> list[int | None]:
        """Channel counts of ``keys`` (default: every layer key), e.g. an FPN's ``in_channels_list``."""
        return [self[k].channels for k in self._pick(keys)]

    def reduction(self, keys: Sequence[str] | None = None) -> list[float | None]:
        """Reductions (strides) of ``keys`` (default: every layer key)."""
        return [self[k].reduction for k in self._pick(keys)]

    def shapes(self, keys: Sequence[str] | None = None) -> dict[str, Any]:
        """``{key: shape without batch}`` of ``keys`` (default: every key, output included)."""
        return {k: self[k].shapes for k in (list(self._metas) if keys is None else keys)}

    def _pick(self, keys: Sequence[str] | None) -> list[str]:
        return self.layer_keys() if keys is None else list(keys)

    def __repr__(self) -> str:
        rows = [("key", "shape", "channels", "reduction")]
        for m in self._metas.values():
            rows.append(
                (m.key, _layout.format_shapes(m.shapes), _str(m.channels), _str(m.reduction))
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        how = "a real forward" if self.real_forward else "fake tensors"
        return f"FeatureInfo(input_size={self.input_size}, measured with {how})\n" + "\n".join(
            lines
        )


def _str(value: object) -> str:
    return "-" if value is None else str(value)


def feature_info(
    model: FeatureModel | nn.Module,
    input_size: InputSize | None = None,
    *,
    layers: LayerSpec | None = None,
    inputs: Any = None,
) -> FeatureInfo:
    """Shapes, channels and reductions of every key a FeatureModel returns, at no compute cost.

    Args:
        model: a :class:`~featwrap.FeatureModel`, or a plain module together with ``layers``.
        input_size: ``(C, H, W)`` without batch (any number of spatial dims), or ``S`` for
            ``(3, S, S)``. Default: the timm model's ``pretrained_cfg["input_size"]``, a
            torchvision ViT's ``image_size``, else ``(3, 224, 224)``.
        layers: the layers, when ``model`` is a plain module (as for ``FeatureModel``).
        inputs: instead of ``input_size``, example inputs: a tensor, a tuple of positional
            arguments or a dict of keyword arguments (their batch size does not matter).

    Returns:
        A :class:`FeatureInfo`. The model's parameters, buffers, mode and hooks are as before.

    >>> import torch
    >>> from torch import nn
    >>> from featwrap import FeatureModel
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten())
    >>> info = FeatureModel(net, {"0": "conv"}).feature_info((3, 32, 32))
    >>> info["conv"].shape, info.channels(), info.reduction()
    ((8, 16, 16), [8], [2])
    """
    from featwrap.model import FeatureModel

    if isinstance(model, FeatureModel):
        if layers is not None:
            raise FeatwrapValueError(
                "feature_info(fm, layers=...): a FeatureModel has its layers already; pass a plain "
                "module with layers=, or call fm.feature_info(input_size)."
            )
        backbone, output_key, repeats = model.backbone, model.output_key, model.repeats
        captures: LayerSpec = list(model._captures)
        output_fmt, prefix_tokens = model.output_fmt, model.prefix_tokens
    elif isinstance(model, nn.Module):
        if layers is None:
            raise FeatwrapValueError(
                f"feature_info({type(model).__name__}) needs layers=: the module paths to measure "
                "(see featwrap.list_layers(model) or featwrap.stages(model)), or a FeatureModel."
            )
        backbone, captures, output_key, repeats = model, layers, "logits", "last"
        output_fmt, prefix_tokens = None, False
    else:
        raise FeatwrapTypeError(
            f"feature_info expects a FeatureModel or a torch.nn.Module, got {type(model).__name__}"
        )
    run = dry_run(
        backbone,
        captures,
        input_size=input_size,
        inputs=inputs,
        output_key=output_key,
        repeats=repeats,
        output_fmt=output_fmt,
        prefix_tokens=prefix_tokens,
    )
    metas = [_meta(k, run.paths.get(k), v, run.spatial) for k, v in run.values.items()]
    return FeatureInfo(metas, run.input_size, output_key, run.real)


def _meta(key: str, path: str | None, value: Any, spatial: tuple[int, ...]) -> FeatureMeta:
    shapes = _layout.shapes_without_batch(value)
    if isinstance(value, torch.Tensor):
        shape = tuple(value.shape[1:])
        layout, channels, reduction = _layout.describe(shape, spatial)
        return FeatureMeta(key, path, shape, channels, reduction, layout, value.dtype, shapes)
    return FeatureMeta(key, path, None, None, None, None, None, shapes)

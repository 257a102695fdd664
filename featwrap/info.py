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
from featwrap._text import table

if TYPE_CHECKING:
    from featwrap.layers import LayerSpec
    from featwrap.model import FeatureModel

__all__ = ["DryRunWarning", "FeatureInfo", "FeatureMeta", "default_input_size", "measure"]

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
            dim for channels-last maps (``NHWC``, Swin) and tokens (``NLC``: the hidden size, for
            images and token ids alike), the only dim of a vector; ``None`` when unclear.
        reduction: the nominal stride, as timm's ``feature_info`` gives it: timm's own value for
            a module of a timm model's ``feature_info``; otherwise the power of two (or the exact
            integer, a ViT's patch 14) that the measured sizes round to (``32`` for inception_v3's
            last stage at 299 px, where 299 / 8 = 37.4); for tokens, the patch size; ``None``
            without spatial dims (token ids, vectors).
        layout: ``"NCHW"`` (channels first; ``"NCL"`` / ``"NCDHW"`` for 1 or 3 spatial dims),
            ``"NHWC"`` (channels last; ``"NLC"`` / ``"NDHWC"``), ``"NLC"`` (tokens), ``"NC"``
            (a vector) or ``None``.
        dtype: the tensor's dtype (``None`` for structures).
        shapes: the value with every tensor replaced by its shape without batch (structures,
            ``repeats="all"`` lists); equal to ``shape`` for a tensor.
        measured_reduction: input spatial size / feature spatial size as measured (first spatial
            dim; for tokens, the patch size of the grid they fit).
        grid: the spatial size of the map (for tokens, of their patch grid), if known.
        prefix_tokens: for tokens on a patch grid, the tokens before it (class, distillation,
            register tokens); else 0.
    """

    key: str
    path: str | None
    shape: tuple[int, ...] | None
    channels: int | None
    reduction: float | None
    layout: str | None
    dtype: torch.dtype | None
    shapes: Any
    measured_reduction: float | None = None
    grid: tuple[int, ...] | None = None
    prefix_tokens: int = 0


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
        lines = table(rows)
        how = "a real forward" if self.real_forward else "fake tensors"
        return f"FeatureInfo(input_size={self.input_size}, measured with {how})\n" + "\n".join(
            lines
        )


def _str(value: object) -> str:
    return "-" if value is None else str(value)


def measure(
    feature_model: type[FeatureModel],
    backbone: nn.Module,
    layers: LayerSpec,
    *,
    output_key: str | None,
    repeats: str,
    input_size: InputSize | None = None,
    inputs: Any = None,
    output_fmt: Any = None,
    prefix_tokens: bool = False,
) -> FeatureInfo:
    """The :class:`FeatureInfo` of ``feature_model(backbone, layers, ...)``, from one dry run.

    What :func:`featwrap.feature_info` and ``FeatureModel.feature_info`` compute; the caller
    passes the FeatureModel class (this module sits below ``featwrap.model``).
    """
    run = dry_run(
        feature_model,
        backbone,
        layers,
        input_size=input_size,
        inputs=inputs,
        output_key=output_key,
        repeats=repeats,
        output_fmt=output_fmt,
        prefix_tokens=prefix_tokens,
    )
    strides = _timm_strides(backbone)
    metas = [_meta(k, run.paths.get(k), v, run.spatial, strides) for k, v in run.values.items()]
    return FeatureInfo(metas, run.input_size, output_key, run.real)


def _meta(
    key: str, path: str | None, value: Any, spatial: tuple[int, ...], strides: dict[str, int]
) -> FeatureMeta:
    shapes = _layout.shapes_without_batch(value)
    if not isinstance(value, torch.Tensor):
        return FeatureMeta(key, path, None, None, None, None, None, shapes)
    shape = tuple(value.shape[1:])
    r = _layout.read(shape, spatial)
    reduction = r.reduction
    if reduction is not None and path in strides:
        reduction = strides[path]
    return FeatureMeta(
        key,
        path,
        shape,
        r.channels,
        reduction,
        r.layout,
        value.dtype,
        shapes,
        r.measured,
        r.grid,
        r.prefix,
    )


def _timm_strides(model: nn.Module) -> dict[str, int]:
    """``{module path: reduction}`` from a timm model's own ``feature_info`` (empty otherwise)."""
    info: Any = getattr(model, "feature_info", None)
    if info is None or not type(model).__module__.startswith("timm."):
        return {}
    dicts = info.get_dicts() if hasattr(info, "get_dicts") else info
    if not isinstance(dicts, list):
        return {}
    strides = {}
    for d in dicts:
        if not isinstance(d, dict) or d.get("hook_type") == "forward_pre":
            continue
        module, reduction = d.get("module"), d.get("reduction")
        if isinstance(module, str) and isinstance(reduction, (int, float)):
            # a timm FeatureListNet (features_only) names its modules with "_" for "."
            strides[module] = strides[module.replace(".", "_")] = int(reduction)
    return strides

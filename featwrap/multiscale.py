"""Stage presets: the module paths of a backbone's natural multi-scale stages.

``FeatureModel(model, stages(model))`` is a drop-in backbone for an FPN or a U-Net decoder:

* timm models: the modules of their own ``feature_info``, each returning the NCHW map that
  ``forward_intermediates(output_fmt="NCHW")`` returns: tokens, channels-last maps and tuples are
  converted (see ``featwrap/_timm_stages.py``).
* torchvision families: a small table names where the stages live (``layer1``..``layer4`` of a
  ResNet, the children of ``features`` of a MobileNet, EfficientNet, ConvNeXt, Swin, DenseNet,
  VGG...), and a rule picks the last of those modules at each stride, measured by a dry run on
  fake tensors (no compute). Vision transformers, which keep one stride, give every block.
* Hugging Face ``transformers`` models (ViT, DeiT, DINOv2, CLIP and SigLIP vision, Swin, ConvNeXt,
  BERT, RoBERTa, GPT-2): presets read from their configs, as :class:`~featwrap.Capture` (see
  :mod:`featwrap.hf_stages`).
* anything else: an error that lists what to pass instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from featwrap import _layout
from featwrap._dryrun import dry_run, input_size_for
from featwrap._timm_stages import timm_stages
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError
from featwrap.hf_stages import hf_stages, is_hf_model
from featwrap.layers import Capture
from featwrap.model import FeatureModel

__all__ = ["stages"]

# Where each torchvision family keeps its stages: paths or globs; "X.*" are the children of X.
# The last module at each stride among them is a stage.
_TORCHVISION: dict[str, tuple[str, ...]] = {
    "ResNet": ("relu", "layer1", "layer2", "layer3", "layer4"),  # ResNeXt, Wide ResNet too
    "RegNet": ("stem", "trunk_output.*"),
    "MobileNetV2": ("features.*",),
    "MobileNetV3": ("features.*",),
    "EfficientNet": ("features.*",),  # V1 and V2
    "ConvNeXt": ("features.*",),
    "SwinTransformer": ("features.*",),  # V1 and V2; channels-last maps
    "DenseNet": ("features.*",),
    "VGG": ("features.*",),
    "AlexNet": ("features.*",),
    "SqueezeNet": ("features.*",),
    "MNASNet": ("layers.*",),
    "ShuffleNetV2": ("*",),
    "GoogLeNet": ("*",),
    "Inception3": ("*",),
    "MaxVit": ("stem", "blocks.*"),
}
# One stride throughout: every block is a stage (as timm's feature_info does for ViTs).
_TORCHVISION_BLOCKS: dict[str, str] = {"VisionTransformer": "encoder.layers.*"}


def stages(
    model: nn.Module,
    out_indices: int | Sequence[int] | None = None,
    *,
    input_size: Sequence[int] | int | None = None,
) -> list[str | Capture]:
    """The module paths of ``model``'s natural multi-scale stages, shallow to deep.

    Args:
        model: a timm model, a torchvision classification model, a ``transformers`` model (or a
            FeatureModel of one).
        out_indices: which stages, as in timm: ``None`` for all, a sequence of indices (negative
            ones count from the end), or an int ``n`` for the last ``n``.
        input_size: the size used to measure strides (torchvision models only); default: the
            model's own (see :func:`featwrap.feature_info`).

    Returns:
        Layer specs for :class:`~featwrap.FeatureModel`: module paths (with ``":input"`` where
        timm hooks a module's input), and for timm stages that do not return an NCHW map
        (tokens, channels-last maps, tuples) a :class:`~featwrap.Capture` with the ``select``,
        ``layout`` and ``output_fmt="NCHW"`` that make it one. Keys are the module paths.

    Raises:
        FeatwrapValueError: for a model with no preset (the message lists what to pass instead),
            a timm family no module of which returns timm's feature (the message names the
            family and timm's own extractor) or an out-of-range index.

    >>> from torchvision.models import resnet18
    >>> stages(resnet18())
    ['relu', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> stages(resnet18(), out_indices=(1, 2, 3, 4))
    ['layer1', 'layer2', 'layer3', 'layer4']
    """
    if isinstance(model, FeatureModel):
        model = model.backbone
    if not isinstance(model, nn.Module):
        raise FeatwrapTypeError(
            f"stages expects a torch.nn.Module, got {type(model).__name__}: {model!r:.80}"
        )
    found: Sequence[str | Capture] | None = timm_stages(model)
    if found is None and is_hf_model(model):
        found = hf_stages(model)
    if found is None:
        found = _from_torchvision(model, input_size)
    if found is None:
        raise FeatwrapValueError(_no_preset(model, input_size))
    return _select(found, out_indices, model)


def _from_torchvision(model: nn.Module, input_size: Any) -> list[str] | None:
    name = type(model).__name__
    if not type(model).__module__.startswith("torchvision.models"):
        return None
    if name in _TORCHVISION_BLOCKS:
        return _expand(model, (_TORCHVISION_BLOCKS[name],))
    if name not in _TORCHVISION:
        return None
    return last_at_each_stride(model, _expand(model, _TORCHVISION[name]), input_size)


def _expand(model: nn.Module, entries: tuple[str, ...]) -> list[str]:
    """Paths of ``entries``: ``"X.*"`` (or ``"*"``) are the direct children of ``X``."""
    out: list[str] = []
    for entry in entries:
        if entry.endswith("*"):
            parent = entry[:-2] if entry.endswith(".*") else ""
            container = model.get_submodule(parent)
            out += [f"{parent}.{n}" if parent else n for n, _ in container.named_children()]
        else:
            out.append(entry)
    return out


def last_at_each_stride(
    model: nn.Module, candidates: list[str], input_size: Any = None
) -> list[str]:
    """Of ``candidates`` (in forward order), the last one whose output has each stride.

    Strides are measured by a dry run on fake tensors; outputs without spatial dims, or pooled to
    one pixel, are not stages.
    """
    size = input_size_for(model, input_size)
    run = dry_run(FeatureModel, model, candidates, input_size=size, output_key=None)
    by_level: dict[int, str] = {}
    for key, value in run.values.items():
        if value is None or not hasattr(value, "shape"):
            continue
        shape = tuple(value.shape[1:])
        layout, _, reduction = _layout.read_meta(shape, run.spatial)
        if reduction is None or layout is None or layout in ("NC", "NLC"):
            continue
        spatial = shape[1:] if layout.startswith("NC") else shape[:-1]
        if all(d == 1 for d in spatial):
            continue
        by_level[round(math.log2(reduction))] = run.paths[key]
    return [by_level[level] for level in sorted(by_level)]


def _select(
    found: Sequence[str | Capture], out_indices: int | Sequence[int] | None, model: nn.Module
) -> list[str | Capture]:
    if out_indices is None:
        return list(found)
    n = len(found)
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 1 <= out_indices <= n:
            raise FeatwrapValueError(
                f"out_indices={out_indices} (the last {out_indices}) but {type(model).__name__} "
                f"has {n} stages: {found}."
            )
        return list(found[n - out_indices :])
    if not isinstance(out_indices, Sequence) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in out_indices
    ):
        raise FeatwrapTypeError(
            f"out_indices must be None, an int or a sequence of ints, got {out_indices!r:.80}"
        )
    bad = [i for i in out_indices if not -n <= i < n]
    if bad:
        raise FeatwrapValueError(
            f"out_indices {bad} out of range: {type(model).__name__} has {n} stages "
            f"(indices 0..{n - 1} or -{n}..-1): {found}."
        )
    return [found[i] for i in out_indices]


def _no_preset(model: nn.Module, input_size: Any) -> str:
    families = ", ".join(sorted([*_TORCHVISION, *_TORCHVISION_BLOCKS]))
    message = (
        f"stages() has no preset for {type(model).__name__}: it knows timm models (through "
        f"their feature_info) and the torchvision families {families}. Pass the layer paths "
        "yourself, e.g. FeatureModel(model, ['block1', 'block2', ...]); featwrap.summary(model) "
        "(or `featwrap layers MODEL`) shows every module with its output shape and reduction."
    )
    try:
        size = input_size_for(model, input_size)
        paths = [p for p, _ in model.named_modules() if p]
        suggestion = last_at_each_stride(model, paths, size)
    except Exception:
        return message
    if suggestion:
        message += (
            f" The last module at each stride of this model, for an input {tuple(size)}: "
            f"{suggestion}."
        )
    return message

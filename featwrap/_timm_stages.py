"""timm's stages as NCHW maps: the modules of timm's ``feature_info``, and how to read each.

timm's ``feature_info`` names, per stage, the module whose output is the feature (``"layer1"``,
``"blocks.3"``) with its channels and nominal stride. That output is not always the NCHW map that
``forward_intermediates(output_fmt="NCHW")`` returns: ViT-style blocks return tokens with prefix
tokens first, Swin stages channels-last maps, PiT/TNT/efficientvim stages tuples, Hiera tokens in
its unrolled order. A dry run on fake tensors (no compute) shows what each module returns, and
the stage becomes a :class:`~featwrap.Capture` that picks the tensor (``select``), says its layout
(``"NHWC"`` or :class:`~featwrap.Tokens` with the measured prefix count and timm's stride) and asks
for ``output_fmt="NCHW"``; a module that already returns the NCHW map stays a plain path.

A few families name modules in ``feature_info`` that their model does not have, or that it never
calls; :data:`_REMAP` maps them to the module that does produce the feature. Families that no
module of the model can serve get an error naming the family and what to use instead.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from featwrap._dryrun import default_input_size, dry_run
from featwrap.errors import FeatwrapValueError
from featwrap.layers import Capture
from featwrap.maps import Tokens
from featwrap.model import FeatureModel

Spec = str | Capture


def timm_stages(model: nn.Module) -> list[Spec] | None:
    """The stages of a timm model as layer specs returning NCHW maps; ``None`` if not timm."""
    info: Any = getattr(model, "feature_info", None)
    if info is None or not type(model).__module__.startswith("timm."):
        return None
    dicts = info.get_dicts() if hasattr(info, "get_dicts") else info
    if not isinstance(dicts, list) or not all(isinstance(d, dict) and "module" in d for d in dicts):
        return None
    if _is_features_wrapper(model):  # timm's features_only wrapper: its modules return maps
        return [_wrapper_path(model, d) for d in dicts]
    remap = _REMAP.get(type(model).__name__)
    raw = [remap(model, i, d) if remap else _plain(model, d) for i, d in enumerate(dicts)]
    _check_unique(model, raw)
    size = _input_size(model)
    raw, values = _called(model, raw, size)
    return [
        _as_map(model, spec, value, d, size[1:])
        for spec, value, d in zip(raw, values, dicts, strict=True)
    ]


def _input_size(model: nn.Module) -> tuple[int, ...]:
    """The model's own image size (``create_model(..., img_size=64)``), else its pretrained_cfg's."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(d, int) for d in size):
        return (3, int(size[0]), int(size[1]))
    return default_input_size(model)


def _called(
    model: nn.Module, specs: list[Spec], size: tuple[int, ...]
) -> tuple[list[Spec], list[Any]]:
    """The specs, each moved to a module the forward does call, and what each returns.

    A stage container that the forward does not call (timm's grad checkpointing runs the blocks
    of ``layer1`` one by one; CoaT and Twins keep their blocks in a ModuleList) returns what its
    last child returns: the spec moves to that child, which gives the same value with
    checkpointing on or off. (Every timm family this applies to is checked against
    ``forward_intermediates`` by the registry sweep in tests/test_zoo_stages.py.)
    """
    for _ in range(8):
        run = dry_run(FeatureModel, model, specs, input_size=size, output_key=None)
        values = list(run.values.values())
        moved = [
            _last_child(model, s) if v is None else s for s, v in zip(specs, values, strict=True)
        ]
        if moved == specs:
            break
        specs = moved
    return specs, values


def _last_child(model: nn.Module, spec: Spec) -> Spec:
    path = spec.path if isinstance(spec, Capture) else spec
    if isinstance(spec, Capture) and (spec.input or spec.select is not None):
        return spec
    module = model.get_submodule(path)
    if not isinstance(module, (nn.Sequential, nn.ModuleList)) or not len(module):
        return spec
    last = f"{path}.{list(dict(module.named_children()))[-1]}"
    return (
        Capture(last, key=spec.key or spec.path)
        if isinstance(spec, Capture)
        else Capture(last, key=path)
    )


def _is_features_wrapper(model: nn.Module) -> bool:
    return type(model).__name__ in ("FeatureListNet", "FeatureDictNet", "FeatureHooks")


def _wrapper_path(model: nn.Module, d: dict[str, Any]) -> str:
    paths = {name for name, _ in model.named_modules()}
    path = str(d["module"])
    if path not in paths and path.replace(".", "_") in paths:  # FeatureListNet flattens names
        path = path.replace(".", "_")
    if path not in paths:
        raise _unservable(model, f"its feature_info names {d['module']!r}, not a submodule")
    return path + ":input" if d.get("hook_type") == "forward_pre" else path


def _plain(model: nn.Module, d: dict[str, Any]) -> Spec:
    path = str(d["module"])
    if path not in {name for name, _ in model.named_modules()}:
        raise _unservable(model, f"its feature_info names {path!r}, which is not a submodule")
    if d.get("hook_type") == "forward_pre":
        return path + ":input"
    return path


def _check_unique(model: nn.Module, specs: list[Spec]) -> None:
    keys = [s if isinstance(s, str) else (s.key or s.path) for s in specs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _unservable(
            model,
            f"its feature_info names {repeated} for several stages (one module returns several "
            "scales at once)",
        )


def _as_map(
    model: nn.Module, spec: Spec, value: Any, d: dict[str, Any], spatial: tuple[int, ...]
) -> Spec:
    """``spec`` made to return the NCHW map of stage ``d``, from what the dry run saw."""
    channels, stride = int(d["num_chs"]), d["reduction"]
    capture = spec if isinstance(spec, Capture) else _capture(spec)
    select = capture.select
    if isinstance(value, (tuple, list)):
        index = next((i for i, v in enumerate(value) if _fits(v, channels)), None)
        if index is None or select is not None:
            raise _unservable(model, f"{capture.path!r} returns {_describe(value)}")
        select, value = index, value[index]
    if not isinstance(value, torch.Tensor) or not _fits(value, channels):
        raise _unservable(
            model, f"{capture.path!r} returns {_describe(value)}, not {channels} channels"
        )
    layout: str | Tokens | None
    if value.dim() == 4 and value.shape[1] == channels:
        if select is None and isinstance(spec, str):
            return spec  # already the NCHW map
        layout = "NCHW"
    elif value.dim() == 4:
        layout = "NHWC"
    else:
        layout = _tokens(model, capture.path, int(value.shape[1]), stride, spatial)
    return Capture(
        capture.path,
        key=capture.key,
        input=capture.input,
        select=select,
        layout=layout,
        output_fmt="NCHW",
    )


def _capture(spec: str) -> Capture:
    if spec.endswith(":input"):
        return Capture(spec[: -len(":input")], key=spec, input=True)
    return Capture(spec)


def _fits(value: Any, channels: int) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    if value.dim() == 4:
        return channels in (value.shape[1], value.shape[-1])
    return value.dim() == 3 and value.shape[-1] == channels


def _tokens(
    model: nn.Module, path: str, length: int, stride: Any, spatial: tuple[int, ...]
) -> Tokens:
    """Tokens of stage ``path``: Hiera's own reroll, else a raster grid at timm's stride with the
    measured number of prefix tokens."""
    if type(model).__name__ == "Hiera":
        index = int(path.rsplit(".", 1)[-1])
        return Tokens(prefix=0, to_grid=functools.partial(_hiera_reroll, model, index))
    stride = int(stride)
    floor = length - math.prod(s // stride for s in spatial)
    ceil = tuple(-(-s // stride) for s in spatial)  # padded strided convs (LeViT): a fixed grid
    if len(ceil) == 2 and 0 <= length - math.prod(ceil) < floor:
        return Tokens(prefix=length - math.prod(ceil), grid=(ceil[0], ceil[1]))
    if 0 <= floor <= 16:
        return Tokens(prefix=floor, patch_size=stride)
    raise _unservable(
        model, f"{path!r} returns {length} tokens, which fit no grid at stride {stride}"
    )


def _hiera_reroll(model: Any, index: int, tokens: torch.Tensor) -> torch.Tensor:
    """Hiera's tokens (unrolled order) back on their grid ``(B, H, W, C)``, by Hiera's reroll."""
    out: torch.Tensor = model.reroll(tokens, index)
    return out


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of " + ", ".join(_describe(v) for v in value)
    return f"a {type(value).__name__}"


def _unservable(model: nn.Module, reason: str) -> FeatwrapValueError:
    family = type(model).__module__.rsplit(".", 1)[-1]
    return FeatwrapValueError(
        f"stages() cannot serve timm's {type(model).__name__} (family {family!r}): {reason}. "
        "Use timm's own extractor instead: model.forward_intermediates(x, output_fmt='NCHW', "
        "intermediates_only=True), or timm.create_model(name, features_only=True), whose "
        "modules featwrap.stages() knows; or pass layer paths yourself (featwrap.summary(model))."
    )


# -- families whose feature_info names modules the model does not call --------------------------
def _hrnet(model: Any, i: int, d: dict[str, Any]) -> Spec:
    """HRNet: 'stem' is act1; 'stage<k>' the k-th branch of the last stage (through its incre
    module when the model has them), as forward_intermediates takes them."""
    if i == 0:
        return "act1"
    if model.incre_modules is not None:
        return f"incre_modules.{i - 1}"
    return Capture("stages", key=str(d["module"]), select=i - 1)


def _mvitv2(model: Any, i: int, d: dict[str, Any]) -> Spec:
    """MViTv2: 'block.<i>' is stages.<i>, which returns (tokens, feature size)."""
    return Capture(f"stages.{i}", select=0)


def _twins(model: Any, i: int, d: dict[str, Any]) -> Spec:
    """Twins: 'block.<k>' is the last block of stage k (blocks.<k> is a ModuleList, never called),
    or the position block that follows the first block, in a stage of one block."""
    if len(model.blocks[i]) == 1:
        return f"pos_block.{i}"
    return f"blocks.{i}.{len(model.blocks[i]) - 1}"


def _tresnet(model: Any, i: int, d: dict[str, Any]) -> Spec:
    """TResNet: the stem feature ('' in timm's feature_info) is the conv after space-to-depth."""
    if d["module"] == "":
        return f"body.{list(dict(model.body.named_children()))[1]}"
    return _plain(model, d)


def _coat(model: Any, i: int, d: dict[str, Any]) -> Spec:
    """CoaT with parallel blocks: every scale is one element of the last parallel block's output
    (CoaT-Lite, without them, keeps its feature_info modules)."""
    if not model.parallel_blocks:
        return _plain(model, d)
    last = len(model.parallel_blocks) - 1
    return Capture(f"parallel_blocks.{last}", key=f"scale{i + 1}", select=i)


def _crossvit(model: Any, i: int, d: dict[str, Any]) -> Spec:
    """CrossViT: feature b * n + k is branch b of block k (blocks return one tensor per branch)."""
    n = model.num_feature_blocks
    branch, block = divmod(i, n)
    return Capture(f"blocks.{block}", key=f"branch{branch}.blocks.{block}", select=branch)


def _mobilenetv5(model: Any, i: int, d: dict[str, Any]) -> Spec:
    """MobileNetV5: the stem feature ('bn1', which it does not have) is conv_stem's output."""
    if d["module"] == "bn1" and not hasattr(model, "bn1"):
        return "conv_stem"
    return _plain(model, d)


_REMAP = {
    "MobileNetV5": _mobilenetv5,
    "MobileNetV5Encoder": _mobilenetv5,
    "CrossVit": _crossvit,
    "CoaT": _coat,
    "HighResolutionNet": _hrnet,
    "HighResolutionNetFeatures": _hrnet,
    "MultiScaleVit": _mvitv2,
    "Twins": _twins,
    "TResNet": _tresnet,
}

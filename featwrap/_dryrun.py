"""One forward that costs nothing: the backbone on fake tensors, with featwrap's own hooks.

Used by :func:`featwrap.feature_info`, :func:`featwrap.summary` and :func:`featwrap.stages`. The
run goes through a temporary FeatureModel (removed afterwards), so what it measures is what a
FeatureModel with the same layers returns, including which outputs a later in-place op modifies
(the outputs returned as copy-on-write snapshots because an in-place op changed them). The caller
passes the FeatureModel class, so that this module sits below ``featwrap.model`` (whose
``FeatureModel.feature_info`` uses it) and imports nothing above it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from featwrap import _tree
from featwrap._options import OUTPUT_KEY
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError

if TYPE_CHECKING:
    from featwrap.layers import LayerSpec
    from featwrap.model import FeatureModel

_TOKENS = 16  # token ids a text model is measured with by default
_FAKE_BATCH = 2  # BatchNorm in train mode refuses a batch of one 1x1 map, even on fake tensors


class DryRunWarning(UserWarning):
    """The model could not run on fake tensors, so a real forward measured the shapes."""


@dataclasses.dataclass
class DryRun:
    """What one dry run saw: the FeatureModel's output dict and which keys were modified later."""

    values: dict[str, Any]
    paths: dict[str, str]
    modified: frozenset[str]
    real: bool
    input_size: tuple[int, ...] | None
    spatial: tuple[int, ...]


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """The input size a model expects: ``(L,)`` token ids for a text model (see
    :func:`token_vocab`; ``L`` is 16, or fewer where the model has fewer positions), a timm
    ViT's own patch embedding size (set by ``img_size=``), timm's ``pretrained_cfg``, a
    torchvision ViT's ``image_size``, a transformers model's ``config.image_size``, else
    ``(3, 224, 224)``."""
    if token_vocab(model) is not None:
        config = getattr(model, "config", None)
        limits = [getattr(config, n, None) for n in ("max_position_embeddings", "n_positions")]
        return (min([_TOKENS, *(n for n in limits if isinstance(n, int) and n > 0)]),)
    embed = getattr(model, "patch_embed", None)
    proj = getattr(embed, "proj", None)
    img_size = getattr(embed, "img_size", None)
    if isinstance(proj, nn.Conv2d) and isinstance(img_size, tuple) and len(img_size) == 2:
        return (proj.in_channels, *(int(d) for d in img_size))
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)):
        return tuple(int(d) for d in cfg["input_size"])
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return (3, size, size)
    config = getattr(model, "config", None)  # a transformers vision model's config
    size = getattr(config, "image_size", None)
    channels = getattr(config, "num_channels", 3)
    if isinstance(size, int) and isinstance(channels, int):
        return (channels, size, size)
    return (3, 224, 224)


def token_vocab(model: nn.Module) -> int | None:
    """The vocabulary size of a model whose input is token ids, else ``None``.

    A transformers model whose main input is ``input_ids`` (BERT, GPT-2, T5's encoder...), or
    any model whose first module is an ``nn.Embedding`` (a text encoder written by hand).

    >>> token_vocab(nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 2)))
    100
    >>> token_vocab(nn.Sequential(nn.Linear(8, 2))) is None
    True
    """
    if getattr(model, "main_input_name", None) == "input_ids":
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if isinstance(vocab, int) and vocab > 0:
            return vocab
    first = next((m for m in model.modules() if not next(m.children(), None)), None)
    return first.num_embeddings if isinstance(first, nn.Embedding) else None


def input_size_for(model: nn.Module, input_size: Sequence[int] | int | None) -> tuple[int, ...]:
    """``input_size`` checked (one int ``S``: ``(S,)`` token ids for a text model, else
    ``(3, S, S)``), or the model's own when ``None``."""
    if input_size is None:
        return default_input_size(model)
    one = isinstance(input_size, int) and not isinstance(input_size, bool) and input_size > 0
    if one and token_vocab(model) is not None:
        return (input_size,)  # type: ignore[return-value]
    return check_input_size(input_size)


def check_input_size(input_size: Sequence[int] | int) -> tuple[int, ...]:
    """``(C, *spatial)`` from a size without batch, or ``S`` for ``(3, S, S)``; errors otherwise."""
    size: Any = input_size
    if isinstance(size, int) and not isinstance(size, bool):
        size = (3, size, size)
    if (
        isinstance(size, Sequence)
        and len(size) >= 1
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size)
    ):
        return tuple(size)
    raise FeatwrapValueError(
        f"input_size={input_size!r} is not a size: pass (C, H, W) without the batch dimension, "
        "e.g. (3, 224, 224), or one int S for (3, S, S); or pass inputs= (example tensors)."
    )


def dry_run(
    feature_model: type[FeatureModel],
    backbone: nn.Module,
    layers: LayerSpec,
    *,
    input_size: Sequence[int] | int | None = None,
    inputs: Any = None,
    output_key: str | None = OUTPUT_KEY,
    repeats: str = "last",
    output_fmt: str | None = None,
    prefix_tokens: bool = False,
) -> DryRun:
    """Run ``feature_model(backbone, layers)`` once on fake tensors (a real forward if it must).

    ``feature_model`` is :class:`featwrap.FeatureModel` (or the class of the FeatureModel being
    measured): passed in so that this module does not import ``featwrap.model``.
    """
    if inputs is not None and input_size is not None:
        raise FeatwrapValueError("Pass input_size or inputs, not both.")
    size = None if inputs is not None else input_size_for(backbone, input_size)
    _check_no_lazy(backbone)
    probe = feature_model(
        backbone,
        layers,
        output_key=output_key,
        detach=True,
        repeats=repeats,
        missing="none",
        output_fmt=output_fmt,
        prefix_tokens=prefix_tokens,
    )
    try:
        try:
            values, real = _fake_run(probe, size, inputs), False
        except Exception as fake_error:
            values, real = _real_run(probe, size, inputs), True
            batch = 1 if size is None or not backbone.training else _FAKE_BATCH
            cause = getattr(fake_error, "original", None) or fake_error  # a BackboneError's
            reason = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]}"
            warnings.warn(
                f"{type(backbone).__name__} could not run on fake tensors ({reason}), so its shapes "
                f"were measured with a real forward (batch {batch}, no grad); buffers and the "
                "random number generator were restored afterwards.",
                DryRunWarning,
                stacklevel=3,
            )
        keys = probe._recorder.keys
        modified = frozenset(keys[i] for i in probe._recorder.last_modified)
    finally:
        probe.remove_hooks()
    spatial = size[1:] if size is not None else _spatial_of(inputs)
    return DryRun(values, probe.layers, modified, real, size, spatial)


def _check_no_lazy(backbone: nn.Module) -> None:
    from torch.nn.modules.lazy import LazyModuleMixin

    for name, module in backbone.named_modules():
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():  # type: ignore[misc]
            raise FeatwrapValueError(
                f"{name or type(backbone).__name__} is a lazy module whose parameters are not "
                "initialized yet; run one real forward first (a dry run must not create them)."
            )


def _args(
    inputs: Any, size: tuple[int, ...] | None, batch: int, like: nn.Module
) -> tuple[Any, Any]:
    """Positional and keyword arguments: a tensor of ``size`` (made under the active mode) or the
    user's ``inputs``."""
    if size is not None:
        backbone: nn.Module = getattr(like, "backbone", like)
        vocab = token_vocab(backbone)
        if vocab is not None:  # token ids, on the embedding's device
            device = next(backbone.parameters()).device
            return (torch.randint(0, vocab, (batch, *size), device=device),), {}
        param = next((p for p in like.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        return (torch.randn(batch, *size, dtype=dtype, device=device),), {}
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    raise FeatwrapTypeError(
        f"inputs must be a tensor, a tuple of positional arguments or a dict of keyword "
        f"arguments, got {type(inputs).__name__}"
    )


def _fake_run(probe: nn.Module, size: tuple[int, ...] | None, inputs: Any) -> Any:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    saved = _python_state(probe.backbone)  # type: ignore[arg-type]
    # functional_call swaps parameters and buffers back afterwards, but not all of them for a
    # module registered at two paths (timm CoaT's crpe): put every one back ourselves.
    tensors = [(m, dict(m._parameters), dict(m._buffers)) for m in probe.modules()]
    try:
        with mode, torch.no_grad():
            state: dict[str, torch.Tensor] = {
                n: mode.from_tensor(t) for n, t in probe.named_parameters()
            }
            state.update((n, mode.from_tensor(t)) for n, t in probe.named_buffers())
            args, kwargs = _args(inputs, size, _FAKE_BATCH, probe)
            args, kwargs = _tree.map_tensors(mode.from_tensor, (args, kwargs))
            return functional_call(probe, state, args, kwargs)
    finally:
        for module, parameters, buffers in tensors:
            module._parameters.update(parameters)
            module._buffers.update(buffers)
        _restore_python_state(saved)


def _real_run(probe: nn.Module, size: tuple[int, ...] | None, inputs: Any) -> Any:
    backbone: nn.Module = probe.backbone  # type: ignore[assignment]
    batch = _FAKE_BATCH if backbone.training else 1
    buffers = [(b, b.detach().clone()) for b in backbone.buffers()]
    devices = sorted({p.device.index or 0 for p in backbone.parameters() if p.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            args, kwargs = _args(inputs, size, batch, probe)
            return probe(*args, **kwargs)
    finally:
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)


def _spatial_of(inputs: Any) -> tuple[int, ...]:
    """Spatial dims of the first input tensor: ``(N, C, *spatial)`` images and volumes. Token
    ids ``(N, L)`` have none (their features ``(N, L, D)`` are tokens of ``D`` channels), and a
    3-d float input is ``(N, L, D)`` or ``(N, C, L)``: read as tokens, so none either (pass
    ``input_size=(C, L)`` for a signal)."""
    first = next(_tree.tensors(inputs), None)
    if first is None:
        return ()
    if first.dim() >= 4:
        return tuple(first.shape[2:])
    return ()


# -- the model's Python state: a forward may cache a tensor on a module (a mask, a grid, timm's
# attention-bias cache dict); a fake tensor left there would break the next real forward.
_Saved = list[tuple[nn.Module, dict[str, Any], dict[int, Any]]]


def _python_state(model: nn.Module) -> _Saved:
    """Each module's attributes, and a shallow copy of the contents of its dict/list attributes."""
    saved: _Saved = []
    for module in model.modules():
        attrs = dict(module.__dict__)
        contents = {
            id(v): (dict(v) if isinstance(v, dict) else list(v))
            for k, v in attrs.items()
            if isinstance(v, (dict, list)) and k not in _MODULE_INTERNALS
        }
        saved.append((module, attrs, contents))
    return saved


def _restore_python_state(saved: _Saved) -> None:
    """Undo what a fake run left behind: attributes set to fake tensors, fake tensors put into
    a module's dicts or lists."""
    from torch._subclasses.fake_tensor import FakeTensor

    def has_fake(value: Any) -> bool:
        return any(isinstance(t, FakeTensor) for t in _tree.tensors(value))

    for module, before, contents in saved:
        now = module.__dict__
        for name in list(now):
            value = now[name]
            if name in before and value is before[name]:
                if id(value) in contents and has_fake(value):
                    old = contents[id(value)]
                    value.clear()
                    if isinstance(value, dict):
                        value.update(old)
                    else:
                        value.extend(old)
            elif has_fake(value):
                if name in before:
                    now[name] = before[name]
                else:
                    del now[name]


_MODULE_INTERNALS = frozenset(
    name for name, value in vars(nn.Module()).items() if isinstance(value, (dict, list))
)

"""Stage presets for Hugging Face ``transformers`` models, read from their configs.

:func:`featwrap.stages` calls :func:`hf_stages` for a ``transformers`` model; it needs no import
of ``transformers`` (the model and its ``config`` say everything), so featwrap does not depend on
it. Each preset is a list of :class:`~featwrap.Capture`, one per stage, in forward order:

* ViT, DeiT, DINOv2 (with registers too), CLIP and SigLIP vision towers: every block of the
  encoder, tokens ``(B, prefix + H/p * W/p, C)`` as in ``hidden_states[1:]``;
* Swin (v1 and v2): the last block of each stage, i.e. the stage before its patch merging,
  tokens ``(B, H/r * W/r, C)`` with ``r`` 4, 8, 16, 32 (HF's ``reshaped_hidden_states`` with
  ``output_hidden_states_before_downsampling=True``, as tokens);
* ConvNeXt (v1 and v2): each stage, maps ``(B, C, H/r, W/r)`` as in ``hidden_states[1:]``;
* BERT, RoBERTa, GPT-2 text stacks: every layer, tokens ``(B, L, C)``.

The block lists are found by shape, not by name (``encoder.layer``, ``layers``, ``h``: the names
change between ``transformers`` versions): the first ``nn.ModuleList`` holding as many blocks of
one class as the config says. Blocks return a tensor in some versions and a tuple in others;
every Capture selects with :func:`hidden_state`, which takes either, and carries the stage's
``layout`` (a :class:`featwrap.Tokens` with the prefix tokens and the patch size), so that
``FeatureModel(model, stages(model), output_fmt="NCHW")`` returns maps. :func:`token_layouts`
gives each stage's layout: prefix tokens and the patch grid for an input size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featwrap.errors import FeatwrapValueError
from featwrap.layers import Capture
from featwrap.maps import Tokens

__all__ = ["TokenLayout", "hf_stages", "hidden_state", "is_hf_model", "token_layouts"]


def hidden_state(output: Any) -> Any:
    """A block's hidden state: the output itself when it is a tensor, else its first element.

    ``transformers`` blocks return ``(hidden_states, ...)`` tuples in some versions and the bare
    tensor in others; ``Capture(path, select=hidden_state)`` takes the same value from both.

    >>> import torch
    >>> x = torch.ones(1, 2)
    >>> hidden_state(x) is x, hidden_state((x, None)) is x
    (True, True)
    """
    return output if isinstance(output, torch.Tensor) else output[0]


@dataclass(frozen=True)
class TokenLayout:
    """How one stage's output lies over the input.

    Attributes:
        layout: ``"NLC"`` for tokens ``(B, L, C)``, ``"NCHW"`` for maps.
        prefix_tokens: tokens before the patch tokens (class, distillation, register tokens).
        reduction: the stride of the patch grid in input pixels; ``None`` for text.
        padded: the model pads the input to whole patches (Swin), so the grid rounds up.

    >>> TokenLayout("NLC", prefix_tokens=1, reduction=16).grid(224, 160)
    (14, 10)
    """

    layout: str
    prefix_tokens: int
    reduction: int | None
    padded: bool = False

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The ``(rows, columns)`` of patch tokens for an input of ``height`` x ``width`` pixels."""
        if self.reduction is None:
            raise FeatwrapValueError(
                f"{self} holds text tokens (reduction None), which have no patch grid to "
                f"lay {height} x {width} pixels on; use its tokens (B, L, C) as they are."
            )
        r = self.reduction
        if self.padded:
            return math.ceil(height / r), math.ceil(width / r)
        return height // r, width // r


@dataclass(frozen=True)
class _Family:
    kind: str  # "blocks": every block; "swin": each stage's last block; "convnext": each stage
    prefix: Callable[[Any], int] = lambda config: 0
    image: bool = True


def _registers(config: Any) -> int:
    return 1 + int(getattr(config, "num_register_tokens", 0))


_FAMILIES: dict[str, _Family] = {
    "vit": _Family("blocks", lambda c: 1),
    "deit": _Family("blocks", lambda c: 2),  # class and distillation tokens
    "dinov2": _Family("blocks", lambda c: 1),
    "dinov2_with_registers": _Family("blocks", _registers),
    "clip_vision_model": _Family("blocks", lambda c: 1),
    "siglip_vision_model": _Family("blocks"),
    "swin": _Family("swin"),
    "swinv2": _Family("swin"),
    "convnext": _Family("convnext"),
    "convnextv2": _Family("convnext"),
    "bert": _Family("blocks", image=False),
    "roberta": _Family("blocks", image=False),
    "gpt2": _Family("blocks", image=False),
}


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` model (judged without importing ``transformers``)."""
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def hf_stages(model: nn.Module) -> list[Capture]:
    """The stages of a ``transformers`` model, shallow to deep (see the module's docstring).

    Raises:
        FeatwrapValueError: for a model type without a preset, naming the ones there are.
    """
    return [
        Capture(path, select=hidden_state, layout=_maps_layout(layout))
        for path, layout in token_layouts(model).items()
    ]


def token_layouts(model: nn.Module) -> dict[str, TokenLayout]:
    """``{stage key: TokenLayout}`` for the stages :func:`featwrap.stages` gives a
    ``transformers`` model: how to lay each stage's tokens onto the patch grid (see the
    Hugging Face page of the docs for a worked example).

    Raises:
        FeatwrapValueError: for a model type without a preset.
    """
    family, config = _family(model)
    paths = _paths(model, family, config)
    if not family.image:
        return {p: TokenLayout("NLC", 0, None) for p in paths}
    patch = _int(config.patch_size)
    if family.kind == "blocks":
        prefix = family.prefix(config)
        return {p: TokenLayout("NLC", prefix, patch) for p in paths}
    layout = "NLC" if family.kind == "swin" else "NCHW"
    return {
        p: TokenLayout(layout, 0, patch * 2**i, padded=family.kind == "swin")
        for i, p in enumerate(paths)
    }


def _maps_layout(layout: TokenLayout) -> Tokens | str | None:
    """The layout ``output_fmt`` needs: tokens with their prefix and patch size, a map, or None
    for text (no grid to lay it on)."""
    if layout.layout == "NCHW":
        return "NCHW"
    if layout.reduction is None:
        return None
    return Tokens(prefix=layout.prefix_tokens, patch_size=layout.reduction)


def _family(model: nn.Module) -> tuple[_Family, Any]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    family = _FAMILIES.get(str(model_type))
    if family is None or not is_hf_model(model):
        known = ", ".join(sorted(_FAMILIES))
        hint = ""
        vision = getattr(model, "vision_model", None)
        if isinstance(vision, nn.Module):
            hint = " For the image tower of a two-tower model, pass model.vision_model."
        raise FeatwrapValueError(
            f"stages() has no preset for the transformers model {type(model).__name__} "
            f"(model_type {model_type!r}); presets cover the model types {known}.{hint} Pass "
            "the layer paths yourself, e.g. FeatureModel(model, featwrap.Capture('encoder.layer.3', "
            "select=featwrap.hf_stages.hidden_state)); featwrap.list_layers(model) lists them."
        )
    return family, config


def _paths(model: nn.Module, family: _Family, config: Any) -> list[str]:
    if family.kind == "blocks":
        stack = _stack(model, int(config.num_hidden_layers))
        return [f"{stack}.{i}" for i in range(int(config.num_hidden_layers))]
    depths = [int(d) for d in config.depths]
    stack = _stack(model, len(depths))
    if family.kind == "convnext":
        return [f"{stack}.{i}" for i in range(len(depths))]
    return [f"{stack}.{i}.blocks.{d - 1}" for i, d in enumerate(depths)]


def _stack(model: nn.Module, length: int) -> str:
    """The path of the first ModuleList of ``length`` modules of one class (the block stack)."""
    for path, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == length
            and len({type(m) for m in module}) == 1
        ):
            return str(path)
    raise FeatwrapValueError(
        f"No list of {length} blocks in {type(model).__name__}, as its config says there should "
        "be: this transformers version lays the model out differently. Pass the layer paths "
        "yourself (featwrap.list_layers(model) lists them)."
    )


def _int(value: Any) -> int:
    """A patch size given as an int or an ``(h, w)`` pair (square patches only)."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise FeatwrapValueError(
                f"The config's patch_size {tuple(value)} is not square, which the presets do not "
                "cover; pass the layer paths yourself (featwrap.list_layers(model) lists them)."
            )
        value = value[0]
    return int(value)

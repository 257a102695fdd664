"""Samples that are dicts: the model's keyword inputs, padded collation and the attention mask.

A sample ``{"input_ids": (L,), "attention_mask": (L,), "label": 3}`` (the shape of every
HuggingFace text pipeline) reaches the model as ``model(input_ids=..., attention_mask=...)``: the
keys its ``forward`` names, the others (``label``) left out (all of them go to a
``forward(**kwargs)`` that names none). :func:`pad_collate` batches
sequences of different lengths by padding them on the right, with an ``attention_mask`` that marks
the real tokens; token features are then pooled over those tokens only (``tokens.py``).

>>> batch = pad_collate([{"input_ids": torch.tensor([5, 6, 7])}, {"input_ids": torch.tensor([8])}])
>>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from featwrap.extraction.errors import DataError

__all__ = ["MASK", "ModelInput", "Parameters", "is_keyword_batch", "pad_collate", "split_batch"]

#: The key of the mask of real (1) and padding (0) tokens, as HuggingFace names it.
MASK = "attention_mask"


def pad_collate(samples: Sequence[Any]) -> Any:
    """``default_collate``, except that dict samples are padded: a tensor (or list of numbers)
    whose first dimension differs between samples is right-padded with 0 to the longest, and an
    ``attention_mask`` (1 on real positions, 0 on padding) is added unless the samples have one
    (also to a batch of 1-D integer sequences of equal lengths, so that every batch of token ids
    has one).
    A tuple ``(dict, target, ...)`` has its dict padded the same way."""
    first = samples[0] if samples else None
    if isinstance(first, Mapping):
        return _pad_dicts(samples)
    if isinstance(first, (tuple, list)) and first and isinstance(first[0], Mapping):
        rest = default_collate([tuple(s[1:]) for s in samples])
        return (_pad_dicts([s[0] for s in samples]), *rest)
    return default_collate(list(samples))


def _pad_dicts(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    keys = list(samples[0])
    for n, sample in enumerate(samples):
        if set(sample) != set(keys):
            raise DataError(
                f"Sample {n} of a batch has the keys {sorted(sample)} but sample 0 has "
                f"{sorted(keys)}: every sample must have the same keys. Pass a collate_fn to "
                "batch them yourself."
            )
    batch: dict[str, Any] = {}
    lengths: list[int] | None = None
    for key in keys:
        values = [_as_tensor(s[key]) for s in samples]
        if not all(isinstance(v, torch.Tensor) for v in values):
            batch[key] = default_collate([s[key] for s in samples])
            continue
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) == 1:
            batch[key] = torch.stack(values)
            if lengths is None and _token_ids(values[0]):
                lengths = [len(v) for v in values]  # equal lengths: a mask of ones
            continue
        if any(v.ndim == 0 or v.shape[1:] != values[0].shape[1:] for v in values):
            raise DataError(
                f"The samples' {key!r} have shapes {sorted(shapes)[:4]}: only the first "
                "dimension (the sequence length) may differ to be padded. Pass a collate_fn "
                "that batches them."
            )
        longest = max(len(v) for v in values)
        padded = values[0].new_zeros((len(values), longest, *values[0].shape[1:]))
        for row, v in enumerate(values):
            padded[row, : len(v)] = v
        batch[key] = padded
        if lengths is None or max(lengths) < longest:
            lengths = [len(v) for v in values]
    if lengths is not None and MASK not in batch:
        longest = max(lengths)
        batch[MASK] = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).long()
    return batch


def _token_ids(value: torch.Tensor) -> bool:
    """A 1-D integer tensor: a sequence of token ids, given a mask even when none is padded."""
    return value.ndim == 1 and not value.is_floating_point() and not value.is_complex()


def _as_tensor(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        return torch.tensor(value)
    return value


def is_keyword_batch(batch: Any) -> bool:
    """Whether a collated batch holds the model's input as a dict (alone or first of a tuple)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    return isinstance(batch, Mapping)


@dataclass(frozen=True)
class Parameters:
    """The keyword arguments a model's ``forward`` takes."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    any_keyword: bool  # it has ``**kwargs``
    owner: str

    @classmethod
    def of(cls, module: nn.Module) -> Parameters:
        """The parameters of ``module.forward`` (a FeatureModel's: its backbone's)."""
        inner = getattr(module, "backbone", module)
        try:
            signature = inspect.signature(inner.forward)
        except (TypeError, ValueError):
            return cls((), (), True, type(inner).__name__)
        names, required, any_keyword = [], [], False
        for p in signature.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                any_keyword = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.append(p.name)
                if p.default is p.empty:
                    required.append(p.name)
        return cls(tuple(names), tuple(required), any_keyword, type(inner).__name__)


@dataclass
class ModelInput:
    """One batch as the model takes it, and the attention mask when there is one."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    mask: torch.Tensor | None = None

    def to(self, device: torch.device) -> ModelInput:
        return ModelInput(
            tuple(_to(a, device) for a in self.args),
            {k: _to(v, device) for k, v in self.kwargs.items()},
            self.mask,
        )


def split_batch(batch: Any, parameters: Parameters) -> ModelInput:
    """The model's input in a collated batch: a dict's entries that ``forward`` takes as keyword
    arguments, else the batch itself or the first item of a tuple (``(images, labels)``)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, Mapping):
        return ModelInput((batch,))
    keys = [str(k) for k in batch]
    taken = {k: v for k, v in batch.items() if k in parameters.names}
    if not taken and parameters.any_keyword:  # forward(**kwargs) names nothing: pass them all
        taken = dict(batch)
    missing = [k for k in parameters.required if k not in batch]
    if not taken or missing:
        what = f"lacks {missing}, which" if missing else "has none of the keys"
        raise DataError(
            f"The samples are dicts with the keys {keys} but {what} {parameters.owner}.forward "
            f"takes ({', '.join(parameters.names) or 'no keyword arguments'}). Rename the keys "
            "to the forward's parameters, or pass a collate_fn that returns its input."
        )
    mask = batch.get(MASK)
    if not (isinstance(mask, torch.Tensor) and mask.ndim == 2):
        mask = None
    return ModelInput((), dict(taken), mask)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(x, device) for x in value)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    return value

"""Token features ``(N, L, D)`` of a padded batch: pooled over the real tokens, or kept per token.

With an attention mask ``(N, L)`` (1 on real tokens), ``avg``/``max``/``first``/``last`` pool each
sample over its own tokens only, never over padding nor over the hidden dimension, and ``none``
keeps one ``(length, D)`` block per sample: :class:`Ragged` rows, stored as the concatenated tokens
and their offsets and loaded as a jagged nested tensor (``features[key][i]``: sample ``i``).

>>> x = torch.tensor([[[1.0], [3.0], [9.0]], [[2.0], [9.0], [9.0]]])
>>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
>>> token_pool("avg", x, mask, "h").tolist(), token_pool("last", x, mask, "h").tolist()
([[2.0], [2.0]], [[3.0], [2.0]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featwrap.errors import FeatwrapValueError
from featwrap.extraction.pool import Pool, apply_pool

__all__ = ["Ragged", "is_token_feature", "jagged", "token_pool"]


@dataclass
class Ragged:
    """Per-token rows of a batch: ``values`` ``(tokens, *shape)`` and one length per sample."""

    values: torch.Tensor
    lengths: torch.Tensor  # int64, (rows,)

    def __len__(self) -> int:
        return len(self.lengths)


def is_token_feature(value: object, mask: torch.Tensor | None) -> bool:
    """Whether ``value`` is ``(N, L, ...)`` for the batch's ``(N, L)`` attention mask."""
    return (
        mask is not None
        and isinstance(value, torch.Tensor)
        and value.ndim >= 3
        and tuple(value.shape[:2]) == tuple(mask.shape)
    )


def token_pool(
    pool: Pool, value: object, mask: torch.Tensor | None, key: str
) -> torch.Tensor | Ragged:
    """Pool one layer's batch ``value``: over the real tokens for token features, else as
    :func:`~featwrap.extraction.pool.apply_pool` does."""
    if callable(pool) or not isinstance(value, torch.Tensor) or mask is None:
        return apply_pool(pool, value, key)
    if value.is_nested:  # nn.TransformerEncoder's fast path: the real tokens only
        value = _padded(value, mask)
    if not is_token_feature(value, mask):
        return apply_pool(pool, value, key)
    real = mask.to(device=value.device, dtype=torch.bool)
    if pool == "none":
        return Ragged(value[real], real.sum(1).to("cpu", torch.int64))
    if pool == "flatten":
        raise FeatwrapValueError(
            f"pool 'flatten' for layer {key!r}: its features are per token "
            f"{tuple(value.shape)} and the sequences have different lengths, so flattened rows "
            "would not have one size. Use 'none' (one row of tokens per sample), 'avg', 'max', "
            "'first' or 'last'."
        )
    shape = (*real.shape, *([1] * (value.ndim - 2)))
    weights = real.reshape(shape)
    if pool == "avg":
        count = weights.sum(1).clamp(min=1).to(value.dtype)
        return (value * weights.to(value.dtype)).sum(1) / count
    if pool == "max":
        return value.masked_fill(~weights, float("-inf")).amax(1)
    positions = torch.arange(real.shape[1], device=value.device)
    if pool == "first":
        index = torch.where(real, positions, real.shape[1]).amin(1)
    else:
        index = torch.where(real, positions, -1).amax(1)
    return value[torch.arange(len(value), device=value.device), index.clamp(min=0)]


def _padded(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A nested tensor of each sample's real tokens, placed where the ``(N, L)`` mask has them
    (zeros on padding, which pooling never reads)."""
    rows = value.unbind()
    real = mask.to(device=rows[0].device, dtype=torch.bool)
    padded = rows[0].new_zeros((len(rows), real.shape[1], *rows[0].shape[1:]))
    padded[real] = torch.cat(rows)
    return padded


def jagged(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """A jagged nested tensor over ``values`` (no copy): row ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``."""
    return torch.nested.nested_tensor_from_jagged(values, offsets.to(torch.int64))

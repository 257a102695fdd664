"""Per-layer pooling of features before they are stored: none, avg, max, flatten or a callable.

>>> import torch
>>> x = torch.arange(16.0).reshape(1, 4, 2, 2)
>>> tuple(apply_pool("avg", x, "layer").shape), tuple(apply_pool("flatten", x, "layer").shape)
((1, 4), (1, 16))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import torch

from featwrap._options import Pooling
from featwrap._text import did_you_mean
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError

__all__ = ["POOLS", "Pool", "PoolSpec", "apply_pool", "pool_name", "resolve_pools"]

#: One layer's pooling: a name from :data:`POOLS` or a callable ``(batch tensor) -> tensor``
#: that keeps the batch dimension first.
Pool: TypeAlias = str | Callable[[torch.Tensor], torch.Tensor]
#: ``extract``'s ``pool``: one pooling for every layer, or ``{layer key: pooling}`` (others: none).
PoolSpec: TypeAlias = Pool | Mapping[str, Pool]

#: The names of :class:`~featwrap.Pooling`: ``avg``/``max`` reduce every dimension after the
#: channel one (NCHW, NCL, NCDHW layouts) and leave 2-D outputs as they are; ``flatten`` keeps one
#: vector per sample; ``first``/``last`` take the first/last position of dim 1 (a ViT's class
#: token). Token features ``(N, L, D)`` of a batch with an attention mask are pooled over the real
#: tokens instead (``tokens.py``).
POOLS = Pooling.choices()


def resolve_pools(spec: PoolSpec | None, keys: list[str]) -> dict[str, Pool]:
    """``{key: pool}`` for every layer key, checking names (close matches for typos)."""
    if spec is None:
        spec = "none"
    if isinstance(spec, str) or callable(spec):
        return {key: _check(spec, key) for key in keys}
    if not isinstance(spec, Mapping):
        raise FeatwrapTypeError(
            f"pool must be one of {POOLS}, a callable or a dict {{layer: pool}}, got "
            f"{type(spec).__name__}: {spec!r:.80}"
        )
    for key in spec:
        if key not in keys:
            hint = did_you_mean(key, keys)
            raise FeatwrapValueError(
                f"pool names the layer {key!r}, which is not extracted.{hint} The layers are "
                f"{', '.join(map(repr, keys))}."
            )
    return {key: _check(spec.get(key, "none"), key) for key in keys}


def _check(pool: Any, key: str) -> Pool:
    if callable(pool):
        return pool  # type: ignore[no-any-return]
    if isinstance(pool, str) and pool in POOLS:
        return str(pool)  # a Pooling member is recorded as its plain name
    hint = did_you_mean(pool, POOLS)
    raise FeatwrapValueError(
        f"pool {pool!r} for layer {key!r} is not one of {', '.join(map(repr, POOLS))} nor a "
        f"callable.{hint}"
    )


def pool_name(pool: Pool) -> str:
    """How a pooling is named in the manifest (a callable by its qualified name)."""
    if isinstance(pool, str):
        return pool
    from featwrap.extraction.data import stable_repr

    return stable_repr(pool)


def apply_pool(pool: Pool, value: Any, key: str) -> torch.Tensor:
    """Pool one layer's batch of features ``value`` (batch first)."""
    if callable(pool) and not isinstance(pool, str):
        value = pool(value)
        if not isinstance(value, torch.Tensor):
            raise FeatwrapTypeError(
                f"The pool callable for layer {key!r} returned {type(value).__name__}, not a tensor."
            )
        return value
    if not isinstance(value, torch.Tensor):
        raise FeatwrapTypeError(
            f"Layer {key!r} returns {type(value).__name__}, not a tensor, so it cannot be stored. "
            "Pick a submodule that returns a tensor (featwrap.list_layers(model)), or pass a "
            "callable pool for it that turns its output into one tensor per batch."
        )
    if value.ndim < 1:
        raise FeatwrapValueError(
            f"Layer {key!r} returns a 0-dim tensor: there is no batch dimension to store rows from."
        )
    if pool == "none":
        return value
    if pool == "flatten":
        return value.flatten(1) if value.ndim > 1 else value
    if value.ndim <= 2:
        return value
    if pool in ("first", "last"):
        return value[:, 0 if pool == "first" else -1]
    dims = tuple(range(2, value.ndim))
    return value.mean(dim=dims) if pool == "avg" else value.amax(dim=dims)

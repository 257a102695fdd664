"""One forward over a batch, turned into rows to store: the requested features, pooled, on CPU."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from featwrap._options import OUTPUT_KEY
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError, LayerSpecError
from featwrap.extraction.pool import Pool, apply_pool
from featwrap.extraction.speed import HostRows, finish, to_host
from featwrap.layers import Capture, LayerSpec, resolve_layers
from featwrap.model import FeatureModel

__all__ = ["Forward", "compute_rows", "feature_forward"]

#: ``forward(inputs) -> {key: value}`` (keyword inputs: ``forward(**inputs)``)
Forward = Callable[..., Mapping[str, Any]]


def feature_forward(module: nn.Module, layers: LayerSpec | None) -> tuple[Forward, dict[str, str]]:
    """A forward returning the requested features, and ``{key: module path}`` in request order
    (the path of the model's own output is ``""``)."""
    if isinstance(module, FeatureModel) and layers is None:
        own = dict(module.layers)
        return module, own if module.output_key is None else {module.output_key: "", **own}
    if isinstance(module, FeatureModel):  # new layers: paths are the backbone's own
        module = module.backbone
    if layers is None:
        raise LayerSpecError(
            "Name the layers to extract, e.g. layers=['layer4', 'logits'] ('logits': the model's "
            "own output). featwrap.list_layers(model) lists the paths."
        )
    items: list[tuple[str, str | None]]
    if isinstance(layers, str):
        items = [(layers, None)]
    elif isinstance(layers, Mapping):
        items = list(layers.items())
    else:
        given = [layers] if isinstance(layers, Capture) else list(layers)
        if any(not isinstance(path, str) for path in given):
            raise FeatwrapTypeError(
                "extract takes layer paths as strings (a module's input: 'fc:input'), got "
                f"{layers!r:.120}. Capture objects are for FeatureModel."
            )
        items = [(str(path), None) for path in given]
    has_output_module = any(name == OUTPUT_KEY for name, _ in module.named_modules())
    output_key: str | None = None
    paths: dict[str, str] = {}
    hooked: list[tuple[str, str | None]] = []
    for path, alias in items:
        if path == OUTPUT_KEY and not has_output_module:
            output_key = alias or OUTPUT_KEY
            paths[output_key] = ""
            continue
        for resolved in resolve_layers(module, {path: alias} if alias else [path], None):
            paths[resolved.key] = resolved.path
        hooked.append((path, alias))
    if not hooked:
        if output_key is None:
            raise LayerSpecError("layers is empty: name at least one layer path or 'logits'.")
        key = output_key
        return (lambda *args, **kwargs: {key: module(*args, **kwargs)}), paths
    spec: LayerSpec = (
        {p: a or p for p, a in hooked} if isinstance(layers, Mapping) else [p for p, _ in hooked]
    )
    return FeatureModel(module, spec, output_key=output_key, detach=True), paths


def compute_rows(
    forward: Forward,
    inputs: Any,
    n: int,
    pools: Mapping[str, Pool],
    dtype: torch.dtype | None,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Run ``forward`` on ``inputs`` (moved to ``device``); each feature pooled, cast to ``dtype``
    (floating-point features only) and copied to the host, contiguous, ``n`` rows (from CUDA the
    copies may still be in flight: ``HostRows.wait()`` before reading them)."""
    with torch.no_grad():
        out = forward(_to(inputs, device))
        rows: dict[str, torch.Tensor] = {}
        for key, pool in pools.items():
            value = apply_pool(pool, out[key], key)
            if value.ndim == 0 or value.shape[0] != n:
                raise FeatwrapValueError(
                    f"Layer {key!r} gives {tuple(value.shape)} for a batch of {n} samples: its first "
                    "dimension is not the batch, so it cannot be stored as one row per sample. "
                    "Pass a pool callable for it that returns (batch, ...)."
                )
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            rows[key] = to_host(value.detach())
        return finish(HostRows(rows), device)


def _to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_to(x, device) for x in inputs)
    return inputs

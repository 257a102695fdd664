"""Pictures of features: a grid of a feature map's channels, and per-layer activation statistics.

>>> import torch
>>> grid = channel_grid(torch.rand(6, 7, 7))  # 6 channels of 7x7, each cell scaled x9 to 63 px
>>> tuple(grid.shape)  # 3 columns, 2 rows, 2 px padding: (2 * (63 + 2) + 2, 3 * (63 + 2) + 2, RGB)
(132, 197, 3)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featwrap.errors import FeatwrapTypeError, FeatwrapValueError

__all__ = ["channel_grid", "save_channel_grid", "save_layer_statistics", "show"]


def channel_grid(
    feature: torch.Tensor,
    *,
    max_channels: int = 64,
    cell: int = 64,
    padding: int = 2,
    cmap: str = "viridis",
) -> torch.Tensor:
    """An RGB image (``(height, width, 3)``, uint8) tiling the channels of one feature map.

    Each channel is min-max scaled on its own and colored with ``cmap``; cells are enlarged by an
    integer factor ``max(1, cell // max(h, w))`` (nearest neighbour) and laid out in
    ``ceil(sqrt(n))`` columns with ``padding`` pixels between and around them.

    Args:
        feature: ``(C, H, W)`` (a batch's first sample: ``out["layer1"][0]``). A ``(C,)`` vector
            or a ``(C, 1, 1)`` map is shown as one square-ish heat map of its values.
        max_channels: show at most this many channels (the first ones).
        cell: the smallest cell size in pixels to enlarge small maps to.
        padding: pixels between cells.
        cmap: a matplotlib colormap name.
    """
    if not isinstance(feature, torch.Tensor):
        raise FeatwrapTypeError(f"feature must be a tensor, got {type(feature).__name__}")
    x = feature.detach().to("cpu", torch.float32)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3 and x.shape[1] * x.shape[2] == 1:
        x = x.reshape(-1)
    if x.ndim == 1:
        side = math.ceil(math.sqrt(x.numel()))
        pad = x.new_full((side * side - x.numel(),), math.nan)
        x = torch.cat([x, pad]).reshape(1, side, side)
    elif x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or not x.numel():
        raise FeatwrapValueError(
            f"channel_grid takes one sample's (C, H, W) feature map, got shape "
            f"{tuple(feature.shape)}; index the batch first (out['layer1'][0])."
        )
    if max_channels < 1 or padding < 0 or cell < 1:
        raise FeatwrapValueError("max_channels and cell must be positive, padding non-negative")
    x = x[:max_channels]
    n, h, w = x.shape
    scale = max(1, cell // max(h, w))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    flat = x.reshape(n, -1)
    finite = torch.isfinite(flat)
    low = torch.where(finite, flat, math.inf).amin(1)
    high = torch.where(finite, flat, -math.inf).amax(1)
    low = torch.where(torch.isfinite(low), low, 0.0)
    span = torch.where(torch.isfinite(high), high - low, 0.0).clamp_min(1e-12)
    scaled = ((flat - low[:, None]) / span[:, None]).clamp(0, 1)
    scaled[~finite] = math.nan  # drawn as background
    scaled = scaled.reshape(n, h, w)
    colored = _colormap(scaled, cmap)  # (n, h, w, 3) uint8, NaN -> background
    colored = colored.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    ch, cw = h * scale, w * scale
    grid = torch.full(
        (rows * (ch + padding) + padding, cols * (cw + padding) + padding, 3),
        255,
        dtype=torch.uint8,
    )
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = padding + r * (ch + padding), padding + c * (cw + padding)
        grid[top : top + ch, left : left + cw] = colored[i]
    return grid


def _colormap(values: torch.Tensor, cmap: str) -> torch.Tensor:
    import matplotlib

    try:
        colors = matplotlib.colormaps[cmap]
    except KeyError:
        raise FeatwrapValueError(f"cmap={cmap!r} is not a matplotlib colormap.") from None
    lut = (
        torch.tensor(colors(torch.linspace(0, 1, 256).numpy())[:, :3] * 255).round().to(torch.uint8)
    )
    index = (values.nan_to_num(0.0) * 255).round().long()
    out = lut[index]
    out[values.isnan()] = 255
    return out


def save_channel_grid(
    feature: torch.Tensor, path: str | os.PathLike[str], **kwargs: Any
) -> tuple[int, int]:
    """Save :func:`channel_grid` of ``feature`` as a PNG; returns its ``(width, height)``."""
    from PIL import Image

    grid = channel_grid(feature, **kwargs)
    Image.fromarray(grid.numpy(), mode="RGB").save(path, format="PNG")
    return grid.shape[1], grid.shape[0]


def save_layer_statistics(
    statistics: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike[str],
    *,
    size: tuple[float, float] = (10.0, 6.0),
    dpi: int = 100,
    title: str | None = None,
) -> tuple[int, int]:
    """Plot per-layer activation statistics (as from :func:`featwrap.extraction.layer_statistics`)
    and save it as a PNG of ``size`` inches at ``dpi``; returns its ``(width, height)`` in pixels.

    Top: each layer's mean with a ±std bar and its min and max; bottom: the fraction of exact
    zeros (dead or clipped activations), layers in order along the x axis.
    """
    if not statistics:
        raise FeatwrapValueError("No layer statistics to plot.")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = list(statistics)
    xs = list(range(len(names)))
    get = {k: [float(statistics[n].get(k, math.nan)) for n in names] for k in
           ("mean", "std", "min", "max", "zeros")}  # fmt: skip
    figure = Figure(figsize=size, dpi=dpi)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.errorbar(
        xs, get["mean"], yerr=get["std"], fmt="o", color="C0", capsize=3, label="mean ± std"
    )
    top.scatter(xs, get["min"], marker="v", color="C2", s=14, label="min")
    top.scatter(xs, get["max"], marker="^", color="C3", s=14, label="max")
    top.set_yscale("symlog", linthresh=1e-2)
    top.set_ylabel("activation")
    top.grid(alpha=0.3)
    top.legend(loc="best", fontsize="small")
    bottom.bar(xs, get["zeros"], color="C1")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("zeros")
    bottom.set_xticks(xs)
    fontsize = max(4.0, min(9.0, 400 / max(1, len(names))))
    bottom.set_xticklabels(names, rotation=90, fontsize=fontsize)
    top.set_title(title or "Activation statistics per layer")
    figure.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.3, hspace=0.08)
    figure.savefig(path, format="png", dpi=dpi)
    return round(size[0] * dpi), round(size[1] * dpi)


def show(
    model: nn.Module,
    image: str | os.PathLike[str] | Any,
    layer: str,
    out: str | os.PathLike[str],
    *,
    stats: str | os.PathLike[str] | None = None,
    stats_layers: str | None = None,
    transform: Any = None,
    image_size: int | None = None,
    max_channels: int = 64,
) -> dict[str, Any]:
    """Run ``model`` on one image; save the grid of ``layer``'s channels and, with ``stats``, the
    statistics plot of every leaf layer (or of the layers matching the glob ``stats_layers``).

    Args:
        model: any module (left in its train/eval mode, hooks removed afterwards).
        image: an image file, a ``PIL.Image`` or an already preprocessed ``(C, H, W)`` tensor.
        layer: the layer path to draw (as for :class:`~featwrap.FeatureModel`).
        out: the grid's PNG path.
        stats: the statistics plot's PNG path (``None``: no plot).
        stats_layers: glob of the layers in the plot (default: every leaf module).
        transform: preprocessing of a file or PIL image (default:
            :func:`featwrap.extraction.data.default_transform`).
        image_size: for the default transform: resize and center-crop to this size.
        max_channels: at most this many channels in the grid.

    Returns:
        ``{"grid": (width, height), "shape": the layer's (C, H, W), "stats": (width, height) or
        None, "layers": number of layers in the plot}``.
    """
    from featwrap.extraction.data import ImageFolderData, default_transform
    from featwrap.extraction.load import layer_statistics
    from featwrap.layers import list_layers
    from featwrap.model import FeatureModel

    prepare = transform or default_transform(model, None, image_size)
    if isinstance(image, torch.Tensor):
        x, name = image, "the input"
    elif isinstance(image, (str, os.PathLike)):
        x, name = ImageFolderData(image, prepare)[0], os.path.basename(image)
    else:
        x, name = prepare(image), "the image"
    if stats_layers is None:
        leaves = [p for p in list_layers(model) if not any(model.get_submodule(p).children())]
    else:
        leaves = list_layers(model, stats_layers)
        if not leaves:
            raise FeatwrapValueError(f"stats_layers={stats_layers!r} matches no layer.")
    wanted = [layer, *(p for p in leaves if p != layer)] if stats is not None else [layer]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        fm = FeatureModel(model, wanted, output_key=None, detach=True, missing="skip")
        with fm, torch.no_grad():
            values = fm(x.unsqueeze(0))
    finally:
        for m, mode in modes.items():
            m.training = mode
    feature = values.get(layer)
    if not isinstance(feature, torch.Tensor):
        raise FeatwrapValueError(
            f"Layer {layer!r} returned {type(feature).__name__}, not a tensor, to draw."
        )
    result: dict[str, Any] = {"shape": tuple(feature.shape[1:]), "stats": None, "layers": 0}
    result["grid"] = save_channel_grid(feature[0], out, max_channels=max_channels)
    if stats is not None:
        tensors = {k: v for k, v in values.items() if k in leaves and isinstance(v, torch.Tensor)}
        numbers = layer_statistics(tensors)
        title = f"Activation statistics: {name}"
        result["stats"] = save_layer_statistics(numbers, stats, title=title)
        result["layers"] = len(numbers)
    return result

"""Pictures of features: a grid of a feature map's channels, and per-layer activation statistics.

>>> import torch
>>> grid = channel_grid(torch.rand(6, 7, 7))  # 6 channels of 7x7, each cell scaled x9 to 63 px
>>> tuple(grid.shape)  # 3 columns, 2 rows, 2 px padding: (2 * (63 + 2) + 2, 3 * (63 + 2) + 2, RGB)
(132, 197, 3)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from featwrap.errors import FeatwrapTypeError, FeatwrapValueError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "channel_figure",
    "channel_grid",
    "is_vector",
    "save_channel_grid",
    "save_layer_statistics",
    "show",
    "statistics_figure",
]


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
    limits = (("max_channels", max_channels, 1), ("cell", cell, 1), ("padding", padding, 0))
    bad = [f"{name}={value!r}" for name, value, least in limits if value < least]
    if bad:
        raise FeatwrapValueError(
            f"{', '.join(bad)}: max_channels and cell must be at least 1 and padding at least 0 "
            "(the defaults are 64, 64 and 2; `featwrap show --max-channels N`)."
        )
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


def is_vector(shape: Sequence[int]) -> bool:
    """Whether one sample's feature of ``shape`` has no spatial extent: ``(C,)`` or
    ``(C, 1, 1)`` (pooled), drawn as a bar or line plot rather than as 1x1 tiles.

    >>> is_vector((512, 1, 1)), is_vector((64, 56, 56))
    (True, False)
    """
    shape = tuple(shape)
    return len(shape) == 1 or (len(shape) >= 2 and math.prod(shape[1:]) == 1)


def channel_figure(
    feature: torch.Tensor,
    *,
    max_channels: int = 64,
    cell: int = 64,
    padding: int = 2,
    cmap: str = "viridis",
    title: str | None = None,
    dpi: int = 100,
) -> Figure:
    """A matplotlib figure of one sample's feature, with its channels numbered.

    A map ``(C, H, W)`` is drawn as :func:`channel_grid` at one screen pixel per grid pixel (or
    an integer zoom of it, for small grids), each cell numbered with its channel, beside a colour
    scale (each channel runs from its own minimum to its own maximum). A vector (``(C,)`` or
    ``(C, 1, 1)``: ``avgpool``, ``fc``, logits) is a bar plot of its values against the channel
    index (a line plot beyond 512 channels), every value shown.
    """
    _pyplot_free_backend()
    from matplotlib.figure import Figure

    if not isinstance(feature, torch.Tensor):
        raise FeatwrapTypeError(f"feature must be a tensor, got {type(feature).__name__}")
    if is_vector(_maps(feature).shape if feature.ndim != 1 else feature.shape):
        values = feature.detach().to("cpu", torch.float64).reshape(-1)
        figure = Figure(figsize=(10.0, 3.6), dpi=dpi, layout="constrained")
        ax = figure.add_subplot()
        index = list(range(len(values)))
        if len(values) <= 512:
            ax.bar(index, values.tolist(), width=0.8 if len(values) <= 64 else 1.0, color="C0")
        else:
            ax.plot(index, values.tolist(), color="C0", linewidth=0.8)
        ax.axhline(0.0, color="0.3", linewidth=0.6)
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xlabel("channel")
        ax.set_ylabel("activation")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(title or f"{len(values)} channels", fontsize="medium")
        return figure
    grid = channel_grid(
        feature, max_channels=max_channels, cell=cell, padding=padding, cmap=cmap
    ).numpy()
    x = _maps(feature)[:max_channels]
    n, h, w = x.shape
    scale = max(1, cell // max(h, w))
    cols = math.ceil(math.sqrt(n))
    height, width = grid.shape[:2]
    zoom = max(1, 400 // max(height, width))
    margin, bar, top = 0.15, 1.0, 0.45  # inches: sides, colour scale and its labels, title
    grid_w, grid_h = width * zoom / dpi, height * zoom / dpi
    shown = f"{n} of {len(_maps(feature))} channels" if n < len(_maps(feature)) else f"{n} channels"
    title = title or shown
    left = margin  # and wide enough for the title (about 0.075 inch per character)
    fig_w, fig_h = max(margin + grid_w + bar, 0.075 * len(title) + 0.3), top + grid_h + margin
    figure = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = figure.add_axes((left / fig_w, margin / fig_h, grid_w / fig_w, grid_h / fig_h))
    ax.imshow(grid, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    fontsize = max(5.0, min(9.0, h * scale * zoom / 6))
    for i in range(n):
        r, c = divmod(i, cols)
        top_px = padding + r * (h * scale + padding)
        left_px = padding + c * (w * scale + padding)
        ax.text(
            left_px + 1, top_px + 1, str(i), fontsize=fontsize, color="white", va="top",
            ha="left", bbox={"facecolor": "black", "alpha": 0.55, "pad": 0.8, "linewidth": 0},
        )  # fmt: skip
    scale_ax = figure.add_axes(
        ((left + grid_w + 0.15) / fig_w, margin / fig_h, 0.15 / fig_w, grid_h / fig_h)
    )
    import matplotlib

    gradient = matplotlib.colormaps[cmap](torch.linspace(1, 0, 256).numpy())[:, None, :3]
    scale_ax.imshow(gradient, aspect="auto", extent=(0, 1, 0, 1))
    scale_ax.set_xticks([])
    scale_ax.yaxis.tick_right()
    scale_ax.set_yticks([0, 1], ["min", "max"], fontsize="small")
    scale_ax.set_ylabel("each channel scaled to its own range", fontsize="small")
    scale_ax.yaxis.set_label_position("right")
    ax.set_title(title, fontsize="medium", loc="left")
    return figure


def save_channel_grid(
    feature: torch.Tensor, path: str | os.PathLike[str], **kwargs: Any
) -> tuple[int, int]:
    """Save :func:`channel_figure` of ``feature`` as a PNG; returns its ``(width, height)``."""
    figure = channel_figure(feature, **kwargs)
    return _save(figure, path)


def _save(figure: Figure, path: str | os.PathLike[str]) -> tuple[int, int]:
    figure.savefig(path, format="png", dpi=figure.dpi)
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _maps(feature: torch.Tensor) -> torch.Tensor:
    x = feature.detach()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    return x[None] if x.ndim == 2 else x


def _pyplot_free_backend() -> None:
    """Draw without a display: figures are made with matplotlib's object API and saved."""
    import matplotlib

    matplotlib.use("Agg", force=False)


def save_layer_statistics(
    statistics: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike[str],
    *,
    size: tuple[float, float] = (10.0, 6.0),
    dpi: int = 100,
    title: str | None = None,
) -> tuple[int, int]:
    """Save :func:`statistics_figure` as a PNG of ``size`` inches at ``dpi``; returns its
    ``(width, height)`` in pixels."""
    figure = statistics_figure(statistics, size=size, dpi=dpi, title=title)
    figure.savefig(path, format="png", dpi=dpi)
    return round(size[0] * dpi), round(size[1] * dpi)


def statistics_figure(
    statistics: Mapping[str, Mapping[str, float]],
    *,
    size: tuple[float, float] = (10.0, 6.0),
    dpi: int = 100,
    title: str | None = None,
) -> Figure:
    """A plot of per-layer activation statistics (as from
    :func:`featwrap.extraction.layer_statistics`), layers in order along the x axis.

    Top: the range of each layer's values: a thin line from min to max, a bar from the 1st to
    the 99th percentile, a box from the 25th to the 75th and a mark at the median (with only
    ``mean``/``min``/``max`` given: the range and a mark at the mean). Bottom: the fraction of
    exact zeros (dead or clipped activations).
    """
    if not statistics:
        raise FeatwrapValueError("No layer statistics to plot.")
    _pyplot_free_backend()
    from matplotlib.figure import Figure

    names = list(statistics)
    xs = list(range(len(names)))

    def get(key: str) -> list[float]:
        return [float(statistics[n].get(key, math.nan)) for n in names]

    figure = Figure(figsize=size, dpi=dpi, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    low, high = get("min"), get("max")
    top.vlines(xs, low, high, color="0.55", linewidth=1.0, label="min to max")
    if all(math.isfinite(v) for v in get("p50")):
        top.vlines(xs, get("p01"), get("p99"), color="C0", linewidth=2.5, alpha=0.45,
                   label="1% to 99%")  # fmt: skip
        top.vlines(xs, get("p25"), get("p75"), color="C0", linewidth=6.0, label="25% to 75%")
        top.scatter(xs, get("p50"), marker="_", color="black", s=40, zorder=3, label="median")
    else:
        top.scatter(xs, get("mean"), marker="o", color="C0", s=14, zorder=3, label="mean")
    finite = [abs(v) for v in low + high if math.isfinite(v) and v != 0]
    top.set_yscale("symlog", linthresh=max(1e-3, min(finite) if finite else 1.0))
    top.set_ylabel("activation")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small", ncols=4, framealpha=0.8)
    bottom.bar(xs, get("zeros"), color="C1")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("zeros")
    bottom.set_xticks(xs)
    bottom.set_xlim(-0.6, len(names) - 0.4)
    fontsize = max(4.0, min(9.0, 400 / max(1, len(names))))
    bottom.set_xticklabels(names, rotation=90, fontsize=fontsize)
    top.set_title(title or "Activation statistics per layer")
    return figure


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
    from featwrap._modes import evaluating
    from featwrap.extraction.data import ImageFolderData, default_transform
    from featwrap.extraction.load import layer_statistics
    from featwrap.layers import list_layers
    from featwrap.model import FeatureModel

    prepare = transform or default_transform(model, None, image_size)
    if isinstance(image, torch.Tensor):
        x, name = image, "the input"
    elif isinstance(image, (str, os.PathLike)):
        x, name = _read_image(ImageFolderData(image, prepare)), os.path.basename(image)
    else:
        x, name = prepare(image), "the image"
    if stats_layers is None:
        leaves = [p for p in list_layers(model) if not any(model.get_submodule(p).children())]
    else:
        leaves = list_layers(model, stats_layers)
        if not leaves:
            raise FeatwrapValueError(f"stats_layers={stats_layers!r} matches no layer.")
    wanted = [layer, *(p for p in leaves if p != layer)] if stats is not None else [layer]
    fm = FeatureModel(model, wanted, output_key=None, detach=True, missing="skip")
    with evaluating(model), fm, torch.no_grad():
        values = fm(x.unsqueeze(0))
    feature = values.get(layer)
    if not isinstance(feature, torch.Tensor):
        raise FeatwrapValueError(
            f"Layer {layer!r} returned {type(feature).__name__}, not a tensor, to draw."
        )
    result: dict[str, Any] = {"shape": tuple(feature.shape[1:]), "stats": None, "layers": 0}
    title = f"{layer} {tuple(feature.shape[1:])} for {name}"
    result["grid"] = save_channel_grid(feature[0], out, max_channels=max_channels, title=title)
    if stats is not None:
        tensors = {k: v for k, v in values.items() if k in leaves and isinstance(v, torch.Tensor)}
        numbers = layer_statistics(tensors)
        title = f"Activation statistics: {name}"
        result["stats"] = save_layer_statistics(numbers, stats, title=title)
        result["layers"] = len(numbers)
    return result


def _read_image(data: Any) -> torch.Tensor:
    """The first image of ``data`` (an ImageFolderData), or a DataError naming the file."""
    from featwrap.extraction.errors import DataError

    try:
        value: torch.Tensor = data[0]
    except (OSError, SyntaxError, ValueError) as error:  # PIL's ways of refusing a file
        raise DataError(
            f"{str(data.paths[0])!r} is not an image PIL can read ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no detail'}). "
            "Pass a JPEG, PNG, BMP, GIF, TIFF or WebP file."
        ) from error
    return value

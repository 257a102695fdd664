"""``featwrap show``: a picture of a layer's channels for one image, and per-layer statistics.

``featwrap show --layer layer1 --image cat.jpg --out grid.png`` saves the grid of layer1's
channels and ``grid-stats.png``, the activation statistics of every leaf layer for that image.
With ``--features DIR`` the statistics (and the grid, of row ``--index``) come from an extraction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from featwrap.errors import FeatwrapValueError

HELP = "save a PNG grid of a layer's channels and a plot of per-layer activation statistics"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("show", help=HELP, description=HELP)
    p.add_argument("--model", default="torchvision:resnet18", help="default: %(default)s")
    p.add_argument("--weights", default="auto", help="as for `featwrap extract` (default: auto)")
    p.add_argument("--layer", default="layer1", help="the layer to draw (default: %(default)s)")
    p.add_argument(
        "--image",
        default=None,
        help="an image (default: cat.jpg, one of the sample images shipped with featwrap)",
    )
    p.add_argument("--image-size", type=int, default=None, help="resize and crop to this size")
    p.add_argument("--out", default="grid.png", help="the grid's PNG (default: %(default)s)")
    p.add_argument(
        "--stats",
        default=None,
        help="the statistics plot's PNG (default: OUT with -stats before .png; '' for none)",
    )
    p.add_argument(
        "--stats-layers",
        default=None,
        help="glob of the layers in the statistics plot (default: every leaf module)",
    )
    p.add_argument("--features", default=None, help="read an extraction's output directory instead")
    p.add_argument("--index", type=int, default=0, help="with --features: the row to draw")
    p.add_argument("--max-channels", type=int, default=64, help="default: %(default)s")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from featwrap.extract import layer_statistics
    from featwrap.viz import save_channel_grid, save_layer_statistics

    out = Path(args.out)
    stats_path = Path(args.stats) if args.stats else None
    if args.stats is None:
        stats_path = out.with_name(out.stem + "-stats.png")
    if args.features is not None:
        grid_source, stats, what = _from_features(args)
    else:
        grid_source, stats, what = _from_image(args)
    width, height = save_channel_grid(grid_source, out, max_channels=args.max_channels)
    shown = min(args.max_channels, grid_source.shape[0]) if grid_source.ndim == 3 else 1
    print(f"Wrote {out} ({width}x{height} px): {shown} channels of {args.layer} "
          f"{tuple(grid_source.shape)} for {what}.")  # fmt: skip
    if stats_path is not None:
        numbers = layer_statistics(stats)
        w, h = save_layer_statistics(numbers, stats_path, title=f"Activation statistics: {what}")
        print(f"Wrote {stats_path} ({w}x{h} px): statistics of {len(numbers)} layers.")
    return 0


def _from_features(args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
    from featwrap.extract import load_features

    features = load_features(args.features)
    if args.layer not in features:
        import difflib

        close = difflib.get_close_matches(args.layer, list(features), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FeatwrapValueError(
            f"--layer {args.layer!r} is not in {args.features!r}.{hint} It holds "
            f"{', '.join(map(repr, features))}."
        )
    rows = len(features.ids)
    if not 0 <= args.index < rows:
        raise FeatwrapValueError(f"--index {args.index} is out of range: there are {rows} rows.")
    what = f"{features.ids[args.index]} in {args.features}"
    return features[args.layer][args.index], dict(features), what


def _from_image(args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
    from featwrap.assets import sample_image
    from featwrap.extract.data import ImageFolderData, default_transform
    from featwrap.hub import load_model, load_model_cached
    from featwrap.layers import list_layers
    from featwrap.model import FeatureModel

    if args.weights == "auto":
        loaded, note = load_model_cached(args.model)
        if note:
            print(f"featwrap: {note}")
    else:
        loaded = load_model(args.model, args.weights)
    model = loaded.model
    image = Path(args.image) if args.image else sample_image()
    if not image.exists() and image.parent == Path() and sample_image(image.name).is_file():
        print(
            f"featwrap: no {image} here; using the sample image {image.name} shipped with featwrap."
        )
        image = sample_image(image.name)
    data = ImageFolderData(image, default_transform(model, loaded.transforms, args.image_size))
    x = data[0].unsqueeze(0)
    if args.stats_layers is None:  # every leaf module
        leaves = [p for p in list_layers(model) if not any(model.get_submodule(p).children())]
    else:
        leaves = list_layers(model, args.stats_layers)
        if not leaves:
            raise FeatwrapValueError(f"--stats-layers {args.stats_layers!r} matches no layer.")
    wanted = [args.layer, *(p for p in leaves if p != args.layer)]
    fm = FeatureModel(model, wanted, output_key=None, detach=True, missing="skip")
    with fm, torch.no_grad():
        out = fm(x)
    grid = out[args.layer]
    if not isinstance(grid, torch.Tensor):
        raise FeatwrapValueError(
            f"--layer {args.layer!r} returns {type(grid).__name__}, not a tensor."
        )
    stats = {k: v for k, v in out.items() if k in leaves and isinstance(v, torch.Tensor)}
    return grid[0], stats, data.ids[0]

"""``featwrap show``: a picture of a layer's channels for one image, and per-layer statistics.

``featwrap show --layer layer1 --image cat.jpg --out grid.png`` saves the grid of layer1's
channels and ``grid-stats.png``, the activation statistics of every leaf layer for that image.
With ``--features DIR`` the statistics (and the grid, of row ``--index``) come from an extraction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from featwrap._text import did_you_mean
from featwrap.cli._parsing import add_command
from featwrap.errors import FeatwrapValueError

HELP = "save a PNG grid of a layer's channels and a plot of per-layer activation statistics"


EXAMPLES = (
    "featwrap show                                   # layer1 of resnet18 for cat.jpg",
    "featwrap show --layer avgpool --image dog.jpg --out avgpool.png",
    "featwrap show --model timm:resnet18 --layer layer2 --image photo.png --image-size 160",
    "featwrap show --features features --layer layer3.0.downsample.1 --index 2",
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = add_command(sub, "show", HELP, EXAMPLES)
    p.add_argument("--model", default="torchvision:resnet18", help="default: %(default)s")
    p.add_argument(
        "--weights", default="auto", help="as for `featwrap extract` (default: %(default)s)"
    )
    p.add_argument("--layer", default="layer1", help="the layer to draw (default: %(default)s)")
    p.add_argument(
        "--image",
        default=None,
        help="an image (default: cat.jpg, one of the sample images shipped with featwrap)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize and center-crop to this size (default: the model's own, else 224)",
    )
    p.add_argument("--out", default="grid.png", help="the picture's PNG (default: %(default)s)")
    p.add_argument(
        "--stats",
        default=None,
        help="the statistics plot's PNG, '' for none (default: OUT with -stats before .png)",
    )
    p.add_argument(
        "--stats-layers",
        default=None,
        help="glob of the layers in the statistics plot (default: every leaf module)",
    )
    p.add_argument(
        "--features",
        default=None,
        help="read an extraction's output directory instead of running the model (default: run it)",
    )
    p.add_argument(
        "--index", type=int, default=0, help="with --features: the row to draw (default: 0)"
    )
    p.add_argument(
        "--max-channels",
        type=int,
        default=64,
        help="at most this many channels in the grid (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    stats: Path | None = Path(args.stats) if args.stats else None
    if args.stats is None:
        stats = out.with_name(out.stem + "-stats.png")
    for option, path in (("--out", out), ("--stats", stats)):
        if path is not None and not path.parent.is_dir():
            raise FeatwrapValueError(
                f"{option} {str(path)!r}: the folder {str(path.parent)!r} does not exist. "
                "Create it first, or pass a path in an existing folder."
            )
    if args.features is not None:
        return _from_features(args, out, stats)
    return _from_image(args, out, stats)


def _from_features(args: argparse.Namespace, out: Path, stats: Path | None) -> int:
    from featwrap.extraction import layer_statistics, load_features
    from featwrap.viz import save_channel_grid, save_layer_statistics

    features = load_features(args.features)
    if args.layer not in features:
        hint = did_you_mean(args.layer, features)
        raise FeatwrapValueError(
            f"--layer {args.layer!r} is not in {args.features!r}.{hint} It holds "
            f"{', '.join(map(repr, features))}."
        )
    rows = len(features.ids)
    if not 0 <= args.index < rows:
        raise FeatwrapValueError(f"--index {args.index} is out of range: there are {rows} rows.")
    what = f"{features.ids[args.index]} in {args.features}"
    feature = features[args.layer][args.index]
    title = f"{args.layer} {tuple(feature.shape)} for {what}"
    width, height = save_channel_grid(feature, out, max_channels=args.max_channels, title=title)
    _report(out, (width, height), args, tuple(feature.shape), what)
    if stats is not None:
        numbers = layer_statistics(features, max_rows=4096)
        size = save_layer_statistics(
            numbers, stats, title=f"Activation statistics: {args.features}"
        )
        print(f"Wrote {stats} ({size[0]}x{size[1]} px): statistics of {len(numbers)} layers.")
    return 0


def _from_image(args: argparse.Namespace, out: Path, stats: Path | None) -> int:
    from featwrap.assets import sample_image
    from featwrap.extraction.data import default_transform
    from featwrap.hub import load_model_noted
    from featwrap.viz import show

    loaded, note = load_model_noted(args.model, args.weights)
    if note:
        print(f"featwrap: {note}")
    image = Path(args.image) if args.image else sample_image()
    if not image.exists() and image.parent == Path() and sample_image(image.name).is_file():
        print(
            f"featwrap: no {image} here; using the sample image {image.name} shipped with featwrap."
        )
        image = sample_image(image.name)
    transform = default_transform(loaded.model, loaded.transforms, args.image_size)
    result = show(
        loaded.model, image, args.layer, out, stats=stats, stats_layers=args.stats_layers,
        transform=transform, max_channels=args.max_channels,
    )  # fmt: skip
    _report(out, result["grid"], args, result["shape"], image.name)
    if stats is not None:
        w, h = result["stats"]
        print(f"Wrote {stats} ({w}x{h} px): statistics of {result['layers']} layers.")
    return 0


def _report(
    out: Path, size: tuple[int, int], args: argparse.Namespace, shape: tuple[int, ...], what: str
) -> None:
    from featwrap.viz import is_vector

    if is_vector(shape):
        shown = f"the {shape[0]} values"
    else:
        shown = f"{min(args.max_channels, shape[0]) if len(shape) == 3 else 1} channels"
    print(f"Wrote {out} ({size[0]}x{size[1]} px): {shown} of {args.layer} {shape} for {what}.")

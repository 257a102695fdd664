"""``featwrap layers MODEL``: the layer table of a model (path, module, output shape, channels,
reduction), or just its paths, to pick what FeatureModel should return."""

from __future__ import annotations

import argparse

from featwrap.errors import FeatwrapValueError
from featwrap.hub import load_model
from featwrap.layers import Capture, list_layers

HELP = (
    "list a model's layers with output shape, channels and reduction (the names FeatureModel takes)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("layers", help=HELP, description=HELP)
    p.add_argument(
        "model",
        nargs="?",
        default="torchvision:resnet18",
        help="'torchvision:NAME', 'timm:NAME' or 'package.module:factory' (default: %(default)s)",
    )
    p.add_argument("--pattern", "-p", default=None, help="only paths matching this glob")
    p.add_argument(
        "--input-size",
        "-s",
        default=None,
        type=_input_size,
        help="C,H,W without batch, or S for 3,S,S (default: the model's own, else 3,224,224)",
    )
    p.add_argument("--depth", "-d", type=int, default=None, help="only paths of at most D parts")
    p.add_argument(
        "--stages", action="store_true", help="only the multi-scale stages (featwrap.stages)"
    )
    p.add_argument(
        "--paths-only", action="store_true", help="path and module type only, without a dry run"
    )
    p.add_argument(
        "--weights",
        default="none",
        help="'none' (random, default), 'pretrained', a torchvision weights name or a checkpoint",
    )
    p.set_defaults(func=run)


def _input_size(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: use C,H,W (e.g. 3,224,224) or one number S for 3,S,S"
        )
    return (3, dims[0], dims[0]) if len(dims) == 1 else dims


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model, weights=args.weights).model
    if args.paths_only:
        return _paths_only(model, args)
    from featwrap.layer_summary import summary
    from featwrap.multiscale import stages

    layers = None
    if args.stages:
        found = stages(model, input_size=args.input_size)
        layers = [s.path if isinstance(s, Capture) else s.removesuffix(":input") for s in found]
    try:
        table = summary(
            model, args.input_size, pattern=args.pattern, depth=args.depth, layers=layers
        )
    except FeatwrapValueError as error:
        if str(error).startswith("No layer of"):
            print(f"No layer of {args.model} matches {args.pattern!r}.")
            return 1
        raise
    print(table)
    return 0


def _paths_only(model: object, args: argparse.Namespace) -> int:
    paths = list_layers(model, args.pattern)  # type: ignore[arg-type]
    if args.depth is not None:
        paths = [p for p in paths if p.count(".") < args.depth]
    if not paths:
        print(f"No layer of {args.model} matches {args.pattern!r}.")
        return 1
    width = max(len(p) for p in paths)
    print(f"{'path':<{width}}  module")
    for path in paths:
        module = model.get_submodule(path)  # type: ignore[attr-defined]
        print(f"{path:<{width}}  {type(module).__name__}")
    return 0

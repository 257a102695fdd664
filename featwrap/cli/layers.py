"""``featwrap layers MODEL``: the layer table of a model (path, module, output shape, channels,
reduction), or just its paths, to pick what FeatureModel should return."""

from __future__ import annotations

import argparse

from featwrap._text import table
from featwrap.cli._parsing import add_command
from featwrap.errors import FeatwrapValueError, LayerNotFoundError

HELP = (
    "list a model's layers with output shape, channels and reduction (the names FeatureModel takes)"
)


EXAMPLES = (
    "featwrap layers                                   # torchvision's resnet18",
    "featwrap layers timm:convnext_atto --stages       # the multi-scale stages",
    "featwrap layers torchvision:resnet18 --pattern 'layer4.*' --input-size 3,64,64",
    "featwrap layers my_package.models:build_net --paths-only --depth 1",
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = add_command(sub, "layers", HELP, EXAMPLES)
    p.add_argument(
        "model",
        nargs="?",
        default="torchvision:resnet18",
        help="'torchvision:NAME', 'timm:NAME', 'hf:FOLDER' or 'package.module:factory' (default: %(default)s)",
    )
    p.add_argument(
        "--pattern", "-p", default=None, help="only paths matching this glob (default: all)"
    )
    p.add_argument(
        "--input-size",
        "-s",
        default=None,
        type=_input_size,
        help="C,H,W without batch, or S for 3,S,S (S token ids for a text model) (default: the "
        "model's own: 3,224,224 for most vision models, 16 tokens for a text model)",
    )
    p.add_argument(
        "--depth",
        "-d",
        type=int,
        default=None,
        help="only paths of at most D parts, 1 for the children of the model (default: all)",
    )
    p.add_argument(
        "--stages",
        action="store_true",
        help="only the multi-scale stages, as featwrap.stages gives them (default: all layers)",
    )
    p.add_argument(
        "--paths-only",
        action="store_true",
        help="path and module type only, without a dry run (default: the full table)",
    )
    p.add_argument(
        "--weights",
        default="none",
        help="'none' (random), 'pretrained', a torchvision weights name or a checkpoint "
        "(default: %(default)s)",
    )
    p.set_defaults(func=run)


def _input_size(text: str) -> tuple[int, ...] | int:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: use C,H,W (e.g. 3,224,224) or one number S for 3,S,S"
        )
    return dims[0] if len(dims) == 1 else dims  # S: (3, S, S), or S tokens for a text model


def run(args: argparse.Namespace) -> int:
    from featwrap.hub import load_model

    model = load_model(args.model, weights=args.weights).model
    if args.paths_only:
        return _paths_only(model, args)
    from featwrap.layer_summary import summary
    from featwrap.layers import Capture
    from featwrap.multiscale import stages

    layers = None
    if args.stages:
        found = stages(model, input_size=args.input_size)
        layers = [s.path if isinstance(s, Capture) else s.removesuffix(":input") for s in found]
    try:
        table = summary(
            model, args.input_size, pattern=args.pattern, depth=args.depth, layers=layers
        )
    except LayerNotFoundError as error:  # no path matches --pattern / --depth
        raise _no_match(args) from error
    print(table)
    return 0


def _paths_only(model: object, args: argparse.Namespace) -> int:
    from featwrap.layers import list_layers

    paths = list_layers(model, args.pattern)  # type: ignore[arg-type]
    if args.depth is not None:
        paths = [p for p in paths if p.count(".") < args.depth]
    if not paths:
        raise _no_match(args)
    rows = [(p, type(model.get_submodule(p)).__name__) for p in paths]  # type: ignore[attr-defined]
    print("\n".join(table([("path", "module"), *rows])))
    return 0


def _no_match(args: argparse.Namespace) -> FeatwrapValueError:
    depth = f" with --depth {args.depth}" if args.depth is not None else ""
    return FeatwrapValueError(
        f"No layer of {args.model} matches --pattern {args.pattern!r}{depth}. "
        f"`featwrap layers {args.model} --paths-only` lists every path."
    )

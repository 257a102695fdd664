"""``featwrap layers MODEL``: the layer paths of a model, to pass to FeatureModel."""

from __future__ import annotations

import argparse

from featwrap.hub import load_model
from featwrap.layers import list_layers

HELP = "list a model's layer paths (the names FeatureModel takes)"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("layers", help=HELP, description=HELP)
    p.add_argument(
        "model",
        nargs="?",
        default="torchvision:resnet18",
        help="'torchvision:NAME', 'timm:NAME' or 'package.module:factory' (default: %(default)s)",
    )
    p.add_argument("--pattern", "-p", default=None, help="only paths matching this glob")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model).model
    paths = list_layers(model, args.pattern)
    if not paths:
        print(f"No layer of {args.model} matches {args.pattern!r}.")
        return 1
    width = max((len(p) for p in paths), default=4)
    print(f"{'path':<{width}}  module")
    for path in paths:
        module = model.get_submodule(path)
        print(f"{path:<{width}}  {type(module).__name__}")
    return 0

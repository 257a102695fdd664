"""``featwrap extract``: a model's features over a dataset, streamed to disk, resumable.

With no arguments it runs the seed scenario: torchvision's resnet18, layers maxpool,
layer3.0.downsample.1, avgpool and logits, over the sample images shipped with featwrap, into
``./features``. Run it under ``torchrun --nproc_per_node N -m featwrap extract ...`` to split the
work between processes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from featwrap._options import OnError, Pooling
from featwrap.cli._parsing import WordList, add_command
from featwrap.errors import FeatwrapError

HELP = "extract layers' features over a dataset to safetensors (resumable, torchrun-ready)"

DEFAULT_MODEL = "torchvision:resnet18"
DEFAULT_LAYERS = ["maxpool", "layer3.0.downsample.1", "avgpool", "logits"]


EXAMPLES = (
    "featwrap extract                     # the seed scenario: resnet18 over the sample images",
    "featwrap extract --model timm:resnet18 --data photos/ --layers layer4 fc --pool avg",
    "featwrap extract --layers maxpool,avgpool --out features --dtype float16",
    "torchrun --nproc_per_node 2 -m featwrap extract --data photos/ --out features",
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = add_command(sub, "extract", HELP, EXAMPLES)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    p.add_argument(
        "--weights",
        default="auto",
        help="'auto' (pretrained when cached locally, else random, seeded), 'none', a weights "
        "name ('DEFAULT') or a checkpoint file (default: %(default)s)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        action=WordList,
        default=DEFAULT_LAYERS,
        metavar="LAYER",
        help="layer paths or globs, as several words or comma-separated; 'logits' is the "
        "model's output (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="a folder of images (recursive; flat or one subfolder per class), one image, or "
        "webdataset-style tar shards ('shards/shard-{000..099}.tar', read shard by shard) "
        "(default: the sample images shipped with featwrap)",
    )
    p.add_argument("--out", default="features", help="output directory (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="samples per forward (default: %(default)s)"
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader worker processes (default: auto, from the CPU count)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="'cpu', 'cuda', 'cuda:1'... (default: auto, a GPU when there is one)",
    )
    p.add_argument(
        "--pool",
        nargs="+",
        action=WordList,
        default=["none"],
        metavar="POOL",
        help=f"{'|'.join(Pooling.choices())} for every layer, and/or LAYER=POOL entries, as "
        "several words or comma-separated ('avg logits=none') (default: %(default)s)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize and center-crop images to this size (default: the model's own, else 224)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        help="store floating features as this dtype, e.g. float16 (default: as computed)",
    )
    p.add_argument(
        "--autocast",
        default=None,
        choices=("bfloat16", "float16"),
        help="run the forwards under autocast (mixed precision) in this dtype "
        "(default: the model's own dtype, no autocast)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="model and images in channels_last format (default: off)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model's forward (default: off)"
    )
    p.add_argument(
        "--on-error",
        choices=OnError.choices(),
        default=OnError.FAIL.value,
        help="an unreadable image: stop, naming it, or skip it, recorded in the manifest "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        help="rows per shard, the unit written and resumed (default: %(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output written with other arguments (default: refuse)",
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar, no summary (default: shown)"
    )
    p.set_defaults(func=run)


def parse_pool(words: list[str], layers: list[str]) -> str | dict[str, str]:
    """``["avg"]`` -> ``"avg"``; ``["avg", "logits=none"]`` -> ``{every layer: avg, logits: none}``.

    Names are checked by :func:`featwrap.extract` (close matches for typos)."""
    default, per_layer = "none", {}
    for part in words:
        key, eq, value = part.rpartition("=")
        if eq:
            per_layer[key] = value
        else:
            default = value
    if not per_layer:
        return default
    return {key: per_layer.get(key, default) for key in layers} | per_layer


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except FeatwrapError as error:
        error.args = (cli_words(str(error)),)  # the same error, told in the command's words
        raise


def cli_words(message: str) -> str:
    """A library message told in command-line words: ``overwrite=True (--overwrite)`` becomes
    ``--overwrite``.

    >>> cli_words("pass overwrite=True (--overwrite) or on_error='skip' (--on-error skip)")
    'pass --overwrite or --on-error skip'
    >>> cli_words("resize them (image_size=, --image-size)")
    'resize them (--image-size)'
    """
    message = _BOTH.sub(r"\1", message)
    return _BOTH_LISTED.sub(r"\1", message)


# ``name=value (--flag value)`` and ``name=, --flag``
_BOTH = re.compile(r"\b[a-z_]+=[^\s,()]* \((--[a-z-]+(?: [^\s)]+)?)\)")
_BOTH_LISTED = re.compile(r"\b[a-z_]+=, (--[a-z-]+)")


def _run(args: argparse.Namespace) -> int:
    from featwrap.assets import sample_dir
    from featwrap.extraction import extract
    from featwrap.extraction.errors import ResumeWarning
    from featwrap.extraction.store import Output
    from featwrap.hub import load_model_noted

    rank = int(os.environ.get("RANK", "0"))
    say = _printer(args.quiet or rank != 0)
    layers = list(args.layers)
    loaded, note = load_model_noted(args.model, args.weights)
    if note:
        say(f"featwrap: {note}")
    data = args.data if args.data is not None else sample_dir()
    say(f"Extracting {', '.join(layers)} of {loaded.name} ({loaded.weights}) from {data}")
    output = Output(Path(args.out))
    complete_before = output.manifest.is_file()
    if output.run_json.is_file():
        done = len(list(output.shards.glob("*.json")))
        say(f"Resuming the run in {args.out}: {done} shards were already written.")
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", ResumeWarning)
            features = extract(
                loaded,
                data,
                layers,
                out=args.out,
                pool=parse_pool(args.pool, layers),
                dtype=args.dtype,
                device=args.device,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                image_size=args.image_size,
                on_error=args.on_error,
                shard_size=args.shard_size,
                overwrite=args.overwrite,
                progress=False if args.quiet else None,
                autocast=args.autocast,
                channels_last=args.channels_last,
                compile=args.compile,
            )
    except KeyboardInterrupt:
        print(
            f"featwrap extract: interrupted. The shards written so far are kept in {args.out}; "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    for caught in notes or []:
        if issubclass(caught.category, ResumeWarning):
            say(f"featwrap: {cli_words(str(caught.message))}")
        else:
            warnings.showwarning(caught.message, caught.category, caught.filename, caught.lineno)
    if complete_before and not args.overwrite:
        say(f"{args.out} already holds this extraction: nothing was computed again.")
    say(features.summary())
    if features.skipped:
        say(f"Skipped {len(features.skipped)} unreadable samples (listed in manifest.json):")
        for s in features.skipped[:5]:
            say(f"  {s['id']}: {s['error']}")
    say(
        f"{len(features.ids)} rows in {args.out}/ (features.safetensors, manifest.json); "
        f"load them with featwrap.load_features({args.out!r})."
    )
    return 0


def _printer(quiet: bool) -> Any:
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stdout, flush=True)

    return say

"""What every subcommand's parser shares: list options, the help layout and its examples.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> _ = parser.add_argument("--layers", nargs="+", action=WordList, default=["fc"])
>>> parser.parse_args(["--layers", "layer1", "layer2,avgpool"]).layers
['layer1', 'layer2', 'avgpool']
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["WordList", "add_command"]


class WordList(argparse.Action):
    """A list option that takes several words, commas, or both: ``--layers a b``,
    ``--layers a,b`` and ``--layers a,b c`` all give ``["a", "b", "c"]``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = [values] if isinstance(values, str) else list(values or [])
        items = [part.strip() for word in words for part in str(word).split(",") if part.strip()]
        if not items:
            parser.error(f"{option_string} needs at least one value")
        setattr(namespace, self.dest, items)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; lists default values as they are given on the line."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text and isinstance(action.default, list) and "%(default)" in text:
            text = text.replace("%(default)s", " ".join(map(str, action.default)))
        return text


def add_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help: str,
    examples: Sequence[str],
) -> argparse.ArgumentParser:
    """The parser of ``featwrap NAME``: its one-line help, and examples after the options."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=epilog, formatter_class=_Formatter
    )
    return parser

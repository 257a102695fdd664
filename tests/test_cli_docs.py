"""docs/cli.md names every option of every ``featwrap`` command, in the command's own section,
and every option's ``--help`` says its default (issue 14: ``--shard-size`` was missing)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from featwrap.cli import COMMANDS, build_parser

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _section(name: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    found = re.search(rf"^## `featwrap {name}`\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert found is not None, f"docs/cli.md has no section '## `featwrap {name}`'"
    return found.group(1)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_in_its_section_of_the_cli_page(name: str) -> None:
    section = _section(name)
    missing = [
        a.option_strings[-1]
        for a in _options(_commands()[name])
        if not any(re.search(rf"`{re.escape(o)}[` =]", section) for o in a.option_strings)
    ]
    assert missing == [], f"options of `featwrap {name}` that docs/cli.md does not name"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_says_its_default(name: str) -> None:
    silent = [
        a.option_strings[-1] for a in _options(_commands()[name]) if "default" not in (a.help or "")
    ]
    assert silent == [], f"options of `featwrap {name}` whose --help gives no default"


def test_the_check_sees_a_missing_option() -> None:
    """Not vacuous: an option the page does not name is found."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard-size", help="rows (default: 1024)")
    parser.add_argument("--not-documented-anywhere", help="x (default: 1)")
    section = _section("extract")
    names = [a.option_strings[-1] for a in _options(parser)]
    assert [n for n in names if f"`{n}" not in section] == ["--not-documented-anywhere"]

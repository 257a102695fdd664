"""docs/architecture.md names every module of the package, and its core stack is the order that
tests/test_structure.py enforces (so that the page a newcomer reads is the rule the tests check)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_structure import CORE

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"


def _diagram() -> str:
    text = PAGE.read_text(encoding="utf-8")
    found = re.search(r"^```text\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert found is not None, "docs/architecture.md has no ```text diagram"
    return found.group(1)


def _core_lines(diagram: str) -> list[str]:
    """The first word of each line of the core stack, top to bottom."""
    block = diagram.split("core, top to bottom", 1)[1].split("\n  |", 1)[0]
    return [m.group(1) for m in re.finditer(r"^  (\w+)\s", block, re.MULTILINE)]


def test_the_diagram_names_every_module() -> None:
    diagram = _diagram()
    package = ROOT / "featwrap"
    names = sorted(
        p.stem if p.is_file() else p.name + "/"
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
        or (p.is_dir() and (p / "__init__.py").exists() and p.name != "assets")
    )
    missing = [n for n in names if not re.search(rf"(?<![\w/]){re.escape(n)}(?![\w])", diagram)]
    assert missing == [], "modules that docs/architecture.md does not place"


def test_the_core_stack_is_the_enforced_order() -> None:
    expected = [name.removeprefix("featwrap.") for name in reversed(CORE)]
    assert _core_lines(_diagram()) == expected


def test_the_core_reader_sees_a_wrong_order() -> None:
    """Not vacuous: two lines swapped are found."""
    diagram = _diagram().replace("  model ", "  MODEL ").replace("  info ", "  model ")
    assert _core_lines(diagram)[:2] == ["MODEL", "model"]

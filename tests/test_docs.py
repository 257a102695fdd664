"""Every code block of the documentation runs, so the docs cannot rot.

For each page of docs/ (one test per page), in page order and in one namespace:

* a ```` ```python ```` block is executed; ``--8<-- "path"`` lines (pymdownx.snippets) are
  replaced by the file they include, as the site does. When the block right after it is a
  ```` ```text ```` block, that block must equal what the python block printed.
* a ```` ```console ```` block holds ``$ featwrap ...`` commands, each followed by its output:
  the command is run in-process and must print exactly that.
* in a ```` ```bash ```` block, lines starting with ``featwrap `` are run and must succeed; the
  other shell lines (installing, building the site, torchrun) are what .ci/run and the recipe
  tests run.
* a python block preceded by ``<!-- no-run: REASON -->`` is not run; the reason is required.
* a page that starts with ``<!-- requires: PACKAGE -->`` (an optional dependency, installed in
  the dev group) is skipped where that package is not installed.
* the ``>>>`` examples of the docstrings that docs/api.md renders run as doctests.

Code and output blocks stay within 80 columns (snippets included), the width the site shows
without a scroll bar.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import inspect
import io
import linecache
import re
import shlex
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from featwrap.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
WIDTH = 80

FENCE = re.compile(
    r"(?:^<!--\s*no-run:(?P<reason>[^>]*)-->[ \t]*\n)?"
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
REQUIRES = re.compile(r"\A<!--\s*requires:\s*(?P<package>[\w.]+)\s*-->")
SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"(?P<path>[^"]+)"[ \t]*$', re.MULTILINE)


@dataclass
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    skip_reason: str | None
    end: int  # offset just after the closing fence
    start: int


def blocks(text: str) -> list[Block]:
    found = []
    for m in FENCE.finditer(text):
        info = m["info"].strip()
        language = info.split()[0].strip("{}.") if info else ""
        body = textwrap.dedent(m["body"]) if m["indent"] else m["body"]
        line = text.count("\n", 0, m.start("indent")) + 1
        found.append(Block(language, body, line, m["reason"], m.end(), m.start()))
    return found


def include_snippets(code: str) -> str:
    return SNIPPET.sub(lambda m: (ROOT / m["path"]).read_text(), code)


def run_python(code: str, filename: str, namespace: dict[str, object]) -> str:
    """Execute ``code``; what it printed. Tracebacks show the block's lines."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, filename, "exec"), namespace)
    return out.getvalue()


def run_featwrap(command: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(shlex.split(command)[1:])
    return code, out.getvalue()


def same_lines(actual: str, expected: str) -> bool:
    return [s.rstrip() for s in actual.strip("\n").splitlines()] == [
        s.rstrip() for s in expected.strip("\n").splitlines()
    ]


def console_commands(code: str) -> list[tuple[str, str]]:
    """``[(command, expected output)]`` of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"console block line {line!r} comes before any `$ ` command")
    return [(cmd, "\n".join(out)) for cmd, out in pairs]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_code_blocks_run(page: Path) -> None:
    text = page.read_text()
    required = REQUIRES.match(text)
    if required:
        pytest.importorskip(required["package"])
    found = blocks(text)
    # a real module, so that dataclasses, pickle and typing find the page's definitions
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    sys.modules[module.__name__] = module
    namespace: dict[str, object] = module.__dict__
    where = page.relative_to(ROOT)
    for i, block in enumerate(found):
        label = f"{where}:{block.line}"
        if block.language in ("python", "py"):
            if block.skip_reason is not None:
                assert block.skip_reason.strip(), f"{label}: no-run needs a reason"
                continue
            printed = run_python(include_snippets(block.code), f"<{label}>", namespace)
            following = found[i + 1] if i + 1 < len(found) else None
            if (
                following is not None
                and following.language == "text"
                and not text[block.end : following.start].strip()
            ):
                assert same_lines(printed, following.code), (
                    f"{label}: printed\n{printed}\nbut the page shows\n{following.code}"
                )
        elif block.language == "console":
            for command, expected in console_commands(block.code):
                assert command.startswith("featwrap "), f"{label}: only featwrap commands run"
                code, printed = run_featwrap(command)
                assert code == 0, f"{label}: `{command}` exited with {code}"
                assert same_lines(printed, expected), (
                    f"{label}: `{command}` printed\n{printed}\nbut the page shows\n{expected}"
                )
        elif block.language == "bash":
            for line in block.code.splitlines():
                command = line.split("#", 1)[0].strip()
                if command.startswith(("featwrap ", "uv run featwrap ")):
                    code, _ = run_featwrap(command.removeprefix("uv run "))
                    assert code == 0, f"{label}: `{command}` exited with {code}"
        else:
            assert block.skip_reason is None, f"{label}: no-run only applies to python blocks"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_code_fits_the_page_width(page: Path) -> None:
    too_long = [
        f"{page.relative_to(ROOT)}:{block.line}: {len(line)} columns: {line[:40]}..."
        for block in blocks(page.read_text())
        for line in include_snippets(block.code).splitlines()
        if len(line) > WIDTH
    ]
    assert not too_long, "\n".join(too_long)


def documented_objects() -> list[tuple[str, object]]:
    """The objects of the ``::: name`` directives of docs/api.md, imported."""
    found = []
    for name in re.findall(r"^::: ([\w.]+)", (DOCS / "api.md").read_text(), re.MULTILINE):
        module_name, _, attr = name.rpartition(".")
        try:
            found.append((name, importlib.import_module(name)))
        except ModuleNotFoundError:
            found.append((name, getattr(importlib.import_module(module_name), attr)))
    return found


def test_api_reference_examples_run() -> None:
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    report: list[str] = []
    for name, obj in documented_objects():
        if not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # a type alias: no docstring examples
        for test in finder.find(obj, name, module=inspect.getmodule(obj)):
            runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert runner.tries > 0  # the FeatureModel and list_layers examples at least


def test_every_page_is_in_the_nav() -> None:
    """mkdocs --strict warns about pages left out of the nav; catch it here too, with a name."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert str(page.relative_to(DOCS)) in nav, f"{page} is not in mkdocs.yml's nav"


def test_the_parser_finds_blocks() -> None:
    """The block finder itself: indented blocks, markers, snippets."""
    text = (
        "x\n\n```python\na = 1\n```\n\n<!-- no-run: needs a GPU -->\n```python\nb\n```\n\n"
        '!!! note\n    ```python\n    c = 2\n    ```\n\n```python\n--8<-- "examples/x.py"\n```\n'
    )
    found = blocks(text)
    assert [(b.language, b.code, b.skip_reason) for b in found[:3]] == [
        ("python", "a = 1\n", None),
        ("python", "b\n", " needs a GPU "),
        ("python", "c = 2\n", None),
    ]
    assert [b.line for b in found] == [3, 8, 13, 17]
    assert include_snippets('--8<-- "mkdocs.yml"\n').startswith("site_name: featwrap")

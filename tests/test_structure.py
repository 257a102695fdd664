"""The package's shape: no import cycles, a one-way flow from the API down to the capture core,
no function hiding its module, and a public API that is exported and documented in full.

Imports are read from the source (every ``import`` statement, those inside functions included,
those under ``if TYPE_CHECKING:`` left out, since they never run), so that a cycle hidden by an
import inside a function is found too. See docs/architecture.md for the layers.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import featwrap

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "featwrap"

#: The core, bottom to top: each may import only the ones before it. Everything else (datasets,
#: pictures, model loading, the command line) is built on the core and never imported by it.
CORE = [
    "featwrap._version",
    "featwrap.errors",
    "featwrap._text",
    "featwrap._options",
    "featwrap._tree",
    "featwrap._modes",
    "featwrap._layout",
    "featwrap._twins",
    "featwrap.maps",
    "featwrap._capture",
    "featwrap.edit",
    "featwrap.layers",
    "featwrap._dryrun",
    "featwrap.training",
    "featwrap.info",
    "featwrap.model",
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def imports_of(name: str, path: Path) -> set[str]:
    """The featwrap modules that running ``name`` imports (at the top or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in MODULES else base)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = (
        "def f():\n    from featwrap import model\nif TYPE_CHECKING:\n    import featwrap.hub\n"
    )
    probe = PACKAGE / "_probe_for_test.py"
    try:
        probe.write_text(source, encoding="utf-8")
        MODULES["featwrap._probe_for_test"] = probe
        assert imports_of("featwrap._probe_for_test", probe) == {"featwrap.model"}
    finally:
        MODULES.pop("featwrap._probe_for_test", None)
        probe.unlink()


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == [], "import cycles (each list is one cycle's modules)"


def test_the_core_imports_only_the_layers_below_it() -> None:
    """A core module imports core modules below it, or private helpers (``featwrap._x``) not
    listed in CORE (the cycle test covers those); never the features built on the core."""
    wrong = []
    for i, name in enumerate(CORE):
        if name not in MODULES:
            continue
        allowed = set(CORE[:i]) | {m for m in MODULES if _is_private_helper(m)}
        wrong += [f"{name} imports {m}" for m in sorted(GRAPH[name]) if m not in allowed]
    assert wrong == [], (
        "the core imports a module above it; move the import up, or list a new core module in "
        "CORE at its level (docs/architecture.md)"
    )


def _is_private_helper(name: str) -> bool:
    parts = name.split(".")
    private = parts[-1].startswith("_") and not parts[-1].startswith("__")
    return len(parts) == 2 and private and name not in CORE


def test_no_function_hides_its_module() -> None:
    for name in MODULES:
        if name.endswith(".__main__"):  # importing it runs the command line
            continue
        module = importlib.import_module(name)
        parent, _, short = name.rpartition(".")
        if parent:
            attribute = getattr(importlib.import_module(parent), short)
            assert attribute is module, f"{parent}.{short} is {attribute!r}, not the module"


def test_no_test_hooks_in_the_package() -> None:
    """Tests kill, slow or break the library from their side (tests/kill_points.py patches the
    functions it kills in); the package reads no test switch from the environment."""
    for name, path in MODULES.items():
        text = path.read_text()
        assert "FEATWRAP_TEST" not in text, f"{name} reads a test switch"
        assert "_testing" not in text, f"{name} calls a test hook"


def test_every_public_name_is_exported_and_importable() -> None:
    assert len(set(featwrap.__all__)) == len(featwrap.__all__)
    for name in featwrap.__all__:
        assert getattr(featwrap, name) is not None
    namespace: dict[str, object] = {}
    exec("from featwrap import *", namespace)
    assert set(featwrap.__all__) <= set(namespace)


def test_every_public_name_has_a_home_and_a_type_checking_import() -> None:
    init = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    checked = init[init.index("if TYPE_CHECKING:") : init.index("_HOMES")]
    for name in featwrap.__all__:
        if name == "__version__":
            continue
        home = featwrap._HOMES[name]
        assert getattr(importlib.import_module(home), name) is getattr(featwrap, name)
        assert re.search(rf"\b{name}\b", checked), f"{name} is not imported under TYPE_CHECKING"
    assert set(featwrap._HOMES) == set(featwrap.__all__) - {"__version__"}


def test_every_public_name_is_in_the_api_reference() -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"^::: featwrap\.(?:[\w.]+\.)?(\w+)\s*$", page, re.MULTILINE))
    for block in re.findall(r"members: \[([^\]]*)\]", page):
        rendered |= {m.strip() for m in block.split(",")}
    missing = [n for n in featwrap.__all__ if n != "__version__" and n not in rendered]
    assert missing == [], "public names that docs/api.md does not render"


def _modules_loaded_by(code: str) -> list[str]:
    """The heavy third-party packages in ``sys.modules`` after running ``code`` in a fresh
    interpreter."""
    script = (
        "import contextlib, io, sys\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "heavy = ('torch', 'torchvision', 'timm', 'matplotlib', 'numpy', 'PIL')\n"
        + "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return result.stdout.split()


def test_import_featwrap_and_the_command_lines_help_load_no_heavy_module() -> None:
    assert _modules_loaded_by("import featwrap") == []
    for command in (
        [],
        ["--help"],
        ["extract", "--help"],
        ["layers", "--help"],
        ["show", "--help"],
    ):
        code = f"from featwrap.cli import main\nmain({command!r})"
        assert _modules_loaded_by(code) == [], command


def test_a_public_name_loads_what_it_needs() -> None:
    """The check above is not vacuous: the same probe sees torch once a name is used."""
    assert "torch" in _modules_loaded_by("import featwrap\nfeatwrap.FeatureModel")


@pytest.mark.parametrize(
    "module", ["featwrap._text", "featwrap._options", "featwrap._modes", "featwrap.cli._parsing"]
)
def test_the_helpers_docstring_examples(module: str) -> None:
    import doctest

    result = doctest.testmod(importlib.import_module(module), raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0

"""A previous release of featwrap, loaded from git beside today's, to time both in one run.

``python -m benchmarks --against f7eef22`` adds to every case that times featwrap a method
``featwrap @ f7eef22``: the ``featwrap`` package of that commit, taken with ``git archive``, renamed
``featwrap_prev`` (its own imports rewritten to match) and imported next to today's package. Each
has its own copy of the backbone, as every method does; the runner checks its output against the
reference before timing it, like any other method.

>>> rewrite_imports("from featwrap.errors import FeatwrapError\\nimport featwrap._tree as t\\n")
'from featwrap_prev.errors import FeatwrapError\\nimport featwrap_prev._tree as t\\n'
"""

from __future__ import annotations

import atexit
import importlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from featwrap.errors import FeatwrapValueError

__all__ = ["PACKAGE", "Previous", "load_previous", "rewrite_imports"]

#: The name the previous release is imported under.
PACKAGE = "featwrap_prev"

#: ``from featwrap...`` / ``import featwrap...`` at the start of a line, and string literals that
#: are a module path of the package (``"featwrap.model"``, ``f"featwrap.cli.{name}"``: the names
#: given to ``importlib.import_module``), not messages that mention one.
_IMPORT = re.compile(r"^(\s*(?:from|import)\s+)featwrap(?=[\s.])", re.MULTILINE)
_MODULE_NAME = re.compile(r"""((?<![\w])f?["'])featwrap(?=\.[\w.{}]*["'])""")

_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Previous:
    """A previous release, imported: its commit and the package (``FeatureModel`` in it)."""

    rev: str  # as the user gave it (e.g. ``f7eef22``)
    commit: str  # the full hash
    summary: str  # ``<short hash> (<date>): <subject>``
    version: str  # its ``featwrap.__version__``
    package: ModuleType

    @property
    def name(self) -> str:
        """The method's name in the tables: ``featwrap@<rev>``."""
        return f"featwrap@{self.rev}"

    @property
    def label(self) -> str:
        """The method's label in the report: ``featwrap @ <rev>``."""
        return f"featwrap @ {self.rev}"


_LOADED: dict[str, Previous] = {}


def rewrite_imports(source: str, package: str = PACKAGE) -> str:
    """``source`` with its imports of ``featwrap`` turned into imports of ``package``."""
    source = _IMPORT.sub(lambda m: m.group(1) + package, source)
    return _MODULE_NAME.sub(lambda m: m.group(1) + package, source)


def load_previous(rev: str, repo: Path = _ROOT, package: str = PACKAGE) -> Previous:
    """Import the ``featwrap`` package of commit ``rev`` as ``package`` (once per process).

    Args:
        rev: a commit of the repository (hash, tag, ``main~3``).
        repo: the git checkout to read it from (this repository by default).
        package: the name to import it under.

    Raises:
        FeatwrapValueError: git is missing, ``rev`` is not a commit of ``repo``, the commit has
            no ``featwrap`` package, another revision was loaded already, or it fails to import.
    """
    commit = _git(repo, rev, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    loaded = _LOADED.get(package)
    if loaded is not None:
        if loaded.commit == commit:
            return loaded
        raise FeatwrapValueError(
            f"--against {rev!r}: {loaded.rev!r} is loaded already as {package}; one previous "
            "release per process. Run the benchmarks again for the other one."
        )
    summary = _git(repo, rev, "show", "-s", "--format=%h (%cs): %s", commit).strip()
    archive = _git_bytes(repo, rev, "archive", "--format=tar", commit, "featwrap")
    folder = Path(tempfile.mkdtemp(prefix="featwrap-prev-"))
    atexit.register(shutil.rmtree, folder, True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "featwrap").rename(folder / package)
    for path in (folder / package).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(rewrite_imports(text, package), encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(package)
        importlib.import_module(f"{package}.model")
    except Exception as error:
        raise FeatwrapValueError(
            f"--against {rev!r}: its featwrap package fails to import here "
            f"({type(error).__name__}: {error}). Pick a commit whose featwrap runs with today's "
            "environment."
        ) from error
    finally:
        sys.path.remove(str(folder))
    if not str(Path(module.__file__ or "")).startswith(str(folder)):
        raise FeatwrapValueError(
            f"--against {rev!r}: {package} was imported from {module.__file__}, not from the "
            f"commit's archive. Remove that {package} from the path."
        )
    version = str(getattr(module, "__version__", "unknown"))
    previous = Previous(rev, commit, summary, version, module)
    _LOADED[package] = previous
    return previous


def _git_bytes(repo: Path, rev: str, *args: str) -> bytes:
    git = shutil.which("git")
    if git is None:
        raise FeatwrapValueError(
            f"--against {rev!r} needs git on the PATH to read the commit. Install git, or run "
            "without --against."
        )
    done = subprocess.run([git, "-C", str(repo), *args], capture_output=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise FeatwrapValueError(
            f"--against {rev!r}: not a commit with a featwrap package in {repo}"
            + (f" ({detail[0]})" if detail else "")
            + ". Give a commit hash or tag of this repository (`git log --oneline`)."
        )
    return done.stdout


def _git(repo: Path, rev: str, *args: str) -> str:
    return _git_bytes(repo, rev, *args).decode()

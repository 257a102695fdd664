"""``python -m benchmarks --against REV``: a previous release's featwrap, loaded from git, timed
in the same rounds as today's.

The releases here are made in a temporary git repository (a copy of today's package, and a
package that returns wrong features), so the tests need git but no particular history; the
command-line test uses this checkout's ``HEAD``. The previous release's output is checked by the
harness against its independent reference (cloning hooks); no speed figure is asserted.
"""

from __future__ import annotations

import doctest
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import featwrap
from benchmarks import Settings
from benchmarks import methods as m
from benchmarks import previous as prev
from benchmarks.__main__ import main
from benchmarks.cases import Case, Setup
from benchmarks.report import markdown
from benchmarks.runner import BenchResults, Environment, add_previous, run_case
from featwrap.errors import FeatwrapValueError
from tests.reference import reference

TINY = Settings(rounds=5, budget_s=0.05, min_sample_s=0.0005, warmup=1)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _commit(repo: Path, package: Path | None, files: dict[str, str]) -> str:
    """Commit a ``featwrap`` folder: a copy of ``package`` (if given) with ``files`` written over."""
    target = repo / "featwrap"
    if target.exists():
        shutil.rmtree(target)
    if package is not None:
        shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text, encoding="utf-8")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a release")
    return _git(repo, "rev-parse", "--short", "HEAD")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A git repository with two releases: today's package, and one whose features are off by 1."""
    repo = tmp_path_factory.mktemp("releases")
    _git(repo, "init", "-q")
    same = _commit(repo, Path(featwrap.__file__).parent, {})
    wrong = _commit(
        repo,
        None,
        {
            "__init__.py": '__version__ = "0.0.1"\nfrom featwrap.model import FeatureModel\n',
            "_offset.py": "OFFSET = 1.0\n",  # a module today's featwrap lacks: imports rewritten
            "model.py": WRONG_MODEL,
        },
    )
    return {"repo": str(repo), "same": same, "wrong": wrong}


WRONG_MODEL = '''
import torch
from torch import nn
from featwrap._offset import OFFSET


class FeatureModel(nn.Module):
    """Features off by OFFSET (a release with a bug)."""

    def __init__(self, backbone, layers, *, output_key="logits"):
        super().__init__()
        self.backbone, self.found, self.output_key = backbone, {}, output_key
        for path, key in layers.items():
            backbone.get_submodule(path).register_forward_hook(self._hook(key))

    def _hook(self, key):
        def hook(module, args, output):
            self.found[key] = output + OFFSET
        return hook

    def forward(self, x):
        out = {self.output_key: self.backbone(x)}
        out.update(self.found)
        self.found = {}
        return out
'''


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _case(previous: prev.Previous) -> Case:
    def build(settings: Settings) -> Setup:
        model = _tiny()
        x = torch.randn(5, 4)
        with torch.no_grad():
            logits, calls = reference(model, ["0"], x)  # tests/reference.py: independent hooks
        expected = {"logits": logits, "hidden": calls["0"][0]}
        methods = [m.plain(model, "logits"), m.featwrap(model, {"0": "hidden"}, "logits")]
        setup = Setup(x, expected, methods)
        add_previous(setup, previous)
        return setup

    return Case("tiny", "a tiny MLP", "test", build)


def test_rewrite_imports_only_touches_imports_of_featwrap() -> None:
    source = (
        "from featwrap import _tree\n"
        "from featwrap.errors import (\n    A,\n)\n"
        "    import featwrap.info as info\n"
        'importlib.import_module(f"featwrap.cli.{name}")\n'
        "homes = {'FeatureModel': 'featwrap.model'}\n"
        "import featwrapper\n"
        '"see featwrap.list_layers(model)"\n'
        "prog = 'featwrap'\n"
    )
    assert prev.rewrite_imports(source, "fp") == (
        "from fp import _tree\n"
        "from fp.errors import (\n    A,\n)\n"
        "    import fp.info as info\n"
        'importlib.import_module(f"fp.cli.{name}")\n'
        "homes = {'FeatureModel': 'fp.model'}\n"
        "import featwrapper\n"
        '"see featwrap.list_layers(model)"\n'
        "prog = 'featwrap'\n"
    )
    result = doctest.testmod(prev, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_a_release_from_git_is_checked_and_timed_beside_featwrap(
    releases: dict[str, str],
) -> None:
    previous = prev.load_previous(releases["same"], Path(releases["repo"]), "featwrap_prev_same")
    assert previous.package.FeatureModel is not featwrap.FeatureModel
    assert previous.package.__file__ != featwrap.__file__
    assert previous.version == featwrap.__version__
    assert prev.load_previous(releases["same"], Path(releases["repo"]), "featwrap_prev_same") is (
        previous
    )
    result = run_case(_case(previous), TINY)
    assert [r.name for r in result.methods] == ["plain", "featwrap", previous.name]
    then = result.method(previous.name)
    assert then is not None
    assert then.role == "previous"
    assert then.label == f"featwrap @ {releases['same']}"
    assert then.check.status == "equal"  # against the cloning-hook reference
    assert then.median_s is not None
    assert then.featwrap_vs is not None  # featwrap / previous, paired within rounds
    assert then.featwrap_vs_ci is not None
    assert result.problems == []
    env = Environment(
        "2026-01-01 00:00", "0.1.0", "2", "0.2", "1.0", "3.11", "a CPU", 1, "cpu", "c"
    )
    text = markdown(BenchResults(env, TINY, [result]), None)
    assert "## Against the previous release" in text
    assert f"| featwrap / {releases['same']} (95% interval) |" in text
    assert "the 95% interval holds 1.000 in" in text


def test_a_release_with_wrong_features_is_reported_and_not_timed(
    releases: dict[str, str],
) -> None:
    previous = prev.load_previous(releases["wrong"], Path(releases["repo"]), "featwrap_prev_wrong")
    assert previous.version == "0.0.1"
    assert previous.package._offset.__name__ == "featwrap_prev_wrong._offset"  # rewritten import
    result = run_case(_case(previous), TINY)
    then = result.method(previous.name)
    assert then is not None
    assert then.check.status == "wrong"
    assert "hidden" in then.check.detail
    assert then.median_s is None
    assert any("previous release" in p for p in result.problems)


def test_against_errors_name_the_revision_and_the_way_out(releases: dict[str, str]) -> None:
    repo = Path(releases["repo"])
    with pytest.raises(FeatwrapValueError, match=r"'nosuchrev'.*git log --oneline"):
        prev.load_previous("nosuchrev", repo, "featwrap_prev_none")
    with pytest.raises(FeatwrapValueError, match=r"one previous release per process"):
        prev.load_previous(releases["same"], repo, "featwrap_prev_wrong")


def test_cli_against_head_adds_the_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--against HEAD`` on this checkout (HEAD's featwrap: the same code, or nearly)."""
    md, js = tmp_path / "b.md", tmp_path / "b.json"
    args = ["--cases", "hooks-mlp-1", "--quick", "--rounds", "3", "--budget", "0.05"]
    code = main(
        [*args, "--device", "cpu", "--against", "HEAD", "--report", str(md), "--json", str(js)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "featwrap@HEAD" in out
    assert "against the previous release:\n  featwrap / HEAD over 1 case: median" in out
    data = json.loads(js.read_text())
    (case,) = data["results"]["cases"]
    checks = {mm["name"]: mm["check"]["status"] for mm in case["methods"]}
    assert checks["featwrap@HEAD"] == "equal"
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True
    ).stdout.strip()
    assert data["results"]["environment"]["previous"].startswith(head)
    assert data["results"]["environment"]["load_start"] is not None
    text = md.read_text()
    assert "## Against the previous release" in text
    assert "| load average (1 / 5 / 15 min) |" in text


def test_from_json_writes_the_same_report_without_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md, js, again = tmp_path / "b.md", tmp_path / "b.json", tmp_path / "again" / "b.md"
    args = ["--cases", "hooks-mlp-1", "hooks-mlp-4", "--quick", "--rounds", "3", "--budget", "0.05"]
    assert main([*args, "--device", "cpu", "--report", str(md), "--json", str(js)]) == 0
    assert main(["--from-json", str(js), "--report", str(again)]) == 0
    assert again.read_text() == md.read_text()
    assert (again.parent / "b.png").exists()
    capsys.readouterr()
    assert main(["--from-json", str(js)]) == 2
    assert "add --report PATH" in capsys.readouterr().err
    assert main(["--from-json", str(md), "--report", str(again)]) == 2
    assert "not the JSON of `python -m benchmarks --json`" in capsys.readouterr().err

"""The benchmark harness (benchmarks/, `python -m benchmarks`): checks, timing runner, memory, report, CLI.

No speed figure is asserted here: timing is driven by a fake clock, and the real timings live in
benchmarks/ and docs/benchmarks.md.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from benchmarks import CASES, Settings, select_cases
from benchmarks import methods as m
from benchmarks.__main__ import main
from benchmarks.cases import Case, Setup
from benchmarks.checks import compare
from benchmarks.goals import evaluate, hook_costs
from benchmarks.memory import measure
from benchmarks.report import write_report
from benchmarks.runner import (
    BenchResults,
    CaseResult,
    Environment,
    MethodResult,
    check_methods,
    run_case,
)
from benchmarks.timing import interleaved
from featwrap import FeatureModel
from featwrap.errors import FeatwrapValueError
from tests.reference import reference

TINY = Settings(rounds=5, budget_s=0.05, min_sample_s=0.0005, warmup=1)


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """As the bench runs: one torch thread (two threads on a busy 2-core machine crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the equality checks ----------------------------------------------------------------------------
def test_check_catches_fx_post_relu_bn1_and_passes_featwrap(resnet18) -> None:
    x = torch.randn(1, 3, 32, 32)
    logits, calls = reference(resnet18, ["bn1", "layer1"], x)  # tests/reference.py: independent
    expected = {"logits": logits, "bn1": calls["bn1"][0], "layer1": calls["layer1"][0]}
    keys = ["logits", "bn1", "layer1"]
    nodes = {"bn1": "bn1", "layer1": "layer1", "fc": "logits"}
    with torch.no_grad():
        fx_out = create_feature_extractor(resnet18, nodes)(x)
        fm = FeatureModel(resnet18, ["bn1", "layer1"])
        fm_outs = [fm(x) for _ in range(2)]
    fm.remove_hooks()
    check = compare(expected, fx_out, keys)
    assert check.status == "wrong"
    assert "bn1" in check.detail
    assert "in-place ReLU" in check.detail
    for out in fm_outs:
        assert compare(expected, out, keys).status == "equal"


def test_compare_statuses() -> None:
    a = torch.randn(2, 3)
    expected = {"logits": a, "f": a * 2}
    assert compare(expected, {"logits": a.clone(), "f": a * 2}, ["logits", "f"]).status == "equal"
    close = compare(expected, {"logits": a + 1e-7, "f": a * 2}, ["logits", "f"])
    assert close.status == "close"
    assert close.ok
    assert "logits" in close.detail
    wrong = compare(expected, {"logits": a + 0.5, "f": a * 2}, ["logits", "f"])
    assert wrong.status == "wrong"
    assert not wrong.ok
    assert "max |diff| 0.5" in wrong.detail
    assert compare(expected, {"logits": a}, ["logits", "f"]).status == "wrong"  # a key missing
    shape = compare(expected, {"logits": a, "f": a[:1]}, ["logits", "f"])
    assert shape.status == "wrong"
    assert "shape" in shape.detail
    extra = compare(expected, {"logits": a, "g": a}, ["logits", "g"])
    assert extra.status == "wrong"
    assert "'g'" in extra.detail


# -- a case with a peer that lies -------------------------------------------------------------------
def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _liar(model: nn.Module) -> m.Method:
    """A peer that runs a model with other weights: its features are wrong."""
    other = _tiny()
    with torch.no_grad():
        other[0].weight.add_(0.25)
    fx = create_feature_extractor(other, {"0": "hidden", "2": "logits"})
    return m.Method("liar", "peer", fx, dict, ("logits", "hidden"))


def _tiny_case(known_wrong: dict[str, str] | None = None) -> Case:
    def build(settings: Settings) -> Setup:
        model = _tiny()
        x = torch.randn(5, 4)
        layers = {"0": "hidden"}
        with torch.no_grad():
            logits, calls = reference(model, ["0"], x)
        expected = {"logits": logits, "hidden": calls["0"][0]}
        methods = [
            m.plain(model, "logits"),
            m.featwrap(model, layers, "logits"),
            m.fx(model, layers, "logits", "2"),
            _liar(model),
        ]
        return Setup(x, expected, methods)

    return Case("tiny", "a tiny MLP", "test", build, known_wrong=known_wrong or {})


def test_run_case_checks_first_and_does_not_time_a_wrong_peer() -> None:
    result = run_case(_tiny_case({"liar": "other weights"}), TINY)
    liar, fm, fx, plain = (result.method(n) for n in ("liar", "featwrap", "fx", "plain"))
    assert liar is not None
    assert fm is not None
    assert fx is not None
    assert plain is not None
    assert liar.check.status == "wrong"
    assert "hidden" in liar.check.detail
    assert liar.median_s is None
    assert liar.vs_baseline is None
    assert fm.check.status == fx.check.status == "equal"
    assert fm.median_s is not None
    assert fm.median_s > 0
    assert fm.vs_baseline is not None
    assert plain.vs_baseline == 1.0
    assert result.rounds >= 5
    assert result.problems == []


def test_run_case_reports_a_known_wrong_peer_that_is_right() -> None:
    result = run_case(_tiny_case({"liar": "other weights", "fx": "pretend"}), TINY)
    assert any("fx was expected to be wrong" in p for p in result.problems)


#: one case per kind of peer (the others build the same way; `pytest benchmarks/` runs them all)
REPRESENTATIVE = [
    "resnet18-inplace-64px-b1",  # FX and the blog recipe wrong (post-ReLU bn1), featwrap right
    "early-layer1-64px-b1",  # Lego truncation, IntermediateLayerGetter, early stop
    "hooks-mlp-16",  # empty hooks, FX on a Sequential
    "timm-vit-64px",  # timm forward_intermediates (NCHW view of the tokens)
    "timm-resnet50-stages-64px",  # timm features_only, IntermediateLayerGetter on timm
    "stack-vit-small-224px",  # early stop in an nn.Sequential, timm's stop_early
    "stack-gpt2-64tok",  # early stop in an nn.ModuleList, the hand-stopped loop
]


@pytest.mark.parametrize("case", select_cases(REPRESENTATIVE), ids=lambda c: c.id)
def test_cases_featwrap_right_and_peers_as_expected(case: Case) -> None:
    """The case builds; featwrap matches the reference, peers are wrong only where known."""
    setup = case.build(Settings())
    checks = check_methods(case, setup)
    assert checks["featwrap"].status == "equal", checks["featwrap"]
    for name, check in checks.items():
        assert check.status != "failed", (name, check)
        assert (check.status == "wrong") == (name in case.known_wrong), (name, check)


def test_case_selection() -> None:
    ids = [c.id for c in select_cases(["hooks-*"])]
    assert ids == ["hooks-mlp-1", "hooks-mlp-4", "hooks-mlp-16", "hooks-mlp-64", "hooks-mlp-all"]
    assert not any(c.compile for c in select_cases())
    assert any(c.compile for c in select_cases(compile=True))
    assert len(select_cases(quick=True)) < len(select_cases())
    assert len({c.id for c in CASES}) == len(CASES)
    with pytest.raises(FeatwrapValueError, match="Did you mean 'hooks-mlp-all'"):
        select_cases(["hooks-mlp-al"])


# -- the timing runner, on a fake clock --------------------------------------------------------------
def test_interleaved_pairs_rounds_and_shuffles() -> None:
    now = [0.0]
    calls: list[str] = []

    def work(name: str, cost: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            calls.append(name)
            now[0] += cost

        return run

    methods = {"a": work("a", 1.0), "b": work("b", 3.0), "c": work("c", 2.0)}
    t = interleaved(methods, rounds=9, min_sample_s=4.0, warmup=1, clock=lambda: now[0])
    assert t.number == 4  # the fastest call (1.0) takes 4 calls to fill a 4.0 sample
    assert t.rounds == 9
    assert all(len(s) == 9 for s in t.samples.values())
    assert t.ratio("b", "a") == 3.0
    assert t.ratio("c", "a") == 2.0
    assert t.difference("b", "a") == 2.0
    assert t.ratio_interval("b", "a") == (3.0, 3.0)
    timed = calls[3:]  # after one warm-up call each
    orders = {tuple(timed[i : i + 12 : 4]) for i in range(0, len(timed), 12)}
    assert len(orders) > 1  # the order changes between rounds


def test_interleaved_budget_limits_rounds() -> None:
    now = [0.0]

    def run() -> None:
        now[0] += 1.0

    t = interleaved(
        {"a": run}, rounds=100, min_rounds=3, min_sample_s=1.0, budget_s=10.0, clock=lambda: now[0]
    )
    assert t.rounds == 10


# -- memory -----------------------------------------------------------------------------------------
class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x)).flatten(1)


def test_memory_blog_retains_its_activation_featwrap_nothing() -> None:
    torch.manual_seed(0)
    model = _Conv().eval()
    x = torch.randn(2, 3, 16, 16)
    conv_bytes = 2 * 8 * 16 * 16 * 4  # the conv output, float32
    logits_bytes = 2 * 8 * 4
    blog = m.blog_hooks(model, {"conv": "conv"}, "logits")
    fm = m.featwrap(model, {"conv": "conv"}, "logits")
    plain = m.plain(model, "logits")
    uses = {}
    with torch.no_grad():
        for method in (blog, fm, plain):
            run = method.run
            assert run is not None
            for _ in range(2):
                run(x)
            uses[method.name] = measure(lambda run=run: run(x))  # type: ignore[misc]
    assert uses["blog"].retained == conv_bytes  # the global dict keeps the last activation
    assert uses["featwrap"].retained == 0
    assert uses["plain"].retained == 0
    assert uses["featwrap"].result == conv_bytes + logits_bytes
    assert uses["featwrap"].alive == conv_bytes + logits_bytes  # nothing beyond the result
    assert uses["plain"].result == logits_bytes
    assert uses["featwrap"].peak >= conv_bytes + logits_bytes


def test_memory_with_grad_counts_the_graph_and_frees_it() -> None:
    torch.manual_seed(0)
    model = _Conv().eval()
    x = torch.randn(2, 3, 16, 16)
    fm = m.featwrap(model, {"conv": "conv"}, "logits")
    run = fm.run
    assert run is not None
    for _ in range(2):
        run(x)
    use = measure(lambda: run(x))
    assert use.retained == 0
    assert use.held_by_graph >= 0
    assert use.alive >= use.result


# -- goals and the report ---------------------------------------------------------------------------
def _method(name: str, ratio: float, extra: float = 0.0, vs: float | None = None) -> MethodResult:
    from benchmarks.checks import Check

    return MethodResult(
        name,
        m.LABELS.get(name, name),
        "peer",
        Check("equal"),
        median_s=1e-3 * ratio,
        vs_baseline=ratio,
        vs_baseline_ci=(ratio - 0.01, ratio + 0.01),
        featwrap_vs=vs,
        extra_us=extra,
    )


def _synthetic(featwrap_ratio: float) -> BenchResults:
    cases = [
        CaseResult(
            "resnet18-32px-b1",
            "resnet18",
            "resnet18",
            "no_grad",
            "plain",
            0,
            [
                _method("plain", 1.0),
                _method("featwrap", featwrap_ratio),
                _method("fx", 1.0, vs=0.99),
            ],
            rounds=50,
            number=2,
        )
    ]
    for n in (1, 4, 16, 64, 256):
        cases.append(
            CaseResult(
                f"hooks-mlp-{n}",
                f"{n} hooked",
                "hooks",
                "no_grad",
                "plain",
                n,
                [
                    _method("plain", 1.0),
                    _method("featwrap", 1 + n / 500, extra=5.0 + 2.0 * n, vs=0.9),
                    _method("empty-hooks", 1 + n / 800, extra=1.6 * n),
                    _method("fx", 1 + n / 600, extra=40.0 + 1.0 * n),
                ],
                rounds=50,
                number=4,
            )
        )
    env = Environment(
        "2026-01-01 00:00", "0.1.0", "2", "0.2", "1.0", "3.11", "a CPU", 1, "cpu", "c"
    )
    return BenchResults(env, Settings(), cases)


def test_hook_costs_fit_the_sweep_and_goals_use_the_worst_case() -> None:
    results = _synthetic(1.03)
    costs = hook_costs(results)
    assert costs["featwrap"].per_layer_us == pytest.approx(2.0)
    assert costs["featwrap"].fixed_us == pytest.approx(5.0)
    assert costs["empty-hooks"].per_layer_us == pytest.approx(1.6)
    goals = {g.name.split(",")[0]: g for g in evaluate(results)}
    assert goals["featwrap / plain"].met is False
    assert goals["featwrap / plain"].measured.startswith("1.030")
    assert goals["featwrap / FX"].met is True  # 0.99 and 0.9
    assert goals["cost per hooked layer (featwrap - plain"].met is True  # 2.0 <= 2.0
    assert goals["torch.compile: compiled featwrap / compiled plain"].met is None
    assert evaluate(_synthetic(1.01))[0].met is True


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_writes_tables_and_a_png_of_the_expected_size(tmp_path: Path) -> None:
    md, png = write_report(_synthetic(1.03), tmp_path / "docs" / "benchmarks.md")
    assert png == tmp_path / "docs" / "benchmarks.png"
    assert _png_size(png) == (1100, 440)
    text = md.read_text()
    assert "| goal | target | measured (95% interval) | met | where |" in text
    assert (
        "| featwrap / plain, 3 layers + logits (resnet18) | <= 1.02 | 1.030 (1.020-1.040) | **no** |"
        in text
    )
    assert "![time against hooked layers, per method](benchmarks.png)" in text
    assert "### `hooks-mlp-16`" in text
    assert "| us per hooked layer |" in text
    assert "| featwrap | 2.00 | 5 | 1.25 |" in text  # 2.0 us per layer = 1.25 x the empty hook
    assert "2026-01-01 00:00" in text
    assert "a CPU" in text


# -- the command line -------------------------------------------------------------------------------
def test_cli_bench_runs_a_tiny_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md, js = tmp_path / "b.md", tmp_path / "b.json"
    args = ["--cases", "hooks-mlp-1", "--quick", "--rounds", "3", "--budget", "0.05"]
    code = main([*args, "--device", "cpu", "--report", str(md), "--json", str(js)])
    out = capsys.readouterr().out
    assert code == 0
    assert "hooks-mlp-1" in out
    assert "featwrap" in out
    assert "goals" in out
    assert md.exists()
    assert (tmp_path / "b.png").exists()
    data = json.loads(js.read_text())
    (case,) = data["results"]["cases"]
    checks = {mm["name"]: mm["check"]["status"] for mm in case["methods"]}
    assert checks["featwrap"] == "equal"
    assert checks["fx"] == "equal"
    assert data["results"]["environment"]["threads"] == 1


def test_cli_bench_list_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list", "--quick"]) == 0
    listed = capsys.readouterr().out
    assert "resnet18-32px-b1" in listed
    assert "resnet18-224px-b8" not in listed
    assert main(["--cases", "hooks-mlp-2"]) == 2
    err = capsys.readouterr().err
    assert "hooks-mlp-2" in err
    assert "Did you mean" in err
    assert "--list" in err
    if not torch.cuda.is_available():
        assert main(["--cases", "hooks-mlp-1", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_memory_measure_keeps_native_profiler_lines_out_and_restores_stderr(capfd) -> None:  # type: ignore[no-untyped-def]
    """torch.profiler's native start/stop lines ("USDT: ... profiler_start") would be printed
    per measured method; the bench keeps them out, and file descriptor 2 works afterwards."""
    import os

    from benchmarks.memory import measure

    use = measure(lambda: torch.ones(1000))
    os.write(2, b"stderr still works\n")
    err = capfd.readouterr().err
    assert "profiler_start" not in err
    assert "stderr still works" in err
    assert use.result == 4000

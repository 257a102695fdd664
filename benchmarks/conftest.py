"""pytest-benchmark files for featwrap: the cases of ``python -m benchmarks`` (benchmarks.cases).

``uv run pytest benchmarks/`` runs the quick subset (a couple of minutes); ``--bench-full`` or
``FEATWRAP_BENCH_FULL=1`` runs every case with the full timing of ``python -m benchmarks``, and
``--bench-compile`` adds the torch.compile case, ``--bench-against REV`` a previous commit's
featwrap (as ``python -m benchmarks --against REV``). The figures that matter are the interleaved
ratios (test_interleaved.py, printed at the end and stored in each benchmark's ``extra_info``);
test_methods.py times single methods with pytest-benchmark's own statistics, grouped by case.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from benchmarks import CaseResult, Settings, select_cases
from benchmarks.__main__ import FULL, QUICK
from benchmarks.report import console_case, console_goals

_RESULTS: list[CaseResult] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("python -m benchmarks")
    group.addoption(
        "--bench-full",
        action="store_true",
        default=os.environ.get("FEATWRAP_BENCH_FULL", "") not in ("", "0"),
        help="every case with full timing (also FEATWRAP_BENCH_FULL=1)",
    )
    group.addoption("--bench-compile", action="store_true", help="add the torch.compile case")
    group.addoption("--bench-threads", type=int, default=1, help="torch threads (default 1)")
    group.addoption(
        "--bench-against",
        metavar="REV",
        default=None,
        help="also time the featwrap of commit REV in the same rounds (python -m benchmarks "
        "--against REV)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """pytest-benchmark's clock: CPU time of the thread on CPU with one thread, as python -m benchmarks
    does (time spent waiting for a core on a busy machine is not counted), unless
    ``--benchmark-timer`` is given."""
    from pytest_benchmark.timers import default_timer
    from pytest_benchmark.utils import NameWrapper, parse_timer

    untouched = getattr(config.option, "benchmark_timer", None) == str(NameWrapper(default_timer))
    one_thread = config.getoption("--bench-threads") == 1
    if untouched and one_thread and not torch.cuda.is_available():
        config.option.benchmark_timer = parse_timer("time.thread_time")


def _full(config: pytest.Config) -> bool:
    return bool(config.getoption("--bench-full"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        config = metafunc.config
        cases = select_cases(
            quick=not _full(config), compile=bool(config.getoption("--bench-compile"))
        )
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def bench_settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """The timing settings of ``python -m benchmarks`` (--quick unless --bench-full), threads pinned."""
    timing = FULL if _full(request.config) else QUICK
    threads = int(request.config.getoption("--bench-threads"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield Settings(
        device=device,
        threads=threads,
        rounds=int(timing["rounds"]),
        budget_s=float(timing["budget_s"]),
        min_sample_s=float(timing["min_sample_s"]),
        against=request.config.getoption("--bench-against"),
    )
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def bench_results() -> list[CaseResult]:
    """Every interleaved case result of the session (printed in the terminal summary)."""
    return _RESULTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    from benchmarks.goals import evaluate
    from benchmarks.runner import BenchResults, Environment

    terminalreporter.section(
        "python -m benchmarks: interleaved ratios (medians of per-round ratios)"
    )
    for result in _RESULTS:
        terminalreporter.write_line(console_case(result) + "\n")
    settings = Settings(threads=torch.get_num_threads())
    results = BenchResults(Environment.current(settings), settings, list(_RESULTS))
    terminalreporter.write_line(console_goals(evaluate(results)))

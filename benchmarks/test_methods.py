"""Single methods timed with pytest-benchmark's own statistics, one group per case.

Not interleaved, so drift on a busy machine shows here and not in test_interleaved.py; use these
for pytest-benchmark's tooling (``--benchmark-compare``, histograms). Each method's output is
checked against the reference before it is timed. On a busy machine,
``--benchmark-timer time.thread_time`` leaves out the time spent waiting for a core.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from benchmarks import Settings, select_cases
from benchmarks.cases import Case, Setup, mode_context
from benchmarks.checks import Check
from benchmarks.runner import check_methods

#: the cases and methods timed here by default; --bench-full adds every timed case
DEFAULT = {
    "resnet18-32px-b1": ("plain", "featwrap", "fx", "blog"),
    "early-layer1-64px-b1": ("lego", "featwrap", "fx", "ilg"),
    "hooks-mlp-16": ("plain", "featwrap", "fx", "blog", "empty-hooks"),
    "timm-vit-64px": ("plain", "featwrap", "fx", "timm-forward_intermediates"),
}


def _built(case: Case) -> tuple[Setup, dict[str, Check]]:
    return _build(case.id)


@cache
def _build(case_id: str) -> tuple[Setup, dict[str, Check]]:
    (case,) = select_cases([case_id])
    setup = case.build(Settings())
    return setup, check_methods(case, setup)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_method" not in metafunc.fixturenames:
        return
    full = bool(metafunc.config.getoption("--bench-full"))
    pairs: list[tuple[Case, str]] = []
    for case in select_cases(None if full else list(DEFAULT)):
        if not case.timed or case.compile:
            continue
        if full:
            setup, checks = _built(case)
            names: tuple[str, ...] = tuple(m.name for m in setup.methods if checks[m.name].ok)
        else:
            names = DEFAULT[case.id]
        pairs += [(case, name) for name in names]
    metafunc.parametrize("case_method", pairs, ids=[f"{c.id}-{n}" for c, n in pairs])


def test_method(case_method: tuple[Case, str], bench_settings: Settings, benchmark: Any) -> None:
    case, name = case_method
    setup, checks = _built(case)
    method = next(m for m in setup.methods if m.name == name)
    assert checks[name].ok, checks[name]
    assert method.run is not None
    run, x = method.run, setup.x
    benchmark.group = case.id
    with mode_context(case.mode):
        benchmark(run, x)

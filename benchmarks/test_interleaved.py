"""Each case of ``python -m benchmarks``: outputs checked, then every method timed round-robin.

The benchmark's own time is that of the whole case (meaningless on its own); the results are the
ratios in ``extra_info`` (saved with ``--benchmark-json``/``--benchmark-autosave``) and in the
terminal summary. The assertion is about correctness only: featwrap's output equals the reference,
and peers known to be wrong are found wrong. No speed figure is asserted.
"""

from __future__ import annotations

from typing import Any

from benchmarks import Case, CaseResult, Settings, run_case


def _summary(result: CaseResult) -> dict[str, Any]:
    info: dict[str, Any] = {"rounds": result.rounds, "calls_per_sample": result.number}
    for m in result.methods:
        info[m.name] = {
            "output": m.check.status,
            "median_us": None if m.median_s is None else round(m.median_s * 1e6, 1),
            f"vs_{result.baseline}": m.vs_baseline,
            "featwrap_vs": m.featwrap_vs,
            "retained_bytes": None if m.memory is None else m.memory.retained,
            "peak_bytes": None if m.memory is None else m.memory.peak,
        }
    return info


def test_case(
    case: Case, bench_settings: Settings, bench_results: list[CaseResult], benchmark: Any
) -> None:
    benchmark.group = "interleaved case runs (ratios in extra_info)"
    result = benchmark.pedantic(run_case, args=(case, bench_settings), rounds=1, iterations=1)
    bench_results.append(result)
    benchmark.extra_info.update(_summary(result))
    assert result.problems == []
    fm = result.method("featwrap") or result.method("compiled featwrap")
    assert fm is not None
    assert fm.check.ok, fm.check

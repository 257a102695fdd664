"""Benchmarks of featwrap against the plain backbone and its peers (``python -m benchmarks``).

>>> from benchmarks import select_cases
>>> [case.id for case in select_cases(["hooks-mlp-1"])]
['hooks-mlp-1']
"""

from benchmarks.cases import CASES, Case, Settings, select_cases
from benchmarks.goals import Goal, evaluate, hook_costs
from benchmarks.report import write_report
from benchmarks.runner import BenchResults, CaseResult, run, run_case

__all__ = [
    "CASES",
    "BenchResults",
    "Case",
    "CaseResult",
    "Goal",
    "Settings",
    "evaluate",
    "hook_costs",
    "run",
    "run_case",
    "select_cases",
    "write_report",
]

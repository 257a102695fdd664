"""Benchmarks of featwrap against the plain backbone and its peers (``featwrap bench``).

>>> from featwrap.bench import select_cases
>>> [case.id for case in select_cases(["hooks-mlp-1"])]
['hooks-mlp-1']
"""

from featwrap.bench.cases import CASES, Case, Settings, select_cases
from featwrap.bench.goals import Goal, evaluate, hook_costs
from featwrap.bench.report import write_report
from featwrap.bench.runner import BenchResults, CaseResult, run, run_case

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

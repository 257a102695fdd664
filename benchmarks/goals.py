"""featwrap's performance goals, evaluated on a run's results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.runner import BenchResults, CaseResult

__all__ = ["Goal", "HookCost", "evaluate", "hook_costs"]


@dataclass(frozen=True)
class Goal:
    """One goal: its target, the measured figure (worst case over the cases that measure it)."""

    name: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run
    where: str = ""


@dataclass(frozen=True)
class HookCost:
    """A method's extra time per forward against the plain backbone, fitted on the hooks sweep.

    ``per_layer_us`` is the least-squares slope of the extra microseconds over the number of hooked
    layers; ``fixed_us`` the intercept (per-forward cost, whatever the number of layers).
    """

    method: str
    per_layer_us: float
    fixed_us: float
    points: tuple[tuple[int, float], ...]  # (hooked layers, extra microseconds)


def hook_costs(results: BenchResults) -> dict[str, HookCost]:
    """Fit the per-layer cost of every method timed on the hooks sweep (``hooks-*`` cases)."""
    sweep = [c for c in results.cases if c.group == "hooks" and c.hooked]
    points: dict[str, list[tuple[int, float]]] = {}
    for case in sweep:
        for method in case.methods:
            if method.extra_us is not None and method.name != case.baseline:
                points.setdefault(method.name, []).append((case.hooked, method.extra_us))
    costs = {}
    for name, pts in points.items():
        if len(pts) >= 2:
            slope, intercept = _fit(pts)
            costs[name] = HookCost(name, slope, intercept, tuple(sorted(pts)))
    return costs


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return math.nan, my
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    return slope, my - slope * mx


Worst = tuple[float, tuple[float, float] | None, str]


def _worst(
    cases: list[CaseResult], method: str = "featwrap", peer: str | None = None
) -> Worst | None:
    """The largest ratio over ``cases`` with its interval and case id: ``method`` against the
    case's baseline, or featwrap against ``peer`` when given."""
    found: list[Worst] = []
    for case in cases:
        if peer is not None:
            other = case.method(peer)
            if other is not None and other.featwrap_vs is not None:
                found.append((other.featwrap_vs, other.featwrap_vs_ci, case.id))
        else:
            mine = case.method(method)
            if mine is not None and mine.vs_baseline is not None:
                found.append((mine.vs_baseline, mine.vs_baseline_ci, case.id))
    return max(found, key=lambda w: w[0]) if found else None


#: Methods whose ratio, in the worst case of a goal, shows what featwrap's figure is made of.
_CONTEXT = {
    "plain-copy": "plain 2nd copy (noise)",
    "empty-hooks": "empty hooks",
    "keep-hooks": "minimal hooks",
    "cow-hooks": "minimal exact hooks",
    "fx": "FX",
    "blog": "blog recipe",
}


def _ratio_goal(
    name: str, limit: float, worst: Worst | None, runs: str, cases: Sequence[CaseResult] = ()
) -> Goal:
    if worst is None:
        return Goal(name, f"<= {limit:.2f}", f"not measured ({runs})", None)
    ratio, interval, where = worst
    measured = f"{ratio:.3f}"
    if interval is not None:
        measured += f" ({interval[0]:.3f}-{interval[1]:.3f})"
    context = [
        f"{label} {method.vs_baseline:.3f}"
        for case in cases
        if case.id == where
        for key, label in _CONTEXT.items()
        if (method := case.method(key)) is not None and method.vs_baseline is not None
    ]
    if context:
        where += f" (same case, against its baseline: {', '.join(context)})"
    return Goal(name, f"<= {limit:.2f}", measured, ratio <= limit, f"worst: {where}")


def evaluate(results: BenchResults) -> list[Goal]:
    """The goals of issue 4, on CPU with one thread, each against its worst case in ``results``."""
    cases = results.cases
    three = [c for c in cases if c.group == "resnet18" and c.hooked == 0 and c.mode == "no_grad"]
    upto16 = [
        c
        for c in cases
        if c.mode == "no_grad"
        and (c.group == "resnet18" or (c.group == "hooks" and 0 < c.hooked <= 16))
    ]
    early = [c for c in cases if c.group == "early"]
    compiled = [c for c in cases if c.group == "compile"]
    memory = _memory_cases(cases)
    goals = [
        _ratio_goal(
            "featwrap / plain, 3 layers + logits (resnet18)",
            1.02,
            _worst(three),
            "resnet18-* cases",
            three,
        ),
        _ratio_goal(
            "featwrap / FX, up to 16 layers (resnet18, MLP sweep)",
            1.00,
            _worst(upto16, peer="fx"),
            "resnet18-*, hooks-* cases",
            upto16,
        ),
        _ratio_goal(
            "early feature: featwrap / Lego truncation",
            1.05,
            _worst(early),
            "early-* cases",
        ),
        _ratio_goal(
            "torch.compile: compiled featwrap / compiled plain",
            1.02,
            _worst(compiled, method="compiled featwrap"),
            "pass --compile",
        ),
    ]
    costs = hook_costs(results)
    mine = costs.get("featwrap")
    floor = costs.get("empty-hooks")
    if mine is None:
        goals.insert(3, Goal("cost per hooked layer", "<= 2.0 us", "not measured (hooks-*)", None))
    else:
        where = f"slope over {len(mine.points)} hook counts"
        if floor is not None and floor.per_layer_us > 0:
            units = mine.per_layer_us / floor.per_layer_us
            where += (
                f"; an empty hook costs {floor.per_layer_us:.2f} us in the same run, so featwrap "
                f"is {units:.2f} x the empty hook (about {1.6 * units:.1f} us with the empty hook "
                "at 1.6 us)"
            )
        cow = costs.get("cow-hooks")
        if cow is not None:
            where += (
                f"; the minimal exact hook (copy-on-write snapshot + version check) costs "
                f"{cow.per_layer_us:.2f} us"
            )
        goals.insert(
            3,
            Goal(
                "cost per hooked layer (featwrap - plain, slope)",
                "<= 2.0 us",
                f"{mine.per_layer_us:.2f} us",
                mine.per_layer_us <= 2.0,
                where,
            ),
        )
    stacks = [c for c in cases if c.group == "stack"]
    goals += [
        _ratio_goal(
            "early stop in a block stack: featwrap / the stack's own early stop",
            1.05,
            _worst_of_peers(stacks, STACK_PEERS),
            "stack-* cases",
        ),
        _ratio_goal(
            "early stop in a block stack (block 3 of 12): featwrap / plain",
            0.30,
            _worst(stacks),
            "stack-* cases",
        ),
    ]
    goals.append(_retained_goal(memory))
    return goals


#: the peers that stop a stack early themselves: timm's forward_intermediates, a hand loop
STACK_PEERS = ("timm-forward_intermediates-stop_early", "truncated-stack")


def _worst_of_peers(cases: list[CaseResult], peers: Sequence[str]) -> Worst | None:
    found = [w for peer in peers if (w := _worst(cases, peer=peer)) is not None]
    return max(found, key=lambda w: w[0]) if found else None


def _memory_cases(cases: list[CaseResult]) -> list[CaseResult]:
    return [c for c in cases if any(m.memory is not None for m in c.methods)]


def _retained_goal(cases: list[CaseResult]) -> Goal:
    figures = []
    for case in cases:
        mine = case.method("featwrap")
        if mine is not None and mine.memory is not None:
            figures.append((mine.memory.retained, case.id))
    if not figures:
        return Goal("retained bytes after a forward", "0", "not measured (memory-*)", None)
    worst, where = max(figures)
    return Goal("retained bytes after a forward", "0", f"{worst} B", worst == 0, f"worst: {where}")

"""Running a case: build it, check every method's output, time the correct ones interleaved, measure memory."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.cases import Case, Settings, Setup, mode_context
from benchmarks.checks import Check, compare
from benchmarks.memory import MemoryUse, measure
from benchmarks.methods import Method
from benchmarks.previous import Previous, load_previous
from benchmarks.timing import Timings, interleaved

__all__ = [
    "BenchResults",
    "CaseResult",
    "Environment",
    "MethodResult",
    "add_previous",
    "check_methods",
    "clock_name",
    "run",
    "run_case",
]


@dataclass
class MethodResult:
    """One method in one case: its check, and its timing and memory when measured."""

    name: str
    label: str
    role: str
    check: Check
    median_s: float | None = None
    vs_baseline: float | None = None  # median paired ratio t_method / t_baseline
    vs_baseline_ci: tuple[float, float] | None = None  # 95% interval of that median
    featwrap_vs: float | None = None  # median paired ratio t_featwrap / t_method
    featwrap_vs_ci: tuple[float, float] | None = None
    extra_us: float | None = None  # median paired t_method - t_baseline, in microseconds
    memory: MemoryUse | None = None
    note: str = ""


@dataclass
class CaseResult:
    """The outcome of one case."""

    id: str
    title: str
    group: str
    mode: str
    baseline: str
    hooked: int
    methods: list[MethodResult]
    rounds: int = 0
    number: int = 0
    problems: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodResult | None:
        """The result of the method called ``name``, if the case has it."""
        return next((r for r in self.methods if r.name == name), None)


@dataclass
class Environment:
    """Where and when the figures were measured."""

    date: str
    featwrap: str
    torch: str
    torchvision: str
    timm: str
    python: str
    cpu: str
    threads: int
    device: str
    clock: str
    previous: str = ""  # the release timed beside featwrap (--against): commit, date, subject
    load_start: tuple[float, float, float] | None = None  # os.getloadavg() as the run starts
    load_end: tuple[float, float, float] | None = None  # and as it ends

    @classmethod
    def current(cls, settings: Settings) -> Environment:
        import timm
        import torchvision

        from featwrap import __version__

        device = settings.device
        if device.startswith("cuda"):
            device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
        return cls(
            date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            featwrap=__version__,
            torch=torch.__version__,
            torchvision=torchvision.__version__,
            timm=timm.__version__,
            python=platform.python_version(),
            cpu=f"{_cpu_name()} ({os.cpu_count()} logical cores)",
            threads=torch.get_num_threads(),
            device=device,
            clock=clock_name(settings.device, settings.threads),
            previous=_previous(settings),
            load_start=_load(),
        )


@dataclass
class BenchResults:
    """Every case's result, with the environment."""

    environment: Environment
    settings: Settings
    cases: list[CaseResult]

    def case(self, case_id: str) -> CaseResult | None:
        return next((c for c in self.cases if c.id == case_id), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResults:
        """The results as ``dataclasses.asdict`` gave them (the ``results`` of ``--json``)."""
        env = dict(data["environment"])
        for key in ("load_start", "load_end"):
            if env.get(key) is not None:
                env[key] = tuple(env[key])
        cases = []
        for case in data["cases"]:
            methods = []
            for m in case["methods"]:
                fields = dict(m)
                fields["check"] = Check(**m["check"])
                fields["memory"] = None if m["memory"] is None else MemoryUse(**m["memory"])
                for key in ("vs_baseline_ci", "featwrap_vs_ci"):
                    if fields[key] is not None:
                        fields[key] = tuple(fields[key])
                methods.append(MethodResult(**fields))
            cases.append(CaseResult(**{**case, "methods": methods}))
        return cls(Environment(**env), Settings(**data["settings"]), cases)


def run(
    cases: Iterable[Case],
    settings: Settings,
    progress: Callable[[CaseResult], None] | None = None,
) -> BenchResults:
    """Run ``cases`` one after the other with ``settings``; threads are pinned for the run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        environment = Environment.current(settings)
        results = []
        for case in cases:
            result = run_case(case, settings)
            results.append(result)
            if progress is not None:
                progress(result)
        environment.load_end = _load()
    finally:
        torch.set_num_threads(threads)
    return BenchResults(environment, settings, results)


def run_case(case: Case, settings: Settings) -> CaseResult:
    """Build, check, then time (and measure) the methods whose output is right."""
    setup = case.build(settings)
    if settings.against is not None:
        add_previous(setup, load_previous(settings.against))
    x = setup.x
    checks = check_methods(case, setup)
    result = CaseResult(
        case.id,
        case.title,
        case.group,
        case.mode,
        setup.baseline,
        case.hooked,
        [
            MethodResult(
                method.name,
                method.label,
                method.role,
                checks[method.name],
                note=method.note,
            )
            for method in setup.methods
        ],
    )
    result.problems += _unexpected(case, checks)
    runnable = {
        method.name: _bind(method, x)
        for method in setup.methods
        if checks[method.name].ok and method.run is not None
    }
    if case.timed and runnable:
        sync, clock = _clock(x.device, settings.threads)
        with mode_context(case.mode):
            timings = interleaved(
                runnable,
                rounds=settings.rounds,
                min_sample_s=settings.min_sample_s,
                warmup=settings.warmup,
                budget_s=settings.budget_s,
                sync=sync,
                clock=clock,
                seed=settings.seed,
            )
        _fill_timings(result, timings)
    if case.memory:
        with mode_context(case.mode):
            for name, call in runnable.items():
                for _ in range(2):
                    call()
                found = result.method(name)
                if found is not None:
                    found.memory = measure(call, x.device)
    return result


def add_previous(setup: Setup, previous: Previous) -> None:
    """Put ``previous``'s featwrap right after each featwrap method of ``setup``."""
    for i, method in reversed(list(enumerate(setup.methods))):
        if method.previous is not None:
            setup.methods.insert(i + 1, method.previous(previous))


def clock_name(device: str, threads: int) -> str:
    """How times are taken for ``device`` and ``threads`` (stated in the report)."""
    if torch.device(device).type == "cuda":
        return "wall time, torch.cuda.synchronize() around each sample"
    if threads == 1:
        return "CPU time of the timing thread (time.thread_time: waits for a core are not counted)"
    return "wall time (time.perf_counter)"


def _clock(
    device: torch.device, threads: int
) -> tuple[Callable[[], None] | None, Callable[[], float]]:
    if device.type == "cuda":
        return torch.cuda.synchronize, time.perf_counter
    if threads == 1:
        return None, time.thread_time
    return None, time.perf_counter


def _bind(method: Method, x: torch.Tensor) -> Callable[[], Any]:
    run = method.run
    assert run is not None

    def call() -> Any:
        return run(x)

    return call


def check_methods(case: Case, setup: Setup) -> dict[str, Check]:
    """Check every method of a built case against its reference, in the case's autograd mode."""
    return {method.name: _check(method, setup.reference, setup.x, case) for method in setup.methods}


def _check(
    method: Method, reference: dict[str, torch.Tensor], x: torch.Tensor, case: Case
) -> Check:
    """Two calls (featwrap's first call in a mode probes, later ones take the fast path)."""
    if method.run is None:
        return Check("failed", method.error)
    verdict = Check("equal")
    for _ in range(2):
        try:
            with mode_context(case.mode):
                found = method.features(method.run(x))
        except Exception as error:
            return Check("failed", f"{type(error).__name__}: {error}".splitlines()[0][:200])
        check = compare(reference, found, method.keys, method.view)
        if not check.ok:
            return check
        if check.status == "close":
            verdict = check
    return verdict


def _unexpected(case: Case, checks: dict[str, Check]) -> list[str]:
    """Checks that disagree with what the case expects: featwrap wrong, a known-wrong peer right."""
    problems = []
    for name, check in checks.items():
        known = case.known_wrong.get(name)
        if known is not None and check.status != "wrong":
            problems.append(f"{name} was expected to be wrong ({known}) but is {check.status}")
        if known is None and name.endswith("featwrap") and not check.ok:
            problems.append(f"featwrap is {check.status}: {check.detail}")
        if known is None and name.startswith("featwrap@") and not check.ok:
            problems.append(f"{name} (the previous release) is {check.status}: {check.detail}")
    return problems


def _fill_timings(result: CaseResult, timings: Timings) -> None:
    result.rounds, result.number = timings.rounds, timings.number
    base = result.baseline if result.baseline in timings.samples else None
    subject = next((n for n in timings.samples if n.endswith("featwrap")), None)
    for method in result.methods:
        name = method.name
        if name not in timings.samples:
            continue
        method.median_s = timings.median(name)
        if base is not None:
            method.vs_baseline = timings.ratio(name, base)
            method.vs_baseline_ci = timings.ratio_interval(name, base)
            method.extra_us = timings.difference(name, base) * 1e6
        if subject is not None:
            method.featwrap_vs = timings.ratio(subject, name)
            method.featwrap_vs_ci = timings.ratio_interval(subject, name)


def _previous(settings: Settings) -> str:
    if settings.against is None:
        return ""
    previous = load_previous(settings.against)
    return f"{previous.summary} [featwrap {previous.version}]"


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:  # not on every platform
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

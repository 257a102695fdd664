"""``python -m benchmarks``: featwrap against the plain backbone and its peers, interleaved, as ratios.

Run from the repository root: ``uv run python -m benchmarks --quick`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HELP = "time featwrap against the plain backbone, FX, Lego truncation, hand-written hooks and timm"

#: timing of --quick and of the full sweep: most rounds, seconds per case, shortest sample
QUICK = {"rounds": 60, "budget_s": 4.0, "min_sample_s": 0.01}
FULL = {"rounds": 300, "budget_s": 30.0, "min_sample_s": 0.02}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=HELP + ". Every method's output is checked against an independent "
        "reference before it is timed; methods run round-robin in one process and the result "
        "is the median of per-round ratios.",
        epilog="examples: uv run python -m benchmarks --quick --report docs/benchmarks.md; "
        "uv run python -m benchmarks --cases 'resnet18-*' --against f7eef22",
    )
    p.add_argument("--quick", action="store_true", help="the quick subset, shorter timing")
    p.add_argument(
        "--cases",
        nargs="+",
        metavar="PATTERN",
        help="case ids or globs (e.g. 'resnet18-*' 'hooks-*'); see --list",
    )
    p.add_argument("--list", action="store_true", help="list the case ids and exit")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when available, else CPU (default: %(default)s)",
    )
    p.add_argument(
        "--compile", action="store_true", help="add the torch.compile cases (slow on CPU)"
    )
    p.add_argument("--rounds", type=int, help="most rounds per case (default: 60 quick, 300)")
    p.add_argument("--budget", type=float, help="seconds of timing per case (default: 4 quick, 30)")
    p.add_argument(
        "--against",
        metavar="REV",
        help="also time the featwrap of an earlier commit (e.g. f7eef22) in the same rounds, "
        "loaded from git beside today's; the report gets a section 'Against the previous "
        "release' (default: none, no git needed)",
    )
    p.add_argument("--report", type=Path, help="write a markdown report (and a PNG beside it)")
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="no timing: write --report from the figures of an earlier --json (default: run)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from benchmarks import Settings, evaluate, select_cases, write_report
    from benchmarks import run as run_cases
    from benchmarks.report import console_case, console_goals
    from featwrap.errors import FeatwrapValueError

    if args.from_json is not None:
        return _from_json(args)
    cases = select_cases(args.cases, quick=args.quick, compile=args.compile)
    if args.list:
        for case in cases:
            print(f"{case.id:32s} {case.title}")
        return 0
    if args.threads < 1:
        raise FeatwrapValueError(f"--threads must be at least 1, got {args.threads}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise FeatwrapValueError(
            "--device cuda: CUDA is not available here. Use --device cpu (or auto)."
        )
    timing = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        timing["rounds"] = args.rounds
    if args.budget is not None:
        timing["budget_s"] = args.budget
    settings = Settings(
        device=device,
        threads=args.threads,
        rounds=int(timing["rounds"]),
        budget_s=float(timing["budget_s"]),
        min_sample_s=float(timing["min_sample_s"]),
        against=args.against,
    )
    if args.against is not None:
        from benchmarks.previous import load_previous

        previous = load_previous(args.against)
        print(f"against {previous.summary} (featwrap {previous.version}, as featwrap_prev)")
    print(f"benchmarks: {len(cases)} cases on {device}, {args.threads} thread(s)", flush=True)

    def progress(case: object) -> None:
        print(console_case(case) + "\n", flush=True)  # type: ignore[arg-type]

    results = run_cases(cases, settings, progress)
    goals = evaluate(results)
    print(console_goals(goals))
    if args.against is not None:
        from benchmarks.report import against_previous

        summary = [line[2:] for line in against_previous(results) if line.startswith("- ")]
        print("\n".join(["against the previous release:", *(f"  {s}" for s in summary)]))
    if args.report is not None:
        md, png = write_report(results, args.report)
        print(f"wrote {md}" + (f" and {png}" if png else ""))
    if args.json is not None:
        payload = {
            "results": dataclasses.asdict(results),
            "goals": [dataclasses.asdict(g) for g in goals],
        }
        args.json.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
        print(f"wrote {args.json}")
    problems = [f"{c.id}: {p}" for c in results.cases for p in c.problems]
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


def _from_json(args: argparse.Namespace) -> int:
    from benchmarks import evaluate, write_report
    from benchmarks.report import console_goals
    from benchmarks.runner import BenchResults
    from featwrap.errors import FeatwrapValueError

    if args.report is None:
        raise FeatwrapValueError(
            f"--from-json {args.from_json} writes a report: add --report PATH "
            "(e.g. --report docs/benchmarks.md)."
        )
    try:
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
        results = BenchResults.from_dict(data["results"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FeatwrapValueError(
            f"--from-json {args.from_json}: not the JSON of `python -m benchmarks --json` "
            f"({type(error).__name__}: {error}). Pass a file that --json wrote."
        ) from error
    print(console_goals(evaluate(results)))
    md, png = write_report(results, args.report)
    print(f"wrote {md}" + (f" and {png}" if png else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns the exit code (2 for bad input, as argparse does)."""
    from featwrap.errors import FeatwrapError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except FeatwrapError as error:
        print(f"python -m benchmarks: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

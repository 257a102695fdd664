"""``python -m benchmarks.edits``: what an edit (``fm.edit``) costs per edited layer.

On a deep MLP of tiny layers (the hooks sweep's, 32 blocks: 64 modules, so that hooks dominate
and the forward is short), with ``n`` of its Linear modules captured, for several ``n``; for each
``n`` one interleaved run in one process of:

* ``plain``: the model alone; ``featwrap``: the FeatureModel, no edit;
* ``featwrap+edit``: every captured layer edited with ``torch.neg``;
* ``hooks+edit``: hand-written forward hooks returning ``torch.neg(output)`` on the same modules
  (the floor for an edit: the edit's own op and a hook call).

Per ``n``, the medians of per-round paired differences ``featwrap+edit - featwrap`` (what the
edits add to featwrap) and ``hooks+edit - plain`` (what hand-written edits add to the model).
The cost of one edited layer is the slope of each over ``n`` (least squares), so that what does
not grow with ``n`` (opening the edit block, the session) stays out of it. The edited outputs are
checked equal to the hand-written hooks' before timing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from benchmarks.cases import deep_mlp, mlp_layers
from benchmarks.timing import interleaved
from featwrap import FeatureModel

COUNTS = (4, 8, 16, 32)
BLOCKS = 32


def _neg_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.neg(output)


def measure(
    n: int = 16, grad: bool = False, rounds: int = 60, budget_s: float = 6.0
) -> dict[str, float]:
    """Microseconds that ``n`` edited layers add, featwrap's and hand-written, in one run."""
    torch.manual_seed(0)
    model = deep_mlp(BLOCKS).eval()
    hooked = deep_mlp(BLOCKS).eval()
    hooked.load_state_dict(model.state_dict())
    layers = list(mlp_layers(n, BLOCKS))
    for path in layers:
        hooked.get_submodule(path).register_forward_hook(_neg_hook)
    fm = FeatureModel(model, layers)
    edit = fm.edit(dict.fromkeys(layers, torch.neg))
    x = torch.randn(1, 16)

    def edited() -> Any:
        with edit:
            return fm(x)

    with torch.set_grad_enabled(grad):
        if not torch.equal(edited()["logits"], hooked(x)):
            raise RuntimeError("featwrap's edit and the hand-written edit hooks differ")
        timings = interleaved(
            {
                "plain": lambda: model(x),
                "featwrap": lambda: fm(x),
                "featwrap+edit": edited,
                "hooks+edit": lambda: hooked(x),
            },
            rounds=rounds,
            budget_s=budget_s,
            min_sample_s=0.01,
            clock=time.thread_time,
        )
    return {
        "edits_us": timings.difference("featwrap+edit", "featwrap") * 1e6,
        "hooks_us": timings.difference("hooks+edit", "plain") * 1e6,
        "featwrap_over_plain": timings.ratio("featwrap", "plain"),
        "edit_over_hooks": timings.ratio("featwrap+edit", "hooks+edit"),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` over ``xs``."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def sweep(
    counts: Sequence[int] = COUNTS, grad: bool = False, budget_s: float = 4.0
) -> dict[str, Any]:
    """:func:`measure` for each count; the per-layer slopes of featwrap's and the hooks' edits."""
    runs = {n: measure(n, grad, rounds=300, budget_s=budget_s) for n in counts}
    return {
        "runs": runs,
        "edit_us_per_layer": slope(counts, [runs[n]["edits_us"] for n in counts]),
        "hooks_us_per_layer": slope(counts, [runs[n]["hooks_us"] for n in counts]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edits", description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per run (default: 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for grad in (False, True):
        result = sweep(args.counts, grad, args.budget)
        mode = "grad" if grad else "no_grad"
        for n, r in result["runs"].items():
            print(
                f"{mode:7}  {n:3} edited: featwrap +{r['edits_us']:7.1f} us, "
                f"hand-written hooks +{r['hooks_us']:7.1f} us  "
                f"featwrap+edit / hooks+edit {r['edit_over_hooks']:.3f}  "
                f"featwrap / plain {r['featwrap_over_plain']:.3f}"
            )
        print(
            f"{mode:7}  per edited layer (slope): featwrap {result['edit_us_per_layer']:.2f} us, "
            f"hand-written hooks {result['hooks_us_per_layer']:.2f} us"
        )


if __name__ == "__main__":
    main()

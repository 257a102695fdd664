"""``python -m benchmarks.edits``: what an edit (``fm.edit``) costs per edited layer.

On the deep small MLP of the hooks sweep (tiny layers, so that hooks dominate), with ``n`` of its
modules captured, interleaved in one process (medians of per-round paired differences):

* ``featwrap``: no edit; ``featwrap+edit``: every captured layer edited with ``torch.neg``;
* ``hooks+edit``: hand-written forward hooks returning ``torch.neg(output)`` (the floor for an
  edit: the edit's own op and a hook call), next to ``plain``.

The per-layer cost of an edit is ``(featwrap+edit - featwrap) / n``; the floor is
``(hooks+edit - plain) / n``. The edited outputs are checked equal before timing.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from benchmarks.cases import deep_mlp, mlp_layers
from benchmarks.timing import interleaved
from featwrap import FeatureModel


def _neg_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.neg(output)


def measure(
    n: int = 16, grad: bool = False, rounds: int = 60, budget_s: float = 6.0
) -> dict[str, float]:
    """Microseconds per edited layer: featwrap's edit and the hand-written floor."""
    torch.manual_seed(0)
    model = deep_mlp().eval()
    hooked = deep_mlp().eval()
    hooked.load_state_dict(model.state_dict())
    layers = list(mlp_layers(n))
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
        "edit_us_per_layer": timings.difference("featwrap+edit", "featwrap") / n * 1e6,
        "floor_us_per_layer": timings.difference("hooks+edit", "plain") / n * 1e6,
        "featwrap_over_plain": timings.ratio("featwrap", "plain"),
        "edit_over_hooks": timings.ratio("featwrap+edit", "hooks+edit"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edits", description=__doc__)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--budget", type=float, default=6.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for grad in (False, True):
        r = measure(args.layers, grad, budget_s=args.budget)
        mode = "grad" if grad else "no_grad"
        print(
            f"{mode:7}  edit: {r['edit_us_per_layer']:.2f} us/layer  "
            f"(hand-written edit hooks: {r['floor_us_per_layer']:.2f} us/layer)  "
            f"featwrap+edit / hooks+edit: {r['edit_over_hooks']:.3f}  "
            f"featwrap / plain: {r['featwrap_over_plain']:.3f}"
        )


if __name__ == "__main__":
    main()

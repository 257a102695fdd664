"""Recipe: DistributedDataParallel with a FeatureModel backbone, 2 CPU processes under torchrun.

One torchrun launch trains every set-up of examples/distributed.py; the checks run here, in the
launching process, on what each rank wrote: parameters in sync across ranks, equal to a
single-process computation of DDP's averaged-gradient steps, the unused part untouched, and the
plain-DDP error on the early-stopping model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from tests.examples import EXAMPLES, ROOT, load_example

recipe = load_example("distributed")
STEPS, BATCH, SIZE = 3, 4, 32
LR = recipe.LR


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(EXAMPLES / "distributed.py"),
        "--steps", str(STEPS), "--batch-size", str(BATCH), "--image-size", str(SIZE),
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    found: dict[str, list[dict[str, Any]]] = {}
    for mode in [*recipe.MODES, "naive"]:
        found[mode] = [json.loads((out / f"{mode}-rank{r}.json").read_text()) for r in (0, 1)]
        for r, result in enumerate(found[mode]):
            state = out / f"{mode}-rank{r}.pt"
            if state.exists():
                result["state_dict"] = torch.load(state, weights_only=True)
    return found


def shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + rank)  # as in the recipe
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), torch.randint(
        0, 10, (BATCH,), generator=gen
    )


BATCHNORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
UNUSED_PREFIXES = ("features.backbone.layer4.", "features.backbone.fc.")


@pytest.mark.slow
@pytest.mark.parametrize("mode", recipe.MODES)
def test_ranks_in_sync_and_loss_decreases(results: dict[str, Any], mode: str) -> None:
    rank0, rank1 = results[mode]
    assert rank0["world_size"] == 2
    assert rank0["trained_digest"] == rank1["trained_digest"]
    for r in (rank0, rank1):
        assert len(r["losses"]) == STEPS
        assert r["losses"][-1] < r["losses"][0]
    assert rank0["losses"][0] != rank1["losses"][0]  # the ranks saw different data
    # parameters equal; BatchNorm statistics differ: each rank updates them from its own batch
    params = [k for k in rank0["state_dict"] if not k.endswith(BATCHNORM_STATS)]
    assert len(params) == len(list(recipe.Classifier(early_stop=True).parameters()))
    for name in params:
        assert torch.equal(rank0["state_dict"][name], rank1["state_dict"][name]), name


@pytest.mark.slow
def test_unused_parameters_are_layer4_and_fc_and_stay_untouched(results: dict[str, Any]) -> None:
    names = [n for n, _ in recipe.Classifier(early_stop=True).named_parameters()]
    expected_unused = [n for n in names if n.startswith(UNUSED_PREFIXES)]
    assert results["logits"][0]["unused"] == []
    assert len(results["logits"][0]["with_grad"]) == len(names)
    for mode in ("freeze", "find_unused"):
        for r in results[mode]:
            assert r["unused"] == expected_unused
            assert r["with_grad"] == sorted(set(names) - set(expected_unused))
            assert r["unused_digest_after"] == r["unused_digest_before"]
    # both fixes train the very same parameters
    assert results["freeze"][0]["trained_digest"] == results["find_unused"][0]["trained_digest"]


@pytest.mark.slow
def test_same_parameters_as_single_process_averaged_gradients(results: dict[str, Any]) -> None:
    """DDP's steps = SGD steps on the mean of the two shards' gradients, computed here."""
    torch.manual_seed(0)
    model = recipe.Classifier(early_stop=True).train()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = [p for n, p in model.named_parameters() if not n.startswith(UNUSED_PREFIXES)]
    shards = [shard(0), shard(1)]
    for _ in range(STEPS):
        grads = []
        for x, y in shards:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x)["head"], y).backward()
            grads.append([p.grad.clone() for p in trained])
        with torch.no_grad():
            for p, g0, g1 in zip(trained, *grads, strict=True):
                p -= LR * (g0 + g1) / 2
    got = results["freeze"][0]["state_dict"]  # keys: the FeatureModel drops "backbone."
    for name, p in model.named_parameters():
        key = name.replace("features.backbone.", "features.", 1)
        if name.startswith(UNUSED_PREFIXES):
            assert torch.equal(got[key], initial[name]), name
        else:
            torch.testing.assert_close(got[key], p.detach(), rtol=1e-4, atol=1e-5)
            assert not torch.equal(got[key], initial[name]), name


@pytest.mark.slow
def test_plain_ddp_fails_on_the_early_stopping_model(results: dict[str, Any]) -> None:
    for r in results["naive"]:
        assert r["error"] is not None
        assert "find_unused_parameters=True" in r["error"]

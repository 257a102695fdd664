"""Recipe: DistributedDataParallel with a FeatureModel backbone, 2 CPU processes under torchrun.

One torchrun launch trains both set-ups of examples/distributed.py under plain DDP
(find_unused_parameters=False); the checks run here, in the launching process, on what each rank
wrote: parameters in sync across ranks, equal to a single-process computation of DDP's
averaged-gradient steps, the unused part of the backbone (layer4, fc) out of DDP, the optimizer
and the checkpoint, and untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet18

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
    for mode in recipe.MODES:
        found[mode] = [json.loads((out / f"{mode}-rank{r}.json").read_text()) for r in (0, 1)]
        for r, result in enumerate(found[mode]):
            result["state_dict"] = torch.load(out / f"{mode}-rank{r}.pt", weights_only=True)
    return found


def shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + rank)  # as in the recipe
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), torch.randint(
        0, 10, (BATCH,), generator=gen
    )


BATCHNORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


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
    assert len(params) == len(rank0["parameters"])
    for name in params:
        assert torch.equal(rank0["state_dict"][name], rank1["state_dict"][name]), name


@pytest.mark.slow
def test_every_parameter_gets_a_gradient_and_the_unused_part_is_left_alone(
    results: dict[str, Any],
) -> None:
    """Plain DDP trains the early-stopping model: layer4 and fc are out of its parameters."""
    plain = resnet18(num_classes=10)
    expected = ["features.backbone." + n for n, _ in plain.named_parameters()]
    expected += ["head.weight", "head.bias"]
    logits = results["logits"][0]
    assert logits["unused_modules"] == []
    assert logits["parameters"] == logits["with_grad"] == expected
    unused = ("features.backbone.layer4.", "features.backbone.fc.")
    for r in results["early_stop"]:
        assert r["unused_modules"] == ["layer4", "fc"]
        assert (
            r["parameters"] == r["with_grad"] == [n for n in expected if not n.startswith(unused)]
        )
        assert r["unused_digest_after"] == r["unused_digest_before"]


@pytest.mark.slow
def test_the_checkpoint_loads_into_the_plain_backbone(results: dict[str, Any]) -> None:
    state = results["early_stop"][0]["state_dict"]
    backbone = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    plain = resnet18(num_classes=10)
    report = plain.load_state_dict(backbone, strict=False)
    # without the checkpoint's _metadata, BatchNorm fills num_batches_tracked: not missing
    expected = [k for k in plain.state_dict() if k.startswith(("layer4.", "fc."))]
    assert report.missing_keys == [k for k in expected if not k.endswith("num_batches_tracked")]
    assert report.unexpected_keys == []


@pytest.mark.slow
def test_same_parameters_as_single_process_averaged_gradients(results: dict[str, Any]) -> None:
    """DDP's steps = SGD steps on the mean of the two shards' gradients, computed here on a
    hand-truncated copy of the backbone (conv1 to layer3) and the head."""
    torch.manual_seed(0)
    model = recipe.Classifier(early_stop=True).train()
    backbone = model.features.backbone
    truncated = nn.Sequential(OrderedDict(list(backbone.named_children())[:7]))  # conv1 to layer3
    params = [*truncated.parameters(), *model.head.parameters()]
    shards = [shard(0), shard(1)]
    for _ in range(STEPS):
        grads = []
        for x, y in shards:
            for p in params:
                p.grad = None
            logits = model.head(truncated(x).mean((2, 3)))
            F.cross_entropy(logits, y).backward()
            grads.append([p.grad.clone() for p in params])
        with torch.no_grad():
            for p, g0, g1 in zip(params, *grads, strict=True):
                p -= LR * (g0 + g1) / 2
    got = results["early_stop"][0]["state_dict"]
    expected = {"features." + k: v for k, v in truncated.state_dict().items()}
    expected.update({"head." + k: v for k, v in model.head.state_dict().items()})
    for key, value in expected.items():
        if not key.endswith(BATCHNORM_STATS):
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)

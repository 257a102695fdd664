"""DDP and FSDP2 over early-stopping FeatureModels, 2 CPU processes (gloo), one torchrun launch.

tests/dist_training.py trains each set-up; the checks run here on what each rank wrote, against
references computed without featwrap's view: plain DDP on a hand-truncated backbone, and the
unsharded model stepped in one process on the mean of both ranks' gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.examples import ROOT

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("dist_training.py")
CASES = ("ddp", "ddp_truncated", "ddp_checkpointing", "fsdp", "fsdp_checkpointing", "reference")
MODEL = {"ddp": "resnet", "ddp_checkpointing": "vit", "fsdp": "resnet", "fsdp_checkpointing": "vit"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SCRIPT), str(out), *CASES,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {
        case: [torch.load(out / f"{case}-rank{r}.pt", weights_only=False) for r in (0, 1)]
        for case in CASES
    }
    for case, ranks in found.items():
        for r, result in enumerate(ranks):
            assert "error" not in result, f"{case}, rank {r}: {result['error']}"
    return found


def assert_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for key in expected:  # SGD's own update rounds differently from p -= lr * g: one ulp
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("case", ["ddp", "ddp_checkpointing", "fsdp", "fsdp_checkpointing"])
def test_features_and_gradients_equal_the_unsharded_model(
    results: dict[str, Any], case: str
) -> None:
    """DDP with find_unused_parameters=False and FSDP2 train the early-stopping model (timm's
    set_grad_checkpointing in the *_checkpointing cases): each rank's features, the reduced
    gradients and the parameters after two steps equal the single-process computation."""
    for rank in (0, 1):
        got, expected = results[case][rank], results["reference"][rank][MODEL[case]]
        assert_equal(got["features"], expected["features"])
        assert_equal(got["grads"], expected["grads"])
        assert_close(got["params"], expected["params"])
        assert got["n_optimized"] == len(expected["grads"])  # no parameter without a gradient


def test_ddp_equals_plain_ddp_on_the_hand_truncated_backbone(results: dict[str, Any]) -> None:
    for rank in (0, 1):
        ours, truncated = results["ddp"][rank], results["ddp_truncated"][rank]
        assert_equal(ours["features"], truncated["features"])
        assert_equal(ours["grads"], truncated["grads"])  # same keys: layer4 and fc left out
        assert_equal(ours["params"], truncated["params"])
        assert ours["n_optimized"] == truncated["n_optimized"]


def test_the_ranks_saw_different_data_and_agree(results: dict[str, Any]) -> None:
    for case in MODEL:
        rank0, rank1 = results[case]
        first = next(iter(rank0["features"]))
        assert not torch.equal(rank0["features"][first], rank1["features"][first])
        assert_equal(rank0["params"], rank1["params"])

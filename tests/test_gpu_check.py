"""The GPU check (benchmarks/gpu_check.sh, benchmarks/cow.py) on the CPU, as far as it runs there:
the device is a parameter, so the same script and checks run with ``DEVICE=cpu`` at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import cow

ROOT = Path(__file__).resolve().parents[1]


def test_copy_on_write_check_on_cpu() -> None:
    result = cow.check("cpu", mib=1, rounds=2)
    assert result["ok"] is True
    assert result["values"]["wrong"] == []
    assert set(result["values"]["layers"]) == {"logits", "bn1", "conv2", "bn2", "relu2"}
    assert result["reads"]["cow_after_capture_and_reads"] is True
    assert result["write"]["snapshot_exact_after_write"] is True
    assert set(result["write"]["median_s"]) == {"write", "write after capture", "clone"}


def test_copy_on_write_check_finds_a_wrong_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    import featwrap

    class Cloneless(featwrap.FeatureModel):
        def forward(self, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
            out = super().forward(*args, **kwargs)
            return {k: v.add(1) if k == "bn2" else v for k, v in out.items()}

    monkeypatch.setattr(featwrap, "FeatureModel", Cloneless)
    assert cow.values(torch.device("cpu"))["wrong"] == ["bn2"]


@pytest.mark.slow
def test_gpu_check_script_on_cpu(tmp_path: Path) -> None:
    env = {
        **os.environ, "DEVICE": "cpu", "N": "4", "SIZE": "32", "ROUNDS": "1", "WORKERS": "0",
        "BATCH": "4", "MODELS": "resnet18", "COW_MIB": "1", "TESTS": "0", "PYTHON": sys.executable,
    }  # fmt: skip
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "summary.txt", "throughput.json", "throughput.md", "throughput.log", "cow.json", "cow.log",
    }  # fmt: skip
    assert len(names) <= 8  # what a device run sends back
    results = json.loads((tmp_path / "throughput.json").read_text())
    assert [(r["model"], r["setting"], r["device"]) for r in results] == [
        ("resnet18", "bf16", "cpu"),
        ("resnet18", "bf16+cl", "cpu"),
    ]
    assert json.loads((tmp_path / "cow.json").read_text())["ok"] is True
    summary = (tmp_path / "summary.txt").read_text()
    assert "throughput: exit 0" in summary
    assert "copy-on-write: exit 0" in summary
    assert summary.rstrip().endswith("exit 0")

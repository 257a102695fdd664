"""Two processes under torchrun (CPU, gloo) write what one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

import featwrap
from featwrap.cli import main

N = 13  # 5 shards of 3: rank 0 takes shards 0, 2 and 4, rank 1 shards 1 and 3


def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N):
        Image.new("RGB", (40, 30), (i * 19 % 256, 200 - i * 7, i * 3)).save(images / f"{i:02d}.png")
    (tmp_path / "tiny_model.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3), "
        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n"
    )

    def argv(out: Path) -> list[str]:
        return ["extract", "--model", "tiny_model:build", "--weights", "none", "--layers",
                "0,3,logits", "--data", str(images), "--out", str(out), "--batch-size", "2",
                "--shard-size", "3", "--image-size", "24", "--num-workers", "0", "--quiet"]  # fmt: skip

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # fmt: skip
    done = subprocess.run(
        [*torchrun, "-m", "featwrap", *argv(two)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang, not speed: far beyond any loaded machine
    )
    assert done.returncode == 0, done.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: bit-identical values
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(argv(tmp_path / "one")) == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiny_model", None)
        torch.set_num_threads(threads)

    one, parallel = featwrap.load_features(tmp_path / "one"), featwrap.load_features(two)
    assert parallel.ids == one.ids == [f"{i:02d}.png" for i in range(N)]  # none padded, none lost
    for key in ("0", "3", "logits"):
        assert parallel[key].shape[0] == N
        assert torch.equal(parallel[key], one[key]), key
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest == one.manifest
    assert sorted(p.name for p in two.iterdir()) == ["features.safetensors", "manifest.json"]
    assert (two / "features.safetensors").read_bytes() == (
        tmp_path / "one" / "features.safetensors"
    ).read_bytes()

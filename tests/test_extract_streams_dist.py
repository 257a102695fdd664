"""Streams under torchrun (2 CPU processes, gloo): tar shards and IterableDatasets give the same
output as one process; a DataPipe with a ``sharding_filter()`` is read in parts, one per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import featwrap
from featwrap.cli import main
from tests.streams_data import write_shards

SIZES = [3, 5, 2, 4, 3]  # rank 0 takes shards 0, 2 and 4, rank 1 shards 1 and 3


def test_torchrun_tar_shards_equal_one_process(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "shards", SIZES)
    pattern = str(tmp_path / "shards" / "shard-{00..04}.tar")
    (tmp_path / "tiny_model.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3), "
        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n"
    )

    def argv(out: Path) -> list[str]:
        return ["extract", "--model", "tiny_model:build", "--weights", "none", "--layers",
                "0,3,logits", "--data", pattern, "--out", str(out), "--batch-size", "2",
                "--image-size", "12", "--num-workers", "0", "--quiet"]  # fmt: skip

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # fmt: skip
    done = subprocess.run(
        [*torchrun, "-m", "featwrap", *argv(two)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
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
    assert parallel.ids == one.ids == keys  # none padded, none lost, in shard order
    assert parallel.targets == [i % 3 for i in range(len(keys))]
    for key in ("0", "3", "logits"):
        assert parallel[key].shape[0] == len(keys)
        assert torch.equal(parallel[key], one[key]), key
    assert json.loads((two / "manifest.json").read_text()) == one.manifest
    assert sorted(p.name for p in two.iterdir()) == ["features.safetensors", "manifest.json"]
    assert (two / "features.safetensors").read_bytes() == (
        tmp_path / "one" / "features.safetensors"
    ).read_bytes()


def two_ranks(tmp_path: Path, script: str, out: Path) -> subprocess.CompletedProcess[str]:
    """``script`` run by torchrun in 2 CPU processes, with ``out`` as its argument."""
    path = tmp_path / f"script_{out.name}.py"
    path.write_text(script)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # fmt: skip
    return subprocess.run(
        [*torchrun, str(path), str(out)], env=env, capture_output=True, text=True, timeout=600
    )


SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from featwrap import extract
from tests.text_models import TextEncoder, TextStream, sequences
torch.manual_seed(2)
extract(TextEncoder().eval(), TextStream(sequences(17), length=17), ["embed", "encoder.layers.1"],
        out=sys.argv[1], pool={"encoder.layers.1": "last"}, batch_size=2, shard_size=3,
        progress=True)
"""


def test_torchrun_iterable_dataset_equal_one_process(tmp_path: Path) -> None:
    """Every rank reads the stream and computes its own shards (6 shards: 3 each); rank 0's
    progress bar counts the shards it reads through as well as those it computes."""
    from tests.text_models import TextEncoder, TextStream, sequences

    two = tmp_path / "two"
    done = two_ranks(tmp_path, SCRIPT, two)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "17/17" in done.stderr  # the bar of rank 0 (the others show none)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(2)
        one = featwrap.extract(
            TextEncoder().eval(), TextStream(sequences(17), length=17), ["embed", "encoder.layers.1"],
            out=tmp_path / "one", pool={"encoder.layers.1": "last"}, batch_size=2, shard_size=3,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    parallel = featwrap.load_features(two)
    assert parallel.ids == one.ids == [f"text{i:03d}" for i in range(17)]
    assert torch.equal(parallel["embed"].values(), one["embed"].values())
    assert torch.equal(parallel["embed"].offsets(), one["embed"].offsets())
    assert torch.equal(parallel["encoder.layers.1"], one["encoder.layers.1"])
    assert (two / "features.safetensors").read_bytes() == (
        tmp_path / "one" / "features.safetensors"
    ).read_bytes()


SPLIT_SCRIPT = """
import json
import os
import sys
import torch
torch.set_num_threads(1)
from featwrap import extract
from tests import text_models
torch.manual_seed(2)
extract(text_models.TextEncoder().eval(), text_models.text_pipe(text_models.sequences(17)),
        ["embed", "encoder.layers.1"], out=sys.argv[1], pool={"encoder.layers.1": "last"},
        batch_size=2, shard_size=3, num_workers=0)
with open(sys.argv[1] + "-decoded-" + os.environ["RANK"], "w") as f:
    json.dump(text_models.DECODED, f)
"""


def test_torchrun_a_stream_that_splits_itself_is_read_in_parts(tmp_path: Path) -> None:
    """Each rank decodes only its part (the sharding filter's); the rows are the same, in
    the ranks' block order: rank r's j-th block of 3 samples is shard 2j + r."""
    from tests.text_models import TextEncoder, sequences, text_pipe

    two = tmp_path / "two"
    done = two_ranks(tmp_path, SPLIT_SCRIPT, two)
    assert done.returncode == 0, done.stderr[-3000:]
    decoded = [json.loads(Path(f"{two}-decoded-{r}").read_text()) for r in range(2)]
    assert decoded == [list(range(0, 17, 2)), list(range(1, 17, 2))]  # each its own, once

    parallel = featwrap.load_features(two)
    part = [[f"text{i:03d}" for i in range(r, 17, 2)] for r in range(2)]
    blocks = [part[r][j : j + 3] for j in range(0, 9, 3) for r in range(2)]
    assert parallel.ids == [key for block in blocks for key in block]
    assert parallel.manifest["run"]["rank_split"] == {"by": "apply_sharding", "ranks": 2}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(2)
        model = TextEncoder().eval()
        one = featwrap.extract(
            model, text_pipe(sequences(17)), ["embed", "encoder.layers.1"],
            pool={"encoder.layers.1": "last"}, batch_size=2, shard_size=3,
        )  # fmt: skip
        assert one.ids == sorted(parallel.ids)  # one process: the whole stream, in order
        seqs = sequences(17)
        with torch.no_grad():
            for row, key in enumerate(parallel.ids):
                i = int(key.removeprefix("text"))
                assert torch.equal(parallel["embed"][row], model.embed(seqs[i])), key
                torch.testing.assert_close(
                    parallel["encoder.layers.1"][row], one["encoder.layers.1"][i]
                )
    finally:
        torch.set_num_threads(threads)


HIDDEN_SPLIT_SCRIPT = """
import os
import sys
import torch
torch.set_num_threads(1)
from featwrap import extract
from tests.text_models import TextEncoder, TextStream, sequences
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
seqs = sequences(12)[rank::world]  # split inside, as webdataset's split_by_node does
torch.manual_seed(2)
try:
    extract(TextEncoder().eval(), TextStream(seqs), ["embed"], out=sys.argv[1], batch_size=2,
            shard_size=3, num_workers=0)
except Exception as error:  # each rank's own file: the ranks' stderr lines interleave
    with open(f"{sys.argv[1]}-error-{rank}", "w") as f:
        f.write(f"{type(error).__name__}: {error}")
    raise
"""


def test_torchrun_a_stream_split_out_of_sight_is_refused(tmp_path: Path) -> None:
    """Each rank given another stream would compute shards of different data: refused, by the
    content of the shards every rank reads."""
    out = tmp_path / "out"
    done = two_ranks(tmp_path, HIDDEN_SPLIT_SCRIPT, out)
    assert done.returncode != 0
    for rank in range(2):
        error = Path(f"{out}-error-{rank}").read_text()
        assert error.startswith("DataError: The ranks read different streams: shard 0 holds "
                                "other samples on rank 1"), error  # fmt: skip
        assert "split_by_node" in error
    assert not (out / "manifest.json").exists()

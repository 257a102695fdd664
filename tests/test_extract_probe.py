"""The first batch of a run to disk (the probe that sizes the features file) comes from the run's
own DataLoader: read once, by a worker, like every other batch, while the workers read ahead;
a worker that dies on it is named like one that dies later."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

from featwrap import extract
from featwrap.extraction.errors import DataError
from featwrap.extraction.identity import FINGERPRINT_SAMPLES


class Logged(Dataset[torch.Tensor]):
    """Appends ``pid index`` to a file for every sample read; sample ``dies`` kills its worker."""

    def __init__(self, log: Path, n: int = 40, dies: int | None = None) -> None:
        self.log, self.n, self.dies = log, n, dies

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.dies and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {i} {get_worker_info() is not None}\n")
        return torch.full((3, 4, 4), float(i))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten())


def test_every_batch_is_read_once_by_a_worker(tmp_path: Path) -> None:
    log = tmp_path / "reads.txt"
    data = Logged(log)
    features = extract(_net(), data, ["0"], out=tmp_path / "out", batch_size=4, num_workers=2)
    reads = [line.split() for line in log.read_text().splitlines()]
    by_workers = sorted(int(i) for _, i, worker in reads if worker == "True")
    here = [int(i) for pid, i, _ in reads if int(pid) == os.getpid()]
    assert by_workers == list(range(len(data)))  # each sample once, the first batch's too
    # this process reads only the data's fingerprint and one look at what a sample is
    assert len(here) <= FINGERPRINT_SAMPLES + 1
    with torch.no_grad():
        expected = _net()[0](torch.stack([data[i] for i in range(len(data))]))
    torch.testing.assert_close(features["0"], expected)


def test_a_worker_dying_on_the_first_batch_is_named(tmp_path: Path) -> None:
    data = Logged(tmp_path / "reads.txt", n=16, dies=1)
    with pytest.raises(DataError, match=r"worker died while reading samples (\d+) to (\d+)") as e:
        extract(_net(), data, ["0"], out=tmp_path / "out", batch_size=2, num_workers=1)
    first, last = map(int, re.findall(r"samples (\d+) to (\d+)", str(e.value))[0])
    assert first <= 1 <= last < 8
    assert "num_workers=0 (--num-workers 0)" in str(e.value)

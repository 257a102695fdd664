"""Resume over changed data: changed samples are computed again, other data is refused by name.

Each run is killed (SIGKILL, in a forked child) after some shards are written, the data is
changed, and the run resumed. The expected rows are the model's own forward over the changed data
in the same batches (no featwrap involved), so a resume that mixed old and new rows fails.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from featwrap import ResumeMismatchError, extract
from featwrap.extraction import ResumeWarning
from tests.test_extract_resume import KWARGS, LAYERS, _one_thread, killed, make_net, to_tensor

__all__ = ["_one_thread"]  # the autouse fixture: one thread, bit-identical values

N = 14  # 4 shards of 4 (the last of 2), batches of 2


def write_images(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (10, 10), (i * 11 % 256, i * 29 % 256, 90)).save(root / f"img{i:03d}.png")


def by_hand(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """``LAYERS`` of make_net() over ``inputs``, a plain forward per batch of 2."""
    net = make_net()
    rows: dict[str, list[torch.Tensor]] = {"0": [], "2": [], "logits": []}
    with torch.no_grad():
        for batch in inputs.split(KWARGS["batch_size"]):
            first = net[0](batch)
            rows["0"].append(first)
            rows["2"].append(net[2](net[1](first)))
            rows["logits"].append(net(batch))
    return {k: torch.cat(v) for k, v in rows.items()}


def folder_inputs(root: Path) -> torch.Tensor:
    return torch.stack([to_tensor(Image.open(p).convert("RGB")) for p in sorted(root.iterdir())])


def count_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    run = importlib.import_module("featwrap.extraction.run")
    rows: list[int] = []
    original = run.compute_rows
    monkeypatch.setattr(
        run, "compute_rows", lambda f, x, n, *a: rows.append(n) or original(f, x, n, *a)
    )
    return rows


def test_a_changed_image_is_named_and_its_shard_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images, N)
    kwargs = {**KWARGS, "transform": to_tensor}
    killed("commit:3", extract, make_net(), images, LAYERS, out=out, **kwargs)
    changed = images / "img005.png"  # in shard 1, already written
    stat = changed.stat()
    Image.new("RGB", (10, 10), (250, 3, 3)).save(changed)  # same name, same size, other pixels
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    rows = count_rows(monkeypatch)
    with pytest.warns(ResumeWarning, match=r"1 sample \('img005.png'\) changed .* 1 shards"):
        resumed = extract(make_net(), images, LAYERS, out=out, **kwargs)
    assert sum(rows) == 4 + 2  # shard 1 again, and shard 3 (never written)
    expected = by_hand(folder_inputs(images))
    for key in LAYERS:
        assert torch.equal(resumed[key], expected[key]), key

    # the finished output is not returned as it is once its data changed
    Image.new("RGB", (10, 10), (3, 250, 3)).save(images / "img000.png")
    with pytest.raises(ResumeMismatchError, match=r"same samples with other contents.*--overwrite"):
        extract(make_net(), images, LAYERS, out=out, **kwargs)
    again = extract(make_net(), images, LAYERS, out=out, overwrite=True, **kwargs)
    assert torch.equal(again["logits"], by_hand(folder_inputs(images))["logits"])


def test_added_and_removed_files_are_named(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images, N)
    kwargs = {**KWARGS, "transform": to_tensor}
    killed("commit:2", extract, make_net(), images, LAYERS, out=out, **kwargs)
    (images / "img003.png").rename(images / "img099.png")
    with pytest.raises(
        ResumeMismatchError, match=r"data: 1 added \('img099.png'\); 1 removed \('img003.png'\)"
    ) as info:
        extract(make_net(), images, LAYERS, out=out, **kwargs)
    assert "ids_sha256" not in str(info.value)  # names, not hashes


class Rows(Dataset[torch.Tensor]):
    """A Dataset of its own kind (not a TensorDataset, no files): known by its fingerprint."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_a_dataset_with_other_contents_is_refused(tmp_path: Path) -> None:
    x = torch.randn(N, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "out"
    killed("commit:2", extract, make_net(), Rows(x), LAYERS, out=out, **KWARGS)
    other = torch.randn(N, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ResumeMismatchError, match=r"other contents of this dataset \(14 samples"):
        extract(make_net(), Rows(other), LAYERS, out=out, **KWARGS)
    resumed = extract(make_net(), Rows(x), LAYERS, out=out, **KWARGS)  # the original resumes
    expected = by_hand(x)
    for key in LAYERS:
        assert torch.equal(resumed[key], expected[key]), key


def test_a_changed_tensor_row_is_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(N, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "out"
    killed("commit:3", extract, make_net(), TensorDataset(x), LAYERS, out=out, **KWARGS)
    x2 = x.clone()
    x2[9] += 1  # shard 2
    rows = count_rows(monkeypatch)
    with pytest.warns(ResumeWarning, match=r"1 sample \('9'\) changed"):
        resumed = extract(make_net(), TensorDataset(x2), LAYERS, out=out, **KWARGS)
    assert sum(rows) == 4 + 2
    expected = by_hand(x2)
    for key in LAYERS:
        assert torch.equal(resumed[key], expected[key]), key


def test_unchanged_data_resumes_without_notes(tmp_path: Path, recwarn: Any) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images, N)
    kwargs = {**KWARGS, "transform": to_tensor}
    killed("commit:2", extract, make_net(), images, LAYERS, out=out, **kwargs)
    resumed = extract(make_net(), images, LAYERS, out=out, **kwargs)
    assert not [w for w in recwarn if issubclass(w.category, ResumeWarning)]
    assert torch.equal(resumed["logits"], by_hand(folder_inputs(images))["logits"])

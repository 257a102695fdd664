"""The fixed costs of a run to disk, made smaller without changing what a run records or keeps.

- The weights' sha256 (the run's identity for resuming) is hashed on a thread, overlapping the
  first batch: its value is the one recorded before (a golden digest, and a sha256 written out
  here), of the weights as given (before channels_last), and awaited only after that forward.
- Flushes: a shard's rows are flushed before its marker is written, the marker is not; finalize
  does not flush the rows again. An empty marker (what a crash of the machine can leave) only
  has its shard computed again.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from featwrap import extract, load_features
from featwrap.extraction import store, weights
from featwrap.extraction.weights import WeightsDigest, parameters_digest

#: parameters_digest(fixed_net()) as featwrap computed it before hashing moved to a thread
#: (commit ea88a7a): runs written then resume now.
GOLDEN = "fca8fad27e23cfbcf39b3b72bcf7415445924fdd4942358eb5183d3784e2c113"


def fixed_net() -> nn.Module:
    """Weights set to fixed values (not drawn), so that their bytes are the same everywhere."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Identity())
    with torch.no_grad():
        for i, t in enumerate(net.state_dict().values()):
            t.copy_(torch.arange(t.numel()).reshape(t.shape).to(t.dtype) / (i + 1))
    return net.eval()


def reference_digest(module: nn.Module) -> str:
    """sha256 over ``name|dtype|shape|`` and the bytes (row-major) of each state dict entry."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(6, 3, 8, 8, generator=generator))


def test_digest_is_the_one_recorded_before() -> None:
    net = fixed_net()
    assert reference_digest(net) == GOLDEN
    assert parameters_digest(net) == GOLDEN
    assert WeightsDigest(net).result() == GOLDEN


def test_digest_is_of_the_weights_when_hashing_started() -> None:
    net = fixed_net()
    hashing = WeightsDigest(net)
    with torch.no_grad():  # what a run does meanwhile: new tensors for the parameters
        for p in net.parameters():
            p.data = torch.zeros_like(p)
    assert hashing.result() == GOLDEN
    assert parameters_digest(net) != GOLDEN


def test_a_failure_while_hashing_is_raised_where_the_digest_is_asked_for() -> None:
    net = nn.Linear(2, 2, device="meta")  # no bytes to hash
    with pytest.raises(NotImplementedError):
        parameters_digest(net)
    hashing = WeightsDigest(net)  # does not raise here
    with pytest.raises(NotImplementedError):
        hashing.result()


@pytest.mark.parametrize("channels_last", [False, True])
def test_run_records_the_digest_of_the_weights_as_given(
    channels_last: bool, data: TensorDataset, tmp_path: Path
) -> None:
    net = fixed_net()
    features = extract(net, data, ["0"], out=tmp_path, num_workers=0, channels_last=channels_last)
    assert features.manifest["run"]["parameters_sha256"] == GOLDEN
    assert net[0].weight.is_contiguous()  # left as found
    again = extract(
        fixed_net(), data, ["0"], out=tmp_path, num_workers=0, channels_last=channels_last
    )
    assert torch.equal(again["0"], features["0"])  # the finished run is found, not refused


def test_digest_is_awaited_after_the_first_forward(
    data: TensorDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    net = fixed_net()
    net[0].register_forward_hook(lambda *_: events.append("forward"))
    started, awaited = WeightsDigest.__init__, WeightsDigest.result

    def start(self: WeightsDigest, module: nn.Module) -> None:
        events.append("hashing")
        started(self, module)

    def result(self: WeightsDigest) -> str:
        events.append("awaited")
        return awaited(self)

    monkeypatch.setattr(WeightsDigest, "__init__", start)
    monkeypatch.setattr(WeightsDigest, "result", result)
    extract(net, data, ["0"], out=tmp_path, num_workers=0, batch_size=2)
    assert events[:3] == ["hashing", "forward", "awaited"]
    assert events.count("hashing") == events.count("awaited") == 1


def test_no_digest_for_a_run_in_memory(
    data: TensorDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("the weights were hashed for a run in memory")

    monkeypatch.setattr(weights, "_hash", refuse)
    extract(fixed_net(), data, ["0"], num_workers=0)


class _Recorder:
    """Every write to, flush of and rename of a file, in order (from any thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        for name in ("fsync", "fdatasync", "pwrite"):
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))
        replace = os.replace

        def renamed(src: Any, dst: Any) -> None:
            self._add("replace", Path(dst).name)
            replace(src, dst)

        monkeypatch.setattr(os, "replace", renamed)

    def _wrap(self, name: str, original: Any) -> Any:
        def wrapped(fd: int, *args: Any) -> Any:
            path = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            self._add("sync" if name != "pwrite" else "write", path)
            return original(fd, *args)

        return wrapped

    def _add(self, what: str, path: str) -> None:
        with self.lock:
            self.events.append((what, path))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name files")
def test_rows_are_flushed_before_each_marker_and_only_once(
    data: TensorDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder(monkeypatch)
    extract(fixed_net(), data, ["0"], out=tmp_path, num_workers=0, batch_size=2, shard_size=2)
    events = recorder.events
    partial = "features.safetensors.partial"
    markers = [
        i
        for i, (what, path) in enumerate(events)
        if what == "replace" and re.fullmatch(r"\d{6}\.json", path)
    ]
    assert len(markers) == 3  # one per shard
    for i in [*markers, events.index(("replace", "features.safetensors"))]:
        last_write = max(j for j in range(i) if events[j] == ("write", partial))
        assert ("sync", partial) in events[last_write:i], f"rows not flushed before {events[i]}"
    syncs = [path for what, path in events if what == "sync"]
    # the run's record, the allocated file, each shard's rows, the skipped list, the manifest
    assert sorted(syncs) == sorted(
        ["run.json.tmp", f"{partial}.tmp", *[partial] * 3, "skipped.json.tmp", "manifest.json.tmp"]
    )
    assert torch.equal(load_features(tmp_path)["0"], extract(fixed_net(), data, ["0"])["0"])


def test_an_empty_marker_has_its_shard_computed_again(
    data: TensorDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crash of the machine can leave of a marker that was not flushed: an empty file."""
    whole = extract(fixed_net(), data, ["0"], num_workers=0, batch_size=2)
    original = store.Output.commit
    commits = 0

    def commit_two(self: store.Output, *args: Any) -> None:
        nonlocal commits
        commits += 1
        if commits > 2:
            raise RuntimeError("stopped after two shards")
        original(self, *args)

    monkeypatch.setattr(store.Output, "commit", commit_two)
    with pytest.raises(RuntimeError, match="stopped after two shards"):
        extract(fixed_net(), data, ["0"], out=tmp_path, num_workers=0, batch_size=2, shard_size=2)
    monkeypatch.undo()
    marker = tmp_path / ".featwrap-run" / "shards" / "000001.json"
    assert marker.is_file()
    marker.write_bytes(b"")
    resumed = extract(
        fixed_net(), data, ["0"], out=tmp_path, num_workers=0, batch_size=2, shard_size=2
    )
    assert torch.equal(resumed["0"], whole["0"])

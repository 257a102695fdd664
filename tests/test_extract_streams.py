"""Streaming inputs: tar shards and IterableDatasets, resume after SIGKILL, bad shards and streams.

Values are checked against each sample run alone through the model (hand-written cloning hooks,
tests/reference.py); a resumed run against the same run uninterrupted, bit for bit (one thread).
The killed runs are real subprocesses, told where to die by tests/kill_points.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import IterableDataset

import featwrap
from featwrap import DataError, ResumeMismatchError, extract
from featwrap.extraction.lock import LOCK_FILE
from featwrap.extraction.tars import expand_braces
from tests.reference import reference
from tests.streams_data import image, make_net, to_tensor, write_shards
from tests.text_models import TextEncoder, TextStream, sequences

ROOT = Path(__file__).resolve().parent.parent
SIZES = [5, 3, 6, 4]  # 18 samples in 4 shards
LAYERS = ["0", "2", "logits"]
KWARGS: dict[str, Any] = {"transform": to_tensor, "batch_size": 2, "num_workers": 0}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shards(tmp_path: Path) -> tuple[str, list[str]]:
    keys = write_shards(tmp_path / "shards", SIZES)
    return str(tmp_path / "shards" / "shard-{00..03}.tar"), keys


def alone(paths: list[str], n: int) -> list[dict[str, torch.Tensor]]:
    net, rows = make_net(), []
    with torch.no_grad():
        for i in range(n):
            out, calls = reference(net, paths, to_tensor(image(i))[None])
            rows.append({"logits": out[0], **{p: calls[p][-1][0] for p in paths}})
    return rows


def test_brace_patterns() -> None:
    assert expand_braces("a-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar"]
    assert expand_braces("a-{008..010}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.mark.parametrize("form", ["pattern", "list", "workers"])
def test_tar_shards_against_each_sample_alone(
    shards: tuple[str, list[str]], tmp_path: Path, form: str
) -> None:
    pattern, keys = shards
    data: Any = pattern if form != "list" else [Path(p) for p in expand_braces(pattern)]
    kwargs = {**KWARGS, "num_workers": 2} if form == "workers" else KWARGS
    features = extract(make_net(), data, LAYERS, out=tmp_path / "out", pool={"0": "avg"}, **kwargs)
    assert features.ids == keys  # shard order, then file order: none lost, none twice
    assert features.targets == [i % 3 for i in range(len(keys))]
    expected = alone(["0", "2"], len(keys))
    for i, row in enumerate(expected):
        torch.testing.assert_close(features["0"][i], row["0"].mean((1, 2)))
        torch.testing.assert_close(features["2"][i], row["2"])
        torch.testing.assert_close(features["logits"][i], row["logits"])
    shard_names = [s["name"] for s in features.manifest["shards"]]
    assert [Path(n).name for n in shard_names] == [f"shard-{k:02d}.tar" for k in range(4)]
    assert [s["rows"] for s in features.manifest["shards"]] == SIZES


def test_tar_shards_in_memory_equal_on_disk(shards: tuple[str, list[str]], tmp_path: Path) -> None:
    pattern, _ = shards
    on_disk = extract(make_net(), pattern, LAYERS, out=tmp_path / "out", **KWARGS)
    in_memory = extract(make_net(), pattern, LAYERS, **KWARGS)
    for key in LAYERS:
        assert torch.equal(on_disk[key], in_memory[key])
    assert on_disk.ids == in_memory.ids


class Images(IterableDataset[tuple[torch.Tensor, int]]):
    """A stream of ``(image, class)``, optionally with a length (and ending before it)."""

    def __init__(self, n: int, length: int | None = None) -> None:
        self.n, self.length = n, length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for i in range(self.n):
            yield to_tensor(image(i)), i % 3

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("a stream without a length")
        return self.length


def test_iterable_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = extract(
        make_net(), Images(9, 9), LAYERS, out=tmp_path, shard_size=4, progress=True, **KWARGS
    )
    assert features.ids == [str(i) for i in range(9)]
    assert features.targets == [i % 3 for i in range(9)]
    for i, row in enumerate(alone(["2"], 9)):
        torch.testing.assert_close(features["2"][i], row["2"])
    assert "9/9" in capsys.readouterr().err  # the progress bar knew the total
    unknown = extract(make_net(), Images(9), LAYERS, shard_size=4, **KWARGS)
    for key in LAYERS:
        assert torch.equal(unknown[key], features[key])


def test_text_stream_with_keys() -> None:
    torch.manual_seed(2)
    encoder = TextEncoder().eval()
    seqs = sequences(7)
    features = extract(encoder, TextStream(seqs), ["embed"], pool="avg", batch_size=3)
    assert features.ids == [f"text{i:03d}" for i in range(7)]
    with torch.no_grad():
        for i, seq in enumerate(seqs):
            torch.testing.assert_close(features["embed"][i], encoder.embed(seq).mean(0))


# -- resume after SIGKILL --------------------------------------------------------------------------
SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from featwrap import extract
from tests import kill_points
kill_points.arm(sys.argv[3])
from tests.streams_data import make_net, to_tensor
from tests.text_models import TextEncoder, TextStream, sequences
if sys.argv[1] == "text":
    torch.manual_seed(2)
    extract(TextEncoder().eval(), TextStream(sequences(13)), ["embed", "encoder.layers.1"],
            out=sys.argv[2], pool={"encoder.layers.1": "avg"}, batch_size=2, shard_size=3)
else:
    extract(make_net(), sys.argv[1], ["0", "2", "logits"], out=sys.argv[2], transform=to_tensor,
            batch_size=2, num_workers=0)
"""


def killed_run(tmp_path: Path, kill_at: str, data: str, out: Path) -> None:
    script = tmp_path / "run_extract.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, str(script), data, str(out), kill_at],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def assert_same(actual: featwrap.Features, expected: featwrap.Features) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        if expected[key].is_nested:
            assert torch.equal(actual[key].values(), expected[key].values()), key
            assert torch.equal(actual[key].offsets(), expected[key].offsets()), key
        else:
            assert torch.equal(actual[key], expected[key]), key
    assert actual.ids == expected.ids  # no row lost, none duplicated, in order
    assert actual.manifest == expected.manifest


@pytest.mark.parametrize("kill_at", ["batch:2", "commit:2", "finalize"])
def test_tar_resume_after_sigkill(
    shards: tuple[str, list[str]], tmp_path: Path, kill_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pattern, _keys = shards
    out = tmp_path / "out"
    killed_run(tmp_path, kill_at, pattern, out)
    with pytest.raises(DataError, match="unfinished extraction"):
        featwrap.load_features(out)
    from featwrap.extraction import stream_run

    computed: list[int] = []
    original = stream_run.StreamJob._rows
    monkeypatch.setattr(
        stream_run.StreamJob, "_rows", lambda job, b, n: computed.append(n) or original(job, b, n)
    )
    resumed = extract(make_net(), pattern, LAYERS, out=out, **KWARGS)
    monkeypatch.undo()
    expected = {"batch:2": 18, "commit:2": 18 - 8, "finalize": 0}[kill_at]
    assert sum(computed) == expected  # only the shards without a marker
    assert_same(resumed, extract(make_net(), pattern, LAYERS, out=tmp_path / "ref", **KWARGS))
    assert sorted(p.name for p in out.iterdir()) == ["features.safetensors", "manifest.json"]


def test_stream_resume_after_sigkill_and_changes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed_run(tmp_path, "commit:2", "text", out)
    before = tree_digest(out)
    torch.manual_seed(2)
    encoder = TextEncoder().eval()
    args: dict[str, Any] = {"pool": {"encoder.layers.1": "avg"}, "batch_size": 2, "shard_size": 3}
    layers = ["embed", "encoder.layers.1"]
    other = sequences(13, seed=5)
    with pytest.raises(ResumeMismatchError, match=r"shard 0 was written: the same keys.*content"):
        extract(encoder, TextStream([*other[:1], *sequences(13)[1:]]), layers, out=out, **args)
    with pytest.raises(ResumeMismatchError, match=r"samples were \['text000'.*now \['x000'"):
        extract(encoder, TextStream(sequences(13), name="x"), layers, out=out, **args)
    with pytest.raises(ResumeMismatchError, match=r"ended after 1 shards.*ended early or changed"):
        extract(encoder, TextStream(sequences(13), stop=3), layers, out=out, **args)
    assert tree_digest(out) == before  # nothing written was lost or changed
    resumed = extract(encoder, TextStream(sequences(13)), layers, out=out, **args)
    assert_same(
        resumed, extract(encoder, TextStream(sequences(13)), layers, out=tmp_path / "r", **args)
    )


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE  # who holds the output: not a record of the run
    }


# -- bad input -------------------------------------------------------------------------------------
def test_changed_tar_shard_on_resume(shards: tuple[str, list[str]], tmp_path: Path) -> None:
    pattern, _ = shards
    out = tmp_path / "out"
    killed_run(tmp_path, "commit:2", pattern, out)
    first = Path(expand_braces(pattern)[0])
    write_shards(tmp_path / "other", [5])
    os.replace(tmp_path / "other" / "shard-00.tar", first)
    before = tree_digest(out)
    with pytest.raises(ResumeMismatchError, match=r"shard-00.tar' changed since its rows were"):
        extract(make_net(), pattern, LAYERS, out=out, **KWARGS)
    assert tree_digest(out) == before


def cut(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("not a tar", r"shard-02.tar' is not a readable tar file \(_Truncated: \d+ bytes"),
        ("cut in a member", r"shard-02.tar' is not a readable tar file"),
        ("cut between members", r"it was cut short"),
    ],
)
def test_bad_shard_clear_error_keeps_what_was_written(
    shards: tuple[str, list[str]], tmp_path: Path, damage: str, message: str
) -> None:
    pattern, keys = shards
    bad = Path(expand_braces(pattern)[2])
    if damage == "not a tar":
        bad.write_bytes(b"these are not the bytes of a tar file")
    elif damage == "cut in a member":
        cut(bad, 1536 + 100)
    else:  # a whole number of members: tarfile itself would read it as a shorter shard
        with tarfile.open(bad) as tar:
            members = tar.getmembers()
        cut(bad, members[4].offset)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as info:
        extract(make_net(), pattern, LAYERS, out=out, **KWARGS)
    assert "on_error='skip'" in str(info.value)
    assert sorted(p.name for p in (out / ".featwrap-run" / "shards").iterdir()) == [
        "000000.json",
        "000001.json",
    ]  # the shards before it are kept
    skipped = extract(make_net(), pattern, LAYERS, out=out, on_error="skip", **KWARGS)
    assert skipped.ids == keys[:8] + keys[14:]  # the bad shard left out whole
    assert [s["shard"] for s in skipped.skipped] == [str(bad)]


def test_stream_that_ends_before_its_length(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"len\(\) is 10: the stream ended early"):
        extract(make_net(), Images(7, 10), LAYERS, out=out, shard_size=4, **KWARGS)
    assert len(list((out / ".featwrap-run" / "shards").iterdir())) == 2  # kept


def test_missing_shards_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"2 of the 2 tar shards do not exist \('.*a-0.tar'"):
        extract(make_net(), str(tmp_path / "a-{0..1}.tar"), LAYERS)


class Broken(IterableDataset[dict[str, Any]]):
    """TextStream's samples, but for ``bad``: dicts without the model's ``input_ids``, or the
    stream raising at the first of them (``how="raises"``)."""

    def __init__(self, seqs: list[torch.Tensor], bad: tuple[int, ...] = (), how: str = "") -> None:
        self.seqs, self.bad, self.how = seqs, bad, how

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i, seq in enumerate(self.seqs):
            if i in self.bad and self.how == "raises":
                raise ConnectionResetError("the server closed the connection")
            name = "tokens" if i in self.bad else "input_ids"
            yield {"__key__": f"text{i:03d}", name: seq}


@pytest.mark.parametrize(
    ("bad", "how", "message"),
    [
        ((6, 7), "", r"keys \['tokens', 'attention_mask'\] but lacks \['input_ids'\].*\(samp"),
        ((7,), "", r"keys \['tokens'\] but sample 0 has \['input_ids'\].*\(samples 'text006', "),
        ((7,), "raises", r"failed after 7 samples \(ConnectionResetError: the server closed"),
    ],
    ids=["a batch without the model's keys", "a sample without them", "a stream that raises"],
)
def test_bad_stream_sample_clear_error_keeps_what_was_written(
    tmp_path: Path, bad: tuple[int, ...], how: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(2)
    encoder = TextEncoder().eval()
    args: dict[str, Any] = {"pool": "avg", "batch_size": 2, "shard_size": 3, "num_workers": 0}
    seqs, out = sequences(11), tmp_path / "out"
    with pytest.raises(DataError, match=message) as info:
        extract(encoder, Broken(seqs, bad, how), ["embed"], out=out, **args)
    assert "the shards already written are kept" in str(info.value).lower()
    markers = sorted(p.name for p in (out / ".featwrap-run" / "shards").iterdir())
    assert markers == ["000000.json", "000001.json"]  # the shards before sample 6 are kept
    from featwrap.extraction import stream_run

    computed: list[int] = []
    original = stream_run.StreamJob._rows
    monkeypatch.setattr(
        stream_run.StreamJob, "_rows", lambda job, b, n: computed.append(n) or original(job, b, n)
    )
    resumed = extract(encoder, Broken(seqs), ["embed"], out=out, **args)  # the stream mended
    assert sum(computed) == 11 - 6  # the shards written before were kept and used
    with torch.no_grad():
        for i, seq in enumerate(seqs):
            torch.testing.assert_close(resumed["embed"][i], encoder.embed(seq).mean(0))


def test_a_rank_reads_its_part_of_a_stream_that_splits_itself() -> None:
    """Rank 1 of 2 over a DataPipe with a sharding_filter(), its first block committed before:
    it reads samples 1, 3, 5... only (the filter's part), passes over its committed shard 1 and
    computes shards 3 and 5 (its blocks j at j * 2 + 1)."""
    from featwrap.extraction.streams import ShardBatches, open_stream
    from tests.text_models import text_pipe

    stream = open_stream(text_pipe(sequences(11)), lambda: to_tensor, 2, repr)
    assert stream is not None
    assert stream.split == "apply_sharding"
    items = list(ShardBatches(stream, 2, frozenset({1}), rank=1, world=2))
    seen = [(item[1], item[2]) for item in items if item[0] == "seen"]
    computed = [(item[1], key) for item in items if item[0] == "batch" for key in item[2]]
    assert seen == [(1, ["text001", "text003"])]
    assert computed == [(3, "text005"), (3, "text007"), (5, "text009")]
    assert items[-1] == ("stop", 3)  # three blocks in this rank's part

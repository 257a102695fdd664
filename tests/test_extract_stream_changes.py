"""Streams over changed data: refused where it can be known without reading the data, redone
with ``overwrite=True``.

A finished or killed run over tar shards is refused when a shard's file changed (size or
modification time, recorded per shard), a Dataset of dict samples when its fingerprint changed;
nothing in the output is touched. Values after ``overwrite=True`` are checked against each sample
run alone (tests/reference.py) or a fresh run into another directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from featwrap import ResumeMismatchError, extract
from featwrap.extraction.tars import expand_braces
from tests.streams_data import make_net, write_shards
from tests.test_extract_resume import _one_thread, killed
from tests.test_extract_streams import KWARGS, LAYERS, SIZES, alone, assert_same, tree_digest
from tests.text_models import TextEncoder, Texts, TextStream, sequences

__all__ = ["_one_thread"]  # the autouse fixture: one thread, bit-identical values


@pytest.fixture
def shards(tmp_path: Path) -> tuple[str, list[str]]:
    keys = write_shards(tmp_path / "shards", SIZES)
    return str(tmp_path / "shards" / "shard-{00..03}.tar"), keys


def replace_shard(pattern: str, k: int, root: Path, size: int) -> list[str]:
    """Shard ``k`` becomes one of ``size`` other samples (``image(0)``...); returns its keys."""
    keys = write_shards(root, [size])
    os.replace(root / "shard-00.tar", expand_braces(pattern)[k])
    return keys


def test_a_finished_output_over_a_changed_tar_shard_is_refused(
    shards: tuple[str, list[str]], tmp_path: Path
) -> None:
    pattern, keys = shards
    out = tmp_path / "out"
    extract(make_net(), pattern, LAYERS, out=out, **KWARGS)
    new_keys = replace_shard(pattern, 1, tmp_path / "other", SIZES[1])
    before = tree_digest(out)
    message = r"finished extraction of these tar shards, but 1 of them changed since .*shard-01"
    with pytest.raises(ResumeMismatchError, match=message) as info:
        extract(make_net(), pattern, LAYERS, out=out, **KWARGS)
    assert "overwrite=True" in str(info.value)
    assert tree_digest(out) == before  # nothing touched
    redone = extract(make_net(), pattern, LAYERS, out=out, overwrite=True, **KWARGS)
    assert redone.ids == keys[:5] + new_keys + keys[8:]
    expected = alone(["2"], 8)
    for row in range(5, 8):  # the new shard holds image(0), image(1), image(2)
        torch.testing.assert_close(redone["2"][row], expected[row - 5]["2"])
    torch.testing.assert_close(redone["2"][4], expected[4]["2"])


def test_a_killed_run_over_a_changed_tar_shard_starts_over_with_overwrite(
    shards: tuple[str, list[str]], tmp_path: Path
) -> None:
    pattern, _ = shards
    out = tmp_path / "out"
    killed("commit:2", extract, make_net(), pattern, LAYERS, out=out, **KWARGS)
    replace_shard(pattern, 0, tmp_path / "other", SIZES[0])
    with pytest.raises(ResumeMismatchError, match=r"shard-00.tar' changed since its rows were"):
        extract(make_net(), pattern, LAYERS, out=out, **KWARGS)
    redone = extract(make_net(), pattern, LAYERS, out=out, overwrite=True, **KWARGS)
    assert_same(redone, extract(make_net(), pattern, LAYERS, out=tmp_path / "fresh", **KWARGS))


TEXT: dict[str, Any] = {"pool": {"encoder.layers.1": "avg"}, "batch_size": 2, "shard_size": 3}
TEXT_LAYERS = ["embed", "encoder.layers.1"]


def encoder() -> TextEncoder:
    torch.manual_seed(2)
    return TextEncoder().eval()


def test_a_dict_dataset_that_changed_is_refused_running_and_finished(tmp_path: Path) -> None:
    out, seqs, other = tmp_path / "out", sequences(7), sequences(7, seed=5)
    killed("commit:1", extract, encoder(), Texts(seqs), TEXT_LAYERS, out=out, **TEXT)
    before = tree_digest(out)
    running = r"run started with other contents of this dataset: a fingerprint of 7 of its"
    with pytest.raises(ResumeMismatchError, match=running):
        extract(encoder(), Texts(other), TEXT_LAYERS, out=out, **TEXT)
    assert tree_digest(out) == before
    resumed = extract(encoder(), Texts(seqs), TEXT_LAYERS, out=out, **TEXT)
    assert_same(resumed, extract(encoder(), Texts(seqs), TEXT_LAYERS, out=tmp_path / "a", **TEXT))
    finished = tree_digest(out)
    with pytest.raises(ResumeMismatchError, match=r"extraction of the same samples with other"):
        extract(encoder(), Texts(other), TEXT_LAYERS, out=out, **TEXT)
    assert tree_digest(out) == finished
    redone = extract(encoder(), Texts(other), TEXT_LAYERS, out=out, overwrite=True, **TEXT)
    with torch.no_grad():
        model = encoder()
        for i, seq in enumerate(other):
            torch.testing.assert_close(redone["embed"][i], model.embed(seq))


def test_a_stream_that_changed_starts_over_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed("commit:2", extract, encoder(), TextStream(sequences(13)), TEXT_LAYERS, out=out, **TEXT)
    changed = TextStream([*sequences(13, seed=5)[:1], *sequences(13)[1:]])
    with pytest.raises(ResumeMismatchError, match=r"shard 0 was written: the same keys"):
        extract(encoder(), changed, TEXT_LAYERS, out=out, **TEXT)
    redone = extract(encoder(), changed, TEXT_LAYERS, out=out, overwrite=True, **TEXT)
    assert_same(redone, extract(encoder(), changed, TEXT_LAYERS, out=tmp_path / "fresh", **TEXT))


class Unreadable:
    """Sequences that cannot be read: a TextStream over them fails once iterated."""

    def __getitem__(self, index: Any) -> Any:
        raise AssertionError("a finished output must not read the stream")


def test_a_finished_stream_output_is_returned_without_reading_the_stream(tmp_path: Path) -> None:
    """The documented cost of an IterableDataset: only reading it says what it holds now."""
    out = tmp_path / "out"
    first = extract(encoder(), TextStream(sequences(5)), TEXT_LAYERS, out=out, **TEXT)
    unread = TextStream(Unreadable())  # type: ignore[arg-type]
    again = extract(encoder(), unread, TEXT_LAYERS, out=out, **TEXT)
    assert again.ids == first.ids
    assert torch.equal(again["encoder.layers.1"], first["encoder.layers.1"])

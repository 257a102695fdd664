"""Resuming over the data as it is now: changed samples, the batch size, a finished run's data.

A run records its samples' ids and content keys (:mod:`featwrap.extraction.identity`) and its
batch size in ``run.json``. On resume (rank 0, under the output's lock):

- samples whose content changed are named, and the shards holding them computed again (a Dataset
  known only by its fingerprint cannot say which shards: the resume is refused, naming them);
- the run's own batch size is kept, so that each row is computed in the very batch it would be
  in one uninterrupted run (values can depend on the batch on some backends);
- a finished run whose data changed since is refused rather than returned as it is.

Data read shard by shard (``streams.py``) is checked where that costs no reading of the data: a
tar shard by its file's size and modification time (recorded with each shard), a Dataset of dict
samples by its fingerprint (as any other Dataset). An ``IterableDataset`` can only be known by
reading it: a resumed run checks the committed shards' keys and content as it reads through
them (``stream_run.py``); a finished one is returned as it is (``overwrite=True`` computes it
again).
"""

from __future__ import annotations

from typing import Any

from featwrap.extraction.data import Source
from featwrap.extraction.errors import ResumeMismatchError
from featwrap.extraction.identity import (
    FINGERPRINT_SAMPLES,
    changed_samples,
    content_digest,
    fingerprint,
    identify,
)
from featwrap.extraction.pieces import done_shards
from featwrap.extraction.store import Output, read_record
from featwrap.extraction.streams import Stream

__all__ = ["check_finished", "check_stream", "reconcile", "run_record", "stream_digest"]


def run_record(source: Source, batch_size: int) -> tuple[dict[str, Any], str]:
    """The entries ``run.json`` gets besides the spec, and the content digest for the manifest."""
    identity = identify(source)
    samples = {"ids": list(source.ids), **identity}
    return {"batch_size": batch_size, "samples": samples}, content_digest(identity)


def reconcile(
    output: Output, source: Source, shard_size: int, batch_size: int
) -> tuple[int, list[str], str]:
    """Make the run in ``output`` agree with the data now: ``(batch size to use, notes for the
    user, content digest for the manifest)``."""
    record = output.record()
    notes: list[str] = []
    before = record.get("samples")
    now = identify(source)
    if before is not None:
        changed = changed_samples(before, now)
        if changed and now["keys"] is None:
            raise ResumeMismatchError(
                f"{str(output.root)!r} holds a run started on other contents of this dataset "
                f"({_samples(source, changed)} differ from when it started). Run again with "
                "the original data to resume, or pass overwrite=True (--overwrite) to start over."
            )
        done = output.done_shards()
        redo = [i for i in changed if i // shard_size in done]
        if redo:
            shards = sorted({i // shard_size for i in redo})
            output.drop_shards(shards)
            notes.append(
                f"{_samples(source, redo)} changed since the run started: "
                f"{len(shards)} shards written before are computed again."
            )
        if changed:
            output.update_record(samples={"ids": list(source.ids), **now})
    recorded = int(record.get("batch_size", batch_size))
    if recorded != batch_size:
        notes.append(
            f"batch_size={batch_size} (--batch-size {batch_size}) differs from the run's "
            f"{recorded}: resuming with {recorded}, so that every row is the same as in one "
            "uninterrupted run."
        )
    return recorded, notes, content_digest(now)


def check_finished(output: Output, source: Source) -> None:
    """Refuse a finished run whose data changed since (its features are of other contents)."""
    recorded = read_record(output.manifest).get("content_sha256")
    if recorded is None:
        return  # written before featwrap recorded contents
    _, digest = run_record(source, 0)
    if digest != recorded:
        raise ResumeMismatchError(
            f"{str(output.root)!r} holds an extraction of the same samples with other contents: "
            "files were modified (size or modification time) or the dataset's rows changed since "
            "it finished. Pass overwrite=True (--overwrite) to compute it again, or choose "
            "another output directory."
        )


def _samples(source: Source, indices: list[int], shown: int = 3) -> str:
    names = ", ".join(repr(source.ids[i]) for i in indices[:shown])
    more = f", and {len(indices) - shown} more" if len(indices) > shown else ""
    return f"{len(indices)} sample{'s' if len(indices) != 1 else ''} ({names}{more})"


def stream_digest(stream: Stream) -> str | None:
    """The content digest of a Dataset of dict samples (its fingerprint), recorded in ``run.json``
    and the manifest; ``None`` for tar shards (each file is checked) and an IterableDataset."""
    if stream.kind != "dicts" or stream.total is None:
        return None
    return content_digest({"keys": None, "fingerprint": fingerprint(stream.dataset, stream.total)})


def check_stream(output: Output, stream: Stream, state: str, digest: str | None) -> None:
    """Refuse the run in ``output`` (``state``: ``"running"`` or ``"complete"``) if the data
    changed since it was written, as far as that is known without reading it: the tar shards'
    files, a dict Dataset's fingerprint (``digest``: :func:`stream_digest` now)."""
    finished = state == "complete"
    if finished:
        record = read_record(output.manifest)
        shards = dict(enumerate(s.get("identity") for s in record.get("shards", [])))
    else:
        record = output.record()
        shards = {k: m.get("identity") for k, m in done_shards(output).items()}
    changed = [
        (k, before)
        for k, before in sorted(shards.items())
        if stream.kind == "tar" and k < len(stream.files) and before != stream.identity(k)
    ]
    recorded = record.get("content_sha256")
    redo = "overwrite=True (--overwrite) to compute it again, or choose another output directory"
    if changed and finished:
        names = ", ".join(repr(stream.shard_name(k)) for k, _ in changed[:3])
        more = f", and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ResumeMismatchError(
            f"{str(output.root)!r} holds a finished extraction of these tar shards, but "
            f"{len(changed)} of them changed since (size or modification time): {names}{more}. "
            f"Pass {redo}."
        )
    if changed:
        k, before = changed[0]
        more = f" (and {len(changed) - 1} more shards)" if len(changed) > 1 else ""
        raise ResumeMismatchError(
            f"The shard {stream.shard_name(k)!r} changed since its rows were written ({before} "
            f"-> {stream.identity(k)}){more}. Restore it, or pass overwrite=True (--overwrite) to "
            "start over."
        )
    if recorded is not None and digest is not None and recorded != digest:
        what = "an extraction of the same samples" if finished else "a run started"
        raise ResumeMismatchError(
            f"{str(output.root)!r} holds {what} with other contents of this dataset: a "
            f"fingerprint of {min(stream.total or 0, FINGERPRINT_SAMPLES)} of its samples differs. "
            + (
                f"Pass {redo}."
                if finished
                else "Run again with the original data to resume, or "
                "pass overwrite=True (--overwrite) to start over."
            )
        )

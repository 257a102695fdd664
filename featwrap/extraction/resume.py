"""Resuming over the data as it is now: changed samples, the batch size, a finished run's data.

A run records its samples' ids and content keys (:mod:`featwrap.extraction.identity`) and its
batch size in ``run.json``. On resume (rank 0, under the output's lock):

- samples whose content changed are named, and the shards holding them computed again (a Dataset
  known only by its fingerprint cannot say which shards: the resume is refused, naming them);
- the run's own batch size is kept, so that each row is computed in the very batch it would be
  in one uninterrupted run (values can depend on the batch on some backends);
- a finished run whose data changed since is refused rather than returned as it is.
"""

from __future__ import annotations

from typing import Any

from featwrap.extraction.data import Source
from featwrap.extraction.errors import ResumeMismatchError
from featwrap.extraction.identity import changed_samples, content_digest, identify
from featwrap.extraction.store import Output, read_record

__all__ = ["check_finished", "reconcile", "run_record"]


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

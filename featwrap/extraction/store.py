"""The output directory: a run's arguments, its shards, resume, and the final manifest.

While a run goes on, ``DIR/.featwrap-run/`` holds ``run.json`` (the arguments that determine the
values, and the file plan), ``features.safetensors.partial`` (allocated at full size; each
process writes its shards' rows in place) and ``shards/NNNNNN.json``, one marker per committed
shard, written only after the shard's rows are flushed to disk (the marker itself is not
flushed: one lost in a crash of the machine only has its shard computed again). When every shard is committed,
rank 0 renames the file to ``DIR/features.safetensors`` (leaving out unreadable samples, if any
were skipped, through a compacted copy), writes ``DIR/manifest.json`` and removes the work folder.

Every file is written under a temporary name and renamed, so a process killed at any moment
(SIGKILL included) leaves either the old state or the new one: a shard without its marker is
computed again, and a half-written file is never read. The manifest appears last; its presence
marks a complete run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featwrap._text import dtype_name
from featwrap.extraction.errors import DataError, OutputError, ResumeMismatchError
from featwrap.extraction.lock import LOCK_FILE
from featwrap.extraction.safetensors_file import FilePlan, index_runs
from featwrap.extraction.space import check_space, disk_full, is_disk_full, unwritten_bytes

__all__ = ["FEATURES_FILE", "MANIFEST_FILE", "Output", "read_record", "write_atomic"]

FEATURES_FILE = "features.safetensors"
MANIFEST_FILE = "manifest.json"
WORK_DIR = ".featwrap-run"
_COPY_CHUNK = 64 << 20


def write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file, flushed to disk (unless ``sync`` is
    false), then renamed over it.

    Without ``sync`` the file is still never seen half-written by a process (SIGKILL included),
    but may be lost, or found empty, after the machine itself goes down: only for a file whose
    loss is harmless (a shard's marker: the shard is computed again)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full(path.parent, error, f"writing {path.name}", len(data)) from error
        raise
    os.replace(tmp, path)


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()


@dataclass
class Output:
    """One output directory, as seen by one process."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def features(self) -> Path:
        return self.root / FEATURES_FILE

    @property
    def work(self) -> Path:
        return self.root / WORK_DIR

    @property
    def run_json(self) -> Path:
        return self.work / "run.json"

    @property
    def partial(self) -> Path:
        return self.work / (FEATURES_FILE + ".partial")

    @property
    def shards(self) -> Path:
        return self.work / "shards"

    # -- the state of the directory ----------------------------------------------------------
    def check_writable(self) -> None:
        """Create the directory if needed and check that files can be written in it."""
        probe = self.root / ".featwrap-write-test"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise OutputError(
                f"Cannot write to the output directory {str(self.root)!r}: {reason}. Choose a "
                "writable directory (--out DIR)."
            ) from error

    def previous_spec(self) -> tuple[str, dict[str, Any] | None]:
        """``("new" | "running" | "complete", the spec that run was started with)``."""
        if self.manifest.is_file():
            return "complete", read_record(self.manifest).get("run")
        if self.run_json.is_file():
            return "running", read_record(self.run_json, "spec", "layout")["spec"]
        ours = {WORK_DIR, FEATURES_FILE, ".featwrap-write-test", LOCK_FILE}
        foreign = [p.name for p in self.root.iterdir() if p.name not in ours]
        if foreign or self.features.exists():
            shown = ", ".join(sorted(foreign)[:3]) or FEATURES_FILE
            raise ResumeMismatchError(
                f"The output directory {str(self.root)!r} is not empty ({shown}...) and holds no "
                "featwrap run. Choose a new or empty directory (--out DIR); nothing was written."
            )
        return "new", None

    def start(
        self,
        spec: dict[str, Any] | Callable[[], dict[str, Any]],
        overwrite: bool,
        ids: list[str] | None = None,
    ) -> str:
        """Check ``spec`` against what the directory holds: ``"new"``, ``"running"`` (resume) or
        ``"complete"``. Raises :class:`ResumeMismatchError` if it holds another run (naming the
        samples added or removed, from ``ids``, the samples' ids now). A callable ``spec`` is
        called only when the directory holds a run."""
        self.check_writable()
        try:
            state, previous = self.previous_spec()
        except DataError:  # a corrupt record
            if not overwrite:
                raise
            self.remove_run()
            return "new"
        wanted = None if state == "new" else spec() if callable(spec) else spec
        if wanted is not None and previous != wanted:
            if overwrite:
                self.remove_run()
                return "new"
            what = "finished" if state == "complete" else "started"
            changes = describe_changes(previous or {}, wanted)
            before = self.previous_ids(state)
            if ids is not None and before is not None and before != ids:
                from featwrap.extraction.identity import sample_ids_change

                changes = _ID_HASHES.sub("", changes).strip("; ")
                changes = "; ".join(
                    filter(None, [f"data: {sample_ids_change(before, ids)}", changes])
                )
            raise ResumeMismatchError(
                f"{str(self.root)!r} holds a run {what} with other arguments or data "
                f"({changes}). Run again with the original "
                "arguments to resume, pass overwrite=True (--overwrite) to start over, or choose "
                "another output directory."
            )
        if state == "new" and self.work.exists():
            shutil.rmtree(self.work)  # a start killed before run.json was written
        if state == "complete" and self.work.exists():
            shutil.rmtree(self.work)  # killed after the manifest, before the clean-up
        return state

    def previous_ids(self, state: str) -> list[str] | None:
        """The sample ids of the run the directory holds, when it recorded them."""
        if state == "complete":
            manifest = read_record(self.manifest)
            if "ids" not in manifest:
                return None
            kept = iter(manifest["ids"])
            skipped = {int(s["index"]): str(s["id"]) for s in manifest.get("skipped", [])}
            n = len(manifest["ids"]) + len(skipped)
            return [skipped[i] if i in skipped else next(kept) for i in range(n)]
        samples = self.record().get("samples")
        return None if samples is None else list(samples["ids"])

    def remove_run(self) -> None:
        """Delete featwrap's own files (never anything else)."""
        for path in (self.manifest, self.features):
            path.unlink(missing_ok=True)
        if self.work.exists():
            shutil.rmtree(self.work)

    def create(
        self, spec: dict[str, Any], plan: FilePlan, extra: dict[str, Any] | None = None
    ) -> None:
        """Start a new run: ``run.json`` (``spec``, ``plan`` and ``extra`` entries), then the
        allocated partial file (rank 0 only)."""
        check_space(self.root, plan.file_bytes, f"the features file ({FEATURES_FILE})")
        self.shards.mkdir(parents=True, exist_ok=True)
        record = {"spec": spec, "layout": plan.to_json(), **(extra or {})}
        write_atomic(self.run_json, _dump(record))
        self.allocate(plan)

    def record(self) -> dict[str, Any]:
        """``run.json`` of the run in progress."""
        return read_record(self.run_json, "spec", "layout")

    def update_record(self, **entries: Any) -> None:
        """Replace entries of ``run.json`` (written whole, as always)."""
        write_atomic(self.run_json, _dump({**self.record(), **entries}))

    def drop_shards(self, shards: list[int]) -> None:
        """Forget committed shards (their rows are computed again)."""
        for shard in shards:
            (self.shards / f"{shard:06d}.json").unlink(missing_ok=True)

    def allocate(self, plan: FilePlan) -> None:
        for marker in self.shards.glob("*.json"):
            marker.unlink()  # markers describe rows of a file that is being replaced
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(plan.header())
            f.truncate(plan.file_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.partial)

    def plan(self) -> FilePlan:
        return FilePlan.from_json(read_record(self.run_json, "layout")["layout"])

    def resume(self, plan: FilePlan) -> None:
        """Make a resumed run consistent: a missing or wrong-sized partial file is allocated
        again (and its markers dropped), unless the final file is already in place."""
        if self.features.is_file():
            return
        if not self.partial.is_file() or self.partial.stat().st_size != plan.file_bytes:
            self.allocate(plan)
        rest = unwritten_bytes(self.partial, plan.file_bytes)
        check_space(self.root, rest, f"the rest of the features file ({FEATURES_FILE})")

    # -- shards ----------------------------------------------------------------------------------
    def done_shards(self) -> dict[int, dict[str, Any]]:
        """The committed shards' markers ``{shard: {"rows": [a, b], "skipped": [...]}}``."""
        done: dict[int, dict[str, Any]] = {}
        for marker in self.shards.glob("*.json"):
            try:
                done[int(marker.stem)] = read_record(marker, "rows", "skipped")
            except (DataError, ValueError):
                marker.unlink()  # damaged from outside (ours are written whole): computed again
        return done

    def commit(self, shard: int, rows: tuple[int, int], skipped: list[dict[str, Any]]) -> None:
        """Write the shard's marker; its rows must be on disk already (flushed by the caller).
        The marker itself is not flushed: lost in a crash of the machine, or found empty, it
        only has the shard computed again (:meth:`done_shards`)."""
        write_atomic(
            self.shards / f"{shard:06d}.json",
            _dump({"shard": shard, "rows": list(rows), "skipped": skipped}),
            sync=False,
        )

    # -- the end ---------------------------------------------------------------------------------
    def finalize(
        self,
        plan: FilePlan,
        n_shards: int,
        ids: list[str],
        targets: list[int] | None,
        manifest: dict[str, Any],
    ) -> dict[str, Any]:
        """Put the features file in place, then the manifest (rank 0, once every shard is in).

        ``manifest`` gets each layer's ``shape`` and ``dtype``, the dataset's ``samples`` count,
        ``rows``, ``ids`` (and ``targets``) of the kept samples and ``skipped`` (index, id and
        error of each unreadable sample left out) added; it is returned.
        """
        if not self.features.is_file() or self.partial.exists():
            markers = self.done_shards()
            missing = [k for k in range(n_shards) if k not in markers]
            if missing:
                raise OutputError(
                    f"{len(missing)} shards of {str(self.root)!r} were not written (first: "
                    f"{missing[0]}); run the same extraction again to finish them."
                )
            skipped = sorted(
                (s for k in range(n_shards) for s in markers[k]["skipped"]),
                key=lambda s: int(s["index"]),
            )
            write_atomic(self.work / "skipped.json", _dump(skipped))
            if skipped:
                self._compact(plan, {int(s["index"]) for s in skipped})
            else:  # every row is on disk: each shard's were flushed before its marker
                os.replace(self.partial, self.features)
        skipped = json.loads((self.work / "skipped.json").read_text())
        gone = {int(s["index"]) for s in skipped}
        rows = len(ids) - len(gone)
        for layer in plan.layers:
            entry = manifest["layers"].setdefault(layer.key, {})
            entry["shape"] = [rows, *layer.shape]
            entry["dtype"] = dtype_name(layer.torch_dtype)
        manifest["samples"] = len(ids)
        manifest["rows"] = rows
        manifest["ids"] = [i for n, i in enumerate(ids) if n not in gone]
        if targets is not None:
            manifest["targets"] = [t for n, t in enumerate(targets) if n not in gone]
        manifest["skipped"] = skipped
        write_atomic(self.manifest, _dump(manifest))
        shutil.rmtree(self.work, ignore_errors=True)
        return manifest

    def _compact(self, plan: FilePlan, gone: set[int]) -> None:
        """Copy the partial file without the rows of skipped samples, then swap it in."""
        keep = index_runs(i for i in range(plan.rows) if i not in gone)
        small = plan.with_rows(sum(b - a for a, b in keep))
        what = f"assembling {FEATURES_FILE} without the {len(gone)} skipped samples (a copy)"
        check_space(self.root, small.file_bytes, what)
        tmp = self.features.with_name(self.features.name + ".tmp")
        try:
            self._copy_rows(plan, small, keep, tmp)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if is_disk_full(error):
                raise disk_full(self.root, error, what, small.file_bytes) from error
            raise
        os.replace(tmp, self.features)
        self.partial.unlink()

    def _copy_rows(
        self, plan: FilePlan, small: FilePlan, keep: list[tuple[int, int]], tmp: Path
    ) -> None:
        with open(self.partial, "rb") as src, open(tmp, "wb") as dst:
            dst.write(small.header())
            dst.truncate(small.file_bytes)
            for layer in plan.layers:
                rb = layer.row_bytes
                dst.seek(small.data_start + small[layer.key].start)
                for a, b in keep:
                    _copy(src, plan.data_start + layer.start + a * rb, (b - a) * rb, dst)
            dst.flush()
            os.fsync(dst.fileno())


def _copy(src: Any, offset: int, n: int, dst: Any) -> None:
    """Append ``n`` bytes of ``src`` from ``offset`` to ``dst`` (its position), in chunks."""
    src.seek(offset)
    while n > 0:
        chunk = src.read(min(n, _COPY_CHUNK))
        if not chunk:
            raise OutputError(f"{src.name!r} is shorter than its header says; run again.")
        dst.write(chunk)
        n -= len(chunk)


def read_record(path: Path, *keys: str) -> dict[str, Any]:
    """One of the run's JSON files, which must be an object holding ``keys``; a corrupt one
    raises :class:`DataError` telling how to start over (the file is left as it is)."""
    try:
        obj = json.loads(path.read_bytes())
        problem = "" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"
        missing = [k for k in keys if not problem and k not in obj]
        problem = problem or (f"no {missing[0]!r} entry" if missing else "")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"not valid JSON: {error}"
    if problem:
        raise DataError(
            f"{str(path)!r} is corrupt ({problem}), so the extraction in "
            f"{str(path.parent)!r} cannot be read or resumed. Run it again with overwrite=True "
            "(--overwrite) to compute it anew, or restore the file."
        )
    return obj  # type: ignore[no-any-return]


_ID_HASHES = re.compile(r"ids_sha256: \S+ -> [^;\s]+")


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The fields that differ: ``"dtype: None -> 'float16'; layers: 'conv2' removed"``.

    >>> describe_changes({"pool": {"a": "none"}, "n": 3}, {"pool": {"a": "avg"}, "n": 4})
    "n: 3 -> 4; pool: 'a' 'none' -> 'avg'"
    """
    parts = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            changes = [f"{k!r} removed" for k in before if k not in after]
            changes += [f"{k!r} added" for k in after if k not in before]
            changes += [
                f"{k!r} {_short(before[k])} -> {_short(after[k])}"
                for k in before
                if k in after and before[k] != after[k]
            ]
            parts.append(f"{key}: {', '.join(changes)}")
        else:
            parts.append(f"{key}: {_short(before)} -> {_short(after)}")
    return "; ".join(parts) or "same arguments"


def _short(value: Any, n: int = 40) -> str:
    text = repr(value) if value is None or isinstance(value, (str, int, float)) else str(value)
    return text if len(text) <= n else text[: n - 3] + "..."

"""``featwrap.extract``: run a backbone over a dataset and keep chosen layers' features."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featwrap._modes import evaluating
from featwrap._options import OnError
from featwrap._text import dtype_name
from featwrap.errors import FeatwrapTypeError, FeatwrapValueError
from featwrap.extraction.data import (
    Source,
    default_transform,
    first_readable,
    make_loader,
    model_input,
    resolve_source,
    stable_repr,
)
from featwrap.extraction.errors import DataError, ResumeMismatchError, ResumeWarning
from featwrap.extraction.inputs import Parameters
from featwrap.extraction.jobs import (
    ModelRecord,
    claimed_output,
    model_manifest,
    model_spec,
    spec_mismatch,
)
from featwrap.extraction.load import Features, load_features
from featwrap.extraction.plan import Step, plan_batches
from featwrap.extraction.pool import PoolSpec, resolve_pools
from featwrap.extraction.ranks import Ranks
from featwrap.extraction.resume import check_finished, reconcile, run_record
from featwrap.extraction.rows import Forward, compute_rows, feature_forward
from featwrap.extraction.safetensors_file import FilePlan
from featwrap.extraction.sinks import FileSink, MemorySink, Sink
from featwrap.extraction.speed import Speed, model_format
from featwrap.extraction.store import Output
from featwrap.extraction.stream_run import StreamJob
from featwrap.extraction.streams import Stream, open_stream
from featwrap.hub import LoadedModel, load_model_noted
from featwrap.layers import LayerSpec
from featwrap.model import FeatureModel

__all__ = ["extract"]


#: ``(indices read, rows, (index, error) of unreadable samples)`` of one batch
_Computed = tuple[list[int], dict[str, torch.Tensor] | None, list[tuple[int, str]]]


def extract(
    model: nn.Module | LoadedModel | str,
    data: Any,
    layers: LayerSpec | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    pool: PoolSpec | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    weights: str | None = "none",
    image_size: int | None = None,
    transform: Callable[[Any], Any] | None = None,
    on_error: str = "fail",
    shard_size: int = 1024,
    overwrite: bool = False,
    progress: bool | None = False,
    autocast: torch.dtype | str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    pin_memory: bool | None = None,
) -> Features:
    """Run ``model`` over ``data`` and keep the features of ``layers``, one row per sample.

    Args:
        model: a module, a :class:`~featwrap.FeatureModel` (then ``layers`` may be omitted), a
            ``LoadedModel`` or a name for :func:`featwrap.hub.load_model`
            (``"torchvision:resnet18"``), loaded with ``weights`` (``"auto"``: pretrained weights
            when cached locally, else seeded random ones, with a warning).
        data: a DataLoader (its dataset, batch size, collate_fn and worker settings are used; its
            sampler is not: rows come in dataset order), a map-style Dataset, or a folder of images
            (searched recursively; flat or one subfolder per class) or one image file; or, read
            shard by shard: an ``IterableDataset``, webdataset-style tar shards (a brace pattern
            ``"shards/s-{000..099}.tar"``, a list of paths) or a Dataset of dict samples.
            Dict samples go to the model as keyword arguments (the keys its forward names),
            variable-length sequences padded, with an ``attention_mask``.
        layers: module paths, globs or ``{path: alias}`` as for FeatureModel; ``"logits"`` (when no
            submodule has that name) is the model's own output.
        out: ``None`` returns the features in memory; a directory streams them to disk
            (``features.safetensors`` and ``manifest.json``), resuming a run killed before it
            finished, and returns them memory-mapped.
        pool: ``"none"``, ``"avg"``, ``"max"``, ``"flatten"``, ``"first"``, ``"last"`` or a
            callable, for every layer or as ``{layer key: pool}``; ``avg``/``max`` reduce the dims
            after the channel dim. Token features ``(N, L, D)`` of a batch with an attention mask
            are pooled over the real tokens; with ``"none"`` they are kept per token (a jagged
            nested tensor: ``features[key][i]`` is sample ``i``'s ``(length, D)``).
        dtype: store floating-point features in this dtype (``torch.float16``, ``"bfloat16"``).
        device: where the model runs (default: the module's device; for a model name, CUDA when
            available). Under ``torchrun`` each process uses ``cuda:LOCAL_RANK``.
        batch_size: samples per forward (default: the DataLoader's, else 32).
        num_workers: DataLoader workers (default: the DataLoader's, else up to 4).
        weights: for a model name: ``"none"`` (seeded random), ``"auto"``, a weights name or a
            checkpoint file.
        image_size: for image folders: resize and center-crop to this size.
        transform: for image folders: the transform applied to each PIL image (default: the
            weights' own preprocessing, else resize, crop and ImageNet normalization).
        on_error: an unreadable sample: ``"fail"`` stops, naming it; ``"skip"`` leaves it out
            and records it (``Features.skipped``, the manifest).
        shard_size: rows per shard, the unit of work of a process and of resuming.
        overwrite: when ``out`` holds a run with other arguments, delete it and start over
            (only featwrap's own files are deleted).
        progress: show a progress bar (``None``: when stderr is a terminal).
        autocast: run the forwards under autocast in this dtype (``"bfloat16"``, ``"float16"``).
        channels_last: the model and 4-D inputs in ``torch.channels_last`` memory format.
        compile: ``torch.compile`` the forward.
        pin_memory: batches through pinned memory, copied without blocking (default: on CUDA;
            ignored without CUDA).

    Returns:
        :class:`~featwrap.Features`: ``{layer key: tensor (rows, ...)}`` with ``ids``.

    Under ``torchrun`` (or an initialized process group) each process takes every N-th shard and
    rank 0 writes the manifest once all are in; the output is the same as with one process.
    """
    on_error = OnError.parse(on_error, "on_error").value
    _check_sizes(shard_size=shard_size, batch_size=batch_size, image_size=image_size)
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise FeatwrapValueError(
            f"num_workers={num_workers!r} (--num-workers {num_workers}) is not a number of "
            "DataLoader workers: pass 0 (read in this process) or more, or leave it out (auto)."
        )
    store_dtype = _dtype(dtype)
    speed = Speed.parse(autocast, channels_last, compile, pin_memory)
    resolved = _resolve_model(model, weights)
    module = resolved.module
    run_device = _device(device, module, by_name=isinstance(model, str))

    def images() -> Callable[[Any], Any]:
        return transform or default_transform(module, resolved.preset, image_size)

    stream = open_stream(data, images, shard_size, stable_repr)
    forward, paths = feature_forward(module, layers)
    keys = list(paths)
    pools = resolve_pools(pool, keys)
    fast = speed.wrap(forward, run_device)
    if stream is not None:
        stream_job = _stream_job(
            stream, resolved, fast, paths, pools, store_dtype, run_device, batch_size,
            num_workers, on_error, progress, speed,
        )  # fmt: skip
        with _prepared(module, run_device, forward), model_format(module, speed):
            if out is None:
                return stream_job.in_memory()
            return stream_job.to_directory(Path(out), overwrite, module)
    source = resolve_source(data, images)
    if out is not None:
        resolved.start_digest()  # for the run's spec, of the weights as they were given
    job = _Job(
        resolved, source, fast, paths, pools, store_dtype, run_device,
        batch_size or source.batch_size or 32, num_workers, on_error, shard_size, progress,
        speed=speed,
    )  # fmt: skip
    with _prepared(module, run_device, forward), model_format(module, speed):
        if out is None:
            return job.in_memory()
        return job.to_directory(Path(out), overwrite)


class _prepared:
    """Eval mode and the device for the run; the model is left as it was found afterwards."""

    def __init__(self, module: nn.Module, device: torch.device, forward: Forward) -> None:
        self.module, self.device, self.forward = module, device, forward

    def __enter__(self) -> None:
        self.evaluating = evaluating(self.module)
        self.evaluating.__enter__()
        self.moved_from = _module_device(self.module)
        if self.moved_from is not None and self.moved_from != self.device:
            self.module.to(self.device)

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.forward, FeatureModel) and self.forward is not self.module:
            self.forward.remove_hooks()  # ours; a FeatureModel given as the model keeps its own
        if self.moved_from is not None and self.moved_from != self.device:
            self.module.to(self.moved_from)
        self.evaluating.__exit__(None, None, None)


@dataclass
class _Job:
    model: ModelRecord
    source: Source
    forward: Forward
    paths: dict[str, str]
    pools: dict[str, Any]
    dtype: torch.dtype | None
    device: torch.device
    batch_size: int
    num_workers: int | None
    on_error: str
    shard_size: int
    progress: bool | None
    speed: Speed = field(default_factory=Speed)
    #: batches already computed (by the probe), by their indices
    ready: dict[tuple[int, ...], _Computed] = field(default_factory=dict)
    #: the DataLoader the probe started, reading ahead while the first batch's forward runs
    started: _Started | None = None

    @property
    def n(self) -> int:
        return len(self.source.ids)

    # -- in memory -------------------------------------------------------------------------------
    def in_memory(self) -> Features:
        sink = MemorySink(self.n)
        steps = plan_batches(self.n, self.n, self.batch_size, [0])
        self._run(steps, lambda: sink, Ranks(), done_rows=0)
        tensors = sink.result()
        if not tensors:
            raise DataError(f"No sample of {self.source.description} could be read.")
        gone = {int(s["index"]) for s in sink.skipped}
        ids = [i for n, i in enumerate(self.source.ids) if n not in gone]
        manifest = self._manifest()
        for key, value in tensors.items():
            manifest["layers"][key].update(shape=list(value.shape), dtype=dtype_name(value.dtype))
        manifest.update(samples=self.n, rows=len(ids), ids=ids, skipped=sink.skipped)
        if self.source.targets is not None:
            targets = self.source.targets
            manifest["targets"] = [t for n, t in enumerate(targets) if n not in gone]
        return Features({k: tensors[k] for k in self.paths}, ids, sink.skipped, manifest)

    # -- on disk ---------------------------------------------------------------------------------
    def to_directory(self, root: Path, overwrite: bool) -> Features:
        with claimed_output(root, self.device, self.model.module) as (output, ranks, device):
            self.device = device
            return self._locked(output, overwrite, ranks)

    def _locked(self, output: Output, overwrite: bool, ranks: Ranks) -> Features:
        n_shards = -(-self.n // self.shard_size)
        opened = ranks.first(lambda: self._open(output, overwrite, ranks.shards(n_shards)))
        spec = self._spec()
        (state, plan, batch_size, digest), first_spec = ranks.broadcast((opened, spec))
        ranks.agree(spec_mismatch(first_spec, spec, ranks.rank))
        if state == "complete":
            return load_features(output.root)
        self.batch_size = batch_size  # the run's own: rows as in one uninterrupted run
        done = output.done_shards()
        mine = ranks.shards(n_shards)
        steps = plan_batches(self.n, self.shard_size, self.batch_size, mine)
        done_rows = sum(len(s.indices) for s in steps if s.shard in done)
        steps = [s for s in steps if s.shard not in done]
        error = None
        try:
            if steps:
                self._run(steps, lambda: FileSink(output, plan), ranks, done_rows)
        except Exception as e:
            error = e
        ranks.agree(error)
        manifest = {**self._manifest(spec), "content_sha256": digest}
        ids, targets = self.source.ids, self.source.targets
        ranks.first(lambda: output.finalize(plan, n_shards, ids, targets, manifest))
        return load_features(output.root)

    def _open(
        self, output: Output, overwrite: bool, shards: list[int]
    ) -> tuple[str, FilePlan, int, str]:
        """Rank 0 (which computes ``shards``): check the directory against the run's spec and the
        data; start or resume the run in it. Returns the state, the file plan, the batch size and
        the data's digest.

        A new run asks for its spec (the weights' digest, hashed on a thread) only after its
        first batch is computed, so that hashing overlaps the DataLoader's start and that
        forward."""
        state = output.start(self._spec, overwrite, self.source.ids)
        if state != "new":
            try:
                return self._reopen(output, state)
            except ResumeMismatchError:  # the data changed since
                if not overwrite:
                    raise
                output.remove_run()
        plan = self._probe_plan(shards)
        record, digest = run_record(self.source, self.batch_size)
        output.create(self._spec(), plan, record)
        return "new", plan, self.batch_size, digest

    def _reopen(self, output: Output, state: str) -> tuple[str, FilePlan, int, str]:
        if state == "complete":
            check_finished(output, self.source)
            return state, FilePlan(0, ()), self.batch_size, ""
        plan = output.plan()
        batch_size, notes, digest = reconcile(output, self.source, self.shard_size, self.batch_size)
        for note in notes:
            warnings.warn(note, ResumeWarning, stacklevel=_caller_level())
        output.resume(plan)
        return state, plan, batch_size, digest

    def _probe_plan(self, shards: list[int]) -> FilePlan:
        """Feature shapes and dtypes, from the first batch (kept: the loop does not compute it
        again), or from the first readable sample if that whole batch is unreadable.

        The first batch comes from the run's own DataLoader (kept for the loop), whose workers
        read the next batches while its forward runs."""
        steps = plan_batches(self.n, self.shard_size, self.batch_size, shards)
        loader = make_loader(
            self.source, [s.indices for s in steps], self.num_workers, self.speed.pins(self.device)
        )
        batches = iter(loader)
        try:
            indices, batch, failed = next(batches)
        except (RuntimeError, ConnectionError, EOFError) as error:
            if not _worker_death(error, loader.num_workers):
                raise
            raise self._worker_died(_ahead(loader, steps), error, batches) from error
        self.started = _Started([s.indices for s in steps[1:]], loader, batches)
        if failed and self.on_error == "fail":
            raise self._unreadable(*failed[0])
        try:
            rows = None if batch is None else self._rows(batch, indices)
        except RuntimeError as error:  # PyTorch's SIGCHLD handler raises where it lands
            if not _worker_death(error, loader.num_workers):
                raise
            raise self._worker_died(_ahead(loader, steps[1:]), error, batches) from error
        self.ready[tuple(steps[0].indices)] = (indices, rows, failed)
        if rows is None:
            _, batch = first_readable(self.source, True, self._unreadable)
            rows = self._rows(batch, [0])
        shapes = {k: (tuple(v.shape[1:]), v.dtype) for k, v in rows.items()}
        return FilePlan.plan(self.n, shapes, {"format": "pt"})

    def _rows(self, batch: Any, indices: list[int]) -> dict[str, torch.Tensor]:
        return compute_rows(
            self.forward, model_input(batch), len(indices), self.pools, self.dtype, self.device
        )

    # -- the loop --------------------------------------------------------------------------------
    def _run(
        self, steps: list[Step], open_sink: Callable[[], Sink], ranks: Ranks, done_rows: int
    ) -> Sink:
        """Compute and write every step's rows, committing each shard after its last batch."""
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        wanted = [s.indices for s in steps if tuple(s.indices) not in self.ready]
        started, self.started = self.started, None
        if started is not None and started.batches == wanted:
            loader, batches = started.loader, started.batches_left
        else:
            loader = make_loader(
                self.source, wanted, self.num_workers, self.speed.pins(self.device)
            )
            batches = iter(loader)
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        total = done_rows + sum(len(s.indices) for s in steps)
        sink = open_sink()
        bar = tqdm(
            total=total,
            initial=done_rows,
            unit="item",
            disable=not show or ranks.rank != 0,
            dynamic_ncols=True,
            desc="extract",
        )
        failure: BaseException | None = None
        try:
            self._loop(steps, loader, batches, sink, bar)
        except BaseException as e:
            failure = e
            raise
        finally:
            bar.close()
            try:
                sink.close()  # waits for the queued writes and commits
            except Exception:
                if failure is None:
                    raise
        return sink

    def _loop(self, steps: list[Step], loader: Any, batches: Any, sink: Sink, bar: Any) -> None:
        skipped: list[dict[str, Any]] = []
        shapes: dict[str, tuple[int, ...]] | None = None
        loaded = [s for s in steps if tuple(s.indices) not in self.ready]  # the loader's batches
        read = 0
        for step in steps:
            ready = self.ready.pop(tuple(step.indices), None)
            if ready is not None:  # computed by the probe
                indices, rows, failed = ready
            else:
                try:
                    indices, batch, failed = next(batches)
                except (RuntimeError, ConnectionError, EOFError) as error:
                    if not _worker_death(error, loader.num_workers):
                        raise
                    raise self._worker_died(
                        _ahead(loader, loaded[read:]), error, batches
                    ) from error
                read += 1
                try:
                    rows = None if batch is None else self._rows(batch, indices)
                except RuntimeError as error:  # PyTorch's SIGCHLD handler raises where it lands
                    if not _worker_death(error, loader.num_workers):
                        raise
                    raise self._worker_died(
                        _ahead(loader, loaded[read:]), error, batches
                    ) from error
            for index, problem in failed:
                if self.on_error == "fail":
                    raise self._unreadable(index, problem)
                skipped.append({"index": index, "id": self.source.ids[index], "error": problem})
            if rows is not None:
                shapes = _check_shapes(rows, shapes, indices, self.source.ids)
                sink.write(indices, rows)
            bar.update(len(indices) + len(failed))
            if step.last:
                sink.commit(step.shard, step.span, skipped)
                skipped = []

    def _worker_died(self, steps: list[Step], error: Exception, batches: Any) -> DataError:
        """A worker process died (a crash in a decoder, the OOM killer): the samples it may
        have been reading are those of the batches in flight.

        The other workers are stopped first: PyTorch's SIGCHLD handler raises the death again
        wherever it lands while the loader's workers are registered (in the cleanup that
        releases the output's lock, replacing this error)."""
        shutdown = getattr(batches, "_shutdown_workers", None)  # a multi-process iterator's
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()
        first, last = steps[0].indices[0], steps[-1].indices[-1]
        ids = self.source.ids
        cause = " ".join(str(error).split()).rstrip(".") + "."
        return DataError(
            f"A DataLoader worker died while reading samples {first} to {last} ({ids[first]!r} "
            f"to {ids[last]!r}): {cause} One of them crashes the process that reads it (a "
            "corrupt file, a crash in a library, or too little memory). Run with num_workers=0 "
            "(--num-workers 0) to see the failure in this process; the shards already written "
            "are kept."
        )

    def _unreadable(self, index: int, problem: str) -> DataError:
        return DataError(
            f"Cannot read sample {self.source.ids[index]!r} (index {index}): {problem}. Fix or "
            "remove it, or pass on_error='skip' (--on-error skip) to leave it out; the shards "
            "already written are kept."
        )

    # -- what is recorded ------------------------------------------------------------------------
    def _spec(self) -> dict[str, Any]:
        """What determines the values: a resumed run must match it exactly."""
        ids = hashlib.sha256("\n".join(self.source.ids).encode()).hexdigest()
        return {
            **model_spec(self.model, self.paths, self.pools, self.dtype, self.speed),
            "layer_order": list(self.paths),  # the file's order (dicts compare without it)
            "samples": self.n,
            "ids_sha256": ids,
            "transform": self.source.transform,
            "shard_size": self.shard_size,
        }

    def _manifest(self, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        manifest = model_manifest(self.model, self.paths, self.pools)
        manifest.update(data=self.source.description, transform=self.source.transform)
        if self.source.classes is not None:
            manifest["classes"] = self.source.classes
        if spec is not None:
            manifest["run"] = spec
        return manifest


@dataclass
class _Started:
    """A DataLoader the probe started: the batches it yields after the first, its iterator."""

    batches: list[list[int]]
    loader: Any
    batches_left: Any


def _ahead(loader: Any, steps: list[Step]) -> list[Step]:
    """The steps whose batches may be in flight in ``loader``'s workers (the next few)."""
    return steps[: max(1, loader.num_workers * (loader.prefetch_factor or 2))]


def _stream_job(
    stream: Stream,
    model: ModelRecord,
    forward: Forward,
    paths: dict[str, str],
    pools: dict[str, Any],
    dtype: torch.dtype | None,
    device: torch.device,
    batch_size: int | None,
    num_workers: int | None,
    on_error: str,
    progress: bool | None,
    speed: Speed,
) -> StreamJob:
    """The job for data read shard by shard, with the model's part of its spec and manifest."""
    spec = model_spec(model, paths, pools, dtype, speed)
    manifest = model_manifest(model, paths, pools)
    return StreamJob(
        stream, forward, paths, pools, dtype, device,
        batch_size or stream.batch_size or 32, num_workers, on_error, progress,
        Parameters.of(model.module), speed, spec, manifest,
    )  # fmt: skip


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside featwrap (a warning shows the user's line)."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("featwrap"):
        frame, level = frame.f_back, level + 1
    return level


def _worker_death(error: Exception, workers: int) -> bool:
    """Whether ``error``, raised by a DataLoader's ``next``, means that a worker died: PyTorch
    says so, or the pipe to a worker broke (samples' own errors are caught in the worker)."""
    if isinstance(error, RuntimeError):
        return "DataLoader worker" in str(error)
    return workers > 0


def _check_shapes(
    rows: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, ...]] | None,
    indices: list[int],
    ids: list[str],
) -> dict[str, tuple[int, ...]]:
    current = {k: tuple(v.shape[1:]) for k, v in rows.items()}
    if shapes is not None:
        for key, shape in current.items():
            if shape != shapes[key]:
                raise DataError(
                    f"Layer {key!r} gives features of shape {shape} for sample {ids[indices[0]]!r} "
                    f"but {shapes[key]} before: every sample must give one shape. Resize the "
                    "inputs to one size (image_size=, --image-size) or pool the layer (--pool avg)."
                )
    return current


# -- arguments -------------------------------------------------------------------------------------
def _resolve_model(model: Any, weights: str | None) -> ModelRecord:
    if isinstance(model, str):
        model, note = load_model_noted(model, weights)
        if note:
            warnings.warn(note, stacklevel=3)
    if isinstance(model, LoadedModel):
        return ModelRecord(
            model.model, model.name, model.weights, model.pretrained, model.transforms
        )
    if isinstance(model, nn.Module):
        cls = type(model)
        return ModelRecord(model, f"{cls.__module__}.{cls.__qualname__}", "given module", None)
    raise FeatwrapTypeError(
        f"model must be a torch.nn.Module or a model name such as 'torchvision:resnet18', got "
        f"{type(model).__name__}: {model!r:.80}"
    )


def _check_sizes(**sizes: int | None) -> None:
    """Each size given is a positive int (``None``: the default)."""
    for name, value in sizes.items():
        if value is None and name != "shard_size":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            flag = "--" + name.replace("_", "-")
            raise FeatwrapValueError(
                f"{name}={value!r} ({flag} {value}) must be a positive whole number, e.g. "
                f"{_SIZE_EXAMPLES[name]}."
            )


_SIZE_EXAMPLES = {"shard_size": 1024, "batch_size": 32, "image_size": 224}


def _device(device: Any, module: nn.Module, by_name: bool) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise FeatwrapValueError(
                f"device={device!r} (--device {device}) is not a device ('cpu', 'cuda', "
                "'cuda:1', 'mps')."
            ) from error
        _check_available(chosen, device)
        return chosen
    own = _module_device(module)
    if own is not None and (own.type != "cpu" or not by_name):
        return own
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_available(chosen: torch.device, given: Any) -> None:
    """Raise if this machine has no such device (rather than failing inside the first forward)."""
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FeatwrapValueError(
                f"device={str(given)!r} (--device {given}) is not available: this PyTorch sees no "
                "CUDA GPU (torch.cuda.is_available() is False). Use device='cpu' (--device cpu)."
            )
        if chosen.index is not None and chosen.index >= count:
            raise FeatwrapValueError(
                f"device={str(given)!r} (--device {given}) is not available: this machine has "
                f"{count} CUDA GPUs (cuda:0 to cuda:{count - 1})."
            )
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise FeatwrapValueError(
            f"device={str(given)!r} (--device {given}) is not available on this machine. Use "
            "device='cpu' (--device cpu)."
        )


def _module_device(module: nn.Module) -> torch.device | None:
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return None


def _dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    name = dtype_name(dtype)
    value = dtype if isinstance(dtype, torch.dtype) else getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise FeatwrapValueError(
            f"dtype={name!r} (--dtype {name}) is not a torch dtype; use e.g. 'float32', "
            "'float16' or 'bfloat16'."
        )
    if not value.is_floating_point:
        raise FeatwrapValueError(
            f"dtype={name!r} (--dtype {name}) is not a floating-point dtype: features would be "
            "truncated to whole numbers. Use 'float32', 'float16' or 'bfloat16', or leave it "
            "out to keep the model's own dtype."
        )
    return value

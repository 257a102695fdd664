"""What the hooks do: record each requested layer's output into the session of the running forward.

Design, in short:

* Hooks are registered once, at construction. Each is a ``functools.partial`` of a method of a
  :class:`Recorder` (picklable, deep-copyable, no closures), and is inert unless a forward of its
  own ``FeatureModel`` is running in the current thread.
* Each forward opens a :class:`Session` that lives only as long as the call. The running session
  is found through a ``threading.local``, so forwards in several threads never mix, and a value
  from an earlier call can never be returned. Under ``torch.compile`` tracing the session sits in
  a plain attribute that dynamo can follow (and that is cleared before the forward returns).
* In-place safety without paying for copies: at capture, featwrap takes a copy-on-write snapshot
  of the tensor (``torch._lazy_clone``: shares memory, copies nothing) and notes its version
  counter. When the forward ends, a tensor nothing wrote to is returned as itself (the very
  tensor the module produced; the snapshot is dropped, so no copy ever happens). A tensor that a
  later in-place op modified (``ReLU(inplace=True)``, ``x += y``) is returned as the snapshot: the
  write copied the memory first, so the snapshot still holds what the module returned. This holds
  whatever the control flow, on every call, with a copy exactly where an in-place op followed.
  Tensors without copy-on-write support (sparse, nested) get a real copy; under
  ``torch.compile`` a ``clone`` that the compiler plans.
* Gradients at every captured tensor: with grad enabled, the hook also hands the rest of the model
  a copy-on-write twin of the output (a forward hook may return a replacement). Later in-place ops
  write to the twin, so the module's own tensor stays untouched *and* on the path to the output:
  ``torch.autograd.grad(out["logits"], out["bn1"])`` is the gradient a model without in-place ops
  gives. The twin copies memory only where an in-place op writes to it. Structures, selected
  parts and inputs hand the model a holder with a twin per tensor (:mod:`featwrap._twins`). A
  tensor that shares memory with the module's input (``nn.Identity``, an in-place activation, a
  view) gets no twin: writes through it must still reach the input, as without featwrap; it
  takes its owner's place when it is a twin featwrap handed on, else, if a later in-place op
  modifies it, featwrap warns once per layer that its gradient is lost. Under a reentrant
  ``torch.utils.checkpoint`` a value has no graph: featwrap warns once per layer. Under
  ``torch.compile`` no twin can help: an output of a compiled graph is never on the path to its
  other outputs, so a traced forward warns once per layer (at trace time, outside the graph)
  that it gives no gradient *at* a feature (through one, a loss trains as in eager).
* Edits (``FeatureModel.edit``, in :mod:`featwrap.edit`) sit in the thread-local beside the
  session; a session with edits takes the general path, which applies them before recording.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from featwrap import _tree
from featwrap._options import Missing, Repeats
from featwrap._twins import Twins, aliases
from featwrap.errors import (
    CheckpointWarning,
    GradientWarning,
    MissingFeatureError,
    RepeatedCallError,
)

Tensor = torch.Tensor
_lazy_clone = torch._lazy_clone
_grad_enabled = torch.is_grad_enabled


class StopForward(BaseException):
    """Raised by a hook to end the backbone's forward once every requested layer's value is final.

    A ``BaseException`` so that ``except Exception`` blocks inside user models let it through.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session


_UNSET: Any = object()


class _Local(threading.local):
    session: Session | None = None
    # featwrap.edit.EditState of the `with fm.edit(...)` blocks open in this thread, if any
    edits: Any = None


class Recorder:
    """Per-FeatureModel state shared by its hooks: the layer keys and options.

    Holds no tensor between calls: sessions are per call and dropped when the call ends.
    """

    def __init__(
        self,
        keys: Sequence[str],
        repeats: Repeats,
        detach: bool,
        missing: Missing,
        stop_early: bool,
        wait_for_parent: Sequence[bool],
        selectors: Sequence[Any] = (),
    ) -> None:
        self.keys = tuple(keys)
        # per key: the ``select`` of a Capture (used by on_selected_output and on_input only)
        self.selectors = tuple(selectors) or (None,) * len(self.keys)
        self.repeats = repeats
        self.detach = detach
        self.missing = missing
        self.stop_early = stop_early
        self.wait_for_parent = tuple(wait_for_parent)
        # keys whose output a later in-place op modified in the last forward (for summaries)
        self.last_modified: frozenset[int] = frozenset()
        # keys already warned about (no graph under a reentrant checkpoint; ("compile", key): no
        # gradient at it in a compiled forward): warn once per key
        self.warned: set[Any] = set()
        # `with fm.edit(...)` blocks open in any thread: a guard for compiled forwards
        self.open_edits = 0
        self.traced: Session | None = None
        self._local = _Local()

    # -- pickling and deepcopy: a thread-local cannot be copied; make a fresh one ----------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        state["traced"] = None
        state["open_edits"] = 0  # edits are not copied
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = _Local()

    # -- sessions --------------------------------------------------------------------------------
    def open(self) -> tuple[Session, Session | None]:
        """Start a session for a forward in this thread; returns it and the one it shadows."""
        session = Session(self, traced=False)
        local = self._local
        previous = local.session
        local.session = session
        return session, previous

    def close(self, previous: Session | None) -> None:
        self._local.session = previous

    def open_traced(self) -> Session:
        """A session for a forward being traced by torch.compile: clones every captured value."""
        session = Session(self, traced=True)
        self.traced = session
        return session

    # -- hooks (the hot path: keep them flat) ----------------------------------------------------
    def _running(self) -> Session | None:
        """The session of the forward running in this thread (or being traced), if any."""
        session = self.traced
        if session is None or not torch.compiler.is_compiling():
            session = self._local.session
        return session

    def on_output(self, indices: tuple[int, ...], module: Any, args: Any, output: Any) -> Any:
        """Forward hook: record ``output`` under every key in ``indices``."""
        session = self.traced  # _running(), inlined: this hook runs for almost every capture
        if session is None or not torch.compiler.is_compiling():
            session = self._local.session
            if session is None:
                return
        if session.fast and type(output) is Tensor:
            # The common case inlined (repeats="last", no early stop, no edit, a tensor):
            # Session.keep. Without grad, no twin and no graph check: the shortest path.
            if not session.grad:
                for i in indices:
                    session.counts[i] += 1
                    try:
                        session.values[i] = _lazy_clone(output)
                        session.versions[i] = output._version
                    except (NotImplementedError, RuntimeError):  # no copy-on-write, or versions
                        session.keep(i, output)
                        continue
                    session.own[i] = output
                return None
            for i in indices:
                session.counts[i] += 1
                try:
                    session.values[i] = _lazy_clone(output)
                    session.versions[i] = output._version
                except (NotImplementedError, RuntimeError):  # no copy-on-write, or no versions
                    session.keep(i, output)
                    continue
                if _grad_enabled():
                    session.own[i] = output
                else:  # grad off inside the forward (a reentrant checkpoint)
                    session.no_graph(i)
            if output.requires_grad and not self.detach:  # go on with a twin
                # no twin for the module's input itself or a view of it: a twin would hide
                # later writes from whoever holds the input (aliases(), inlined: a tensor)
                if output._base is None:
                    for a in args:
                        if a is output:
                            return session.adopt(indices, output)
                elif aliases(output, args):
                    return session.adopt(indices, output)
                twin = _lazy_clone(output)  # Session.hand, inlined
                version = twin._version
                for i in indices:
                    session.handed[i] = twin
                    session.handed_versions[i] = version
                return twin
            return None
        if session.edits is not None:
            return session.edits.on_output(session, indices, output, args)
        twin = session.record(indices, output, args)
        return twin.handed(output) if type(twin) is Twins else twin

    def on_selected_output(
        self, indices: tuple[int, ...], module: Any, args: Any, output: Any
    ) -> Any:
        """Forward hook for layers captured with a selector: record the selected part."""
        session = self._running()
        if session is None:
            return None
        if session.edits is not None:
            return session.edits.on_selected_output(session, indices, output, args)
        new_output = output
        for i in indices:
            select, key = self.selectors[i], self.keys[i]
            part = _tree.select_output(new_output, select, key)
            twins = session.record((i,), part, args, new_output)
            if twins is not None:  # grad: the model goes on with twins of the part's tensors
                new_output = twins.handed(new_output)
        return None if new_output is output else new_output

    def on_input(
        self, indices: tuple[int, ...], module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Forward pre-hook (with kwargs) for inputs: record the argument before the module runs,
        so that an in-place op of the module itself is caught by the version check. With grad, the
        module runs on a twin of the argument (see :meth:`Session.hand`)."""
        session = self._running()
        if session is None:
            return None
        if session.edits is not None:
            return session.edits.on_input(session, indices, args, kwargs)
        replaced = None
        for i in indices:
            arg = _tree.select_input(args, kwargs, self.selectors[i], self.keys[i])
            twins = session.record((i,), arg, (), (args, kwargs))
            if twins is not None:  # grad: the module runs on twins of the argument's tensors
                replaced = args, kwargs = twins.handed((args, kwargs))
        return replaced

    def on_parent_output(
        self, indices: tuple[int, ...], module: Any, args: Any, output: Any
    ) -> None:
        """Forward hook on the anchor of layers that may repeat: they are final once it returns."""
        session = self._running()
        if session is None:
            return
        session.parent_done(indices)

    def on_next_called(
        self, indices: tuple[int, ...], module: Any, args: Any, kwargs: dict[str, Any]
    ) -> None:
        """Forward pre-hook on the next element of a stack: the layers before it are final."""
        session = self._running()
        if session is None:
            return
        session.parent_done(indices)


class Session:
    """The capture state of one forward call."""

    __slots__ = (
        "all_calls",
        "counts",
        "done",
        "edits",
        "fast",
        "grad",
        "handed",
        "handed_versions",
        "inference",
        "own",
        "owned",
        "recorder",
        "remaining",
        "traced",
        "twinned",
        "values",
        "versions",
        "watched",
    )

    def __init__(self, recorder: Recorder, traced: bool) -> None:
        n = len(recorder.keys)
        self.recorder = recorder
        self.traced = traced
        self.grad = torch.is_grad_enabled()
        self.all_calls = recorder.repeats is Repeats.ALL
        # inference tensors count no versions: their snapshot is returned (no exception raised)
        # (dynamo cannot trace the query; a traced session clones anyway)
        self.inference = not traced and torch.is_inference_mode_enabled()
        # the featwrap.edit.EditState of this thread's `with fm.edit(...)` blocks, if any
        self.edits = None if traced else recorder._local.edits
        # whether the hook's inlined fast path applies
        self.fast = not (traced or recorder.stop_early or self.inference or self.edits) and (
            recorder.repeats is Repeats.LAST
        )
        # values[i]: the snapshot (or, for structures and repeats="all", the snapshotted value)
        self.values: list[Any] = [[] for _ in range(n)] if self.all_calls else [_UNSET] * n
        # own[i]: the module's own tensor, returned instead of the snapshot if nothing wrote to
        # it (its version counter is then unchanged); None where that does not apply
        self.own: list[Tensor | None] = [None] * n
        self.versions = [0] * n
        # handed[i]: the twin the rest of the model got instead of own[i], with its version:
        # returned if own[i] was written through an alias (with grad only: no twin without it)
        self.handed: list[Tensor | None] = [None] * n if self.grad else []
        self.handed_versions = [0] * n if self.grad else []
        # repeats="all": (key index, tensor, version) of bare tensors, for last_modified only
        self.watched: list[tuple[int, Tensor, int]] = []
        # repeats="all" with grad: (key index, call, own tensor, version) of bare tensors
        # (twinned: whether the model went on with a twin; not where the tensor aliases an input)
        self.owned: list[tuple[int, int, Tensor, int, bool]] = []
        # whether a value is a Twins (a structure, a part or an input, recorded with grad)
        self.twinned = False
        self.counts = [0] * n
        self.done = [False] * n
        self.remaining = n

    # -- recording ---------------------------------------------------------------------------
    def keep(self, i: int, output: Tensor) -> None:
        """Record a bare tensor: a copy-on-write snapshot, and the tensor with its version."""
        try:
            self.values[i] = _lazy_clone(output)
        except (NotImplementedError, RuntimeError):  # no copy-on-write for this layout
            self.values[i] = output.clone()
            self.own[i] = None
            return
        if self.inference and output.is_inference():  # no version counter: the snapshot it is
            self.own[i] = None
            return
        try:
            self.versions[i] = output._version
        except RuntimeError:  # an inference tensor counts no versions: the snapshot it is
            self.own[i] = None
            return
        # With grad off inside a forward with grad on (a reentrant checkpoint), the tensor is
        # given a graph after the hook ran; the snapshot, made now, has none: keep to that.
        if self.grad and not _grad_enabled():
            self.no_graph(i)
        else:
            self.own[i] = output

    def hand(self, indices: tuple[int, ...], output: Tensor) -> Tensor:
        """The twin the rest of the model continues with: later in-place ops write to it, and the
        module's own tensor, returned by the forward, stays on the path to the output."""
        twin = _lazy_clone(output)
        version = twin._version
        for i in indices:
            self.handed[i] = twin
            self.handed_versions[i] = version
        return twin

    def adopt(self, indices: tuple[int, ...], output: Tensor) -> None:
        """``output`` is the module's input itself (``nn.Identity``, an in-place activation), so
        it gets no twin (the caller holds it: a twin would hide later writes from it). If it is
        a twin featwrap handed out, unwritten since, its owner is the same value and on the path
        to the output: the key's value is the owner, as for the layer that produced it."""
        for j, twin in enumerate(self.handed):
            if twin is output:
                owner, owner_version, twin_version = (
                    self.own[j],
                    self.versions[j],
                    self.handed_versions[j],
                )
                break
        else:
            return
        if owner is None or twin._version != twin_version or owner._version != owner_version:
            return  # written since: the value is no longer the owner's
        for i in indices:
            self.own[i] = owner
            self.versions[i] = owner_version
            self.handed[i] = twin
            self.handed_versions[i] = twin_version

    def no_graph(self, i: int) -> None:
        """A value captured with grad off inside a forward with grad on: its snapshot has no
        graph. Under a reentrant checkpoint, say so once per key (a loss on it would be lost)."""
        self.own[i] = None
        key = self.recorder.keys[i]
        if key in self.recorder.warned or not _in_reentrant_checkpoint():
            return
        self.recorder.warned.add(key)
        warnings.warn(
            f"featwrap: layer {key!r} ran inside torch.utils.checkpoint(..., use_reentrant=True), "
            "which runs it without autograd: its value is exact but has no graph, so a loss or "
            "torch.autograd.grad on it gets no gradient. Pass use_reentrant=False to the "
            "checkpoint (exact values and gradients), or capture a layer outside the "
            "checkpointed block.",
            CheckpointWarning,
            stacklevel=2,
        )

    def record(
        self,
        indices: tuple[int, ...],
        output: Any,
        inputs: Any = (),
        holder: Any = None,
        fresh: bool = False,
    ) -> Any:
        """Record ``output`` under ``indices``; returns what the model should continue with, with
        grad enabled: a twin (``output`` a module's bare output tensor), a :class:`Twins` whose
        ``handed(holder)`` it is (a structure, or a part of ``holder``: the module's output or
        ``(args, kwargs)``), else None. ``inputs``: the module's arguments (twins never alias
        them). ``fresh``: ``output`` is a tensor that nothing else in the model can reach (an
        edit's result): it is the value as is, and the model always goes on with a twin."""
        if not self.remaining:  # traced with early stop: an eager forward has stopped by now
            return None
        rec = self.recorder
        counts = self.counts
        twin = None
        for i in indices:
            count = counts[i]
            counts[i] = count + 1
            if self.done[i] and rec.stop_early and rec.repeats is not Repeats.FIRST:
                self._called_after_final(i)
            if count and self._repeat_ignored(i, count):
                continue
            bare = type(output) is Tensor and holder is None
            if self.traced:  # the compiler sees in-place ops as data flow: a clone it can plan
                value = _tree.clone(output, rec.detach)
            elif fresh:  # only the twin can be written to: no snapshot needed
                value = output.detach() if rec.detach else output
                if twin is None:
                    twin = _tree.snapshot(output, detach=False)
            elif not bare and self.grad and not rec.detach:  # twins inside, found by identity
                if twin is None:
                    twin = Twins(output, (output if holder is None else holder, inputs))
                    self.twinned = True
                value = twin
            elif self.all_calls or type(output) is not Tensor:
                value = _tree.snapshot(output, rec.detach)
                if self.all_calls:  # note versions, for last_modified only
                    self.watched += [
                        (i, t, t._version) for t in _tree.tensors(output) if not t.is_inference()
                    ]
                    if self.grad and bare and output.requires_grad and not rec.detach:
                        # as for one call: the model goes on with a twin, own is returned
                        alias = aliases(output, inputs)
                        call = len(self.values[i])
                        self.owned.append((i, call, output, output._version, not alias))
                        if not alias:
                            twin = self.hand((i,), output) if twin is None else self._share(i, twin)
                            self.watched.append((i, twin, twin._version))
            else:
                self.keep(i, output)
                value = _UNSET
                if self.grad and output.requires_grad and not rec.detach:
                    if aliases(output, inputs):  # no twin (see on_output)
                        self.adopt((i,), output)
                    else:
                        twin = self.hand((i,), output) if twin is None else self._share(i, twin)
            if self.all_calls:
                self.values[i].append(value)
            elif value is not _UNSET:
                self.values[i] = value
                self.own[i] = None  # an earlier call's tensor is no longer the value
            if rec.stop_early and not count and not rec.wait_for_parent[i]:
                self._mark_done(i)
        return twin

    def record_fresh(self, indices: tuple[int, ...], value: Tensor) -> Tensor:
        """Record an edit's result, a tensor nothing else in the model can reach: it is the value
        as is (no snapshot: only its twin, which the model continues with, can be written to)."""
        rec = self.recorder
        if rec.repeats is not Repeats.LAST or rec.stop_early:
            twin = self.record(indices, value, fresh=True)
            if isinstance(twin, Tensor):
                return twin
        else:  # record(), for the common case
            kept = value.detach() if rec.detach else value
            for i in indices:
                self.counts[i] += 1
                self.values[i] = kept
                self.own[i] = None
        try:
            return _lazy_clone(value)
        except (NotImplementedError, RuntimeError):  # no copy-on-write for this layout
            return value.clone()

    def _share(self, i: int, twin: Tensor) -> Tensor:
        self.handed[i] = twin
        self.handed_versions[i] = twin._version
        return twin

    def _repeat_ignored(self, i: int, count: int) -> bool:
        repeats = self.recorder.repeats
        if repeats is Repeats.FIRST:
            return True
        if repeats is Repeats.ERROR:
            raise RepeatedCallError(
                f"Layer {self.recorder.keys[i]!r} ran {count + 1} times in one forward, and "
                "repeats='error' was requested. Pass repeats='last' (the default), "
                "'first' or 'all' (a list of every call) to accept this."
            )
        return False

    def _called_after_final(self, i: int) -> None:
        key = self.recorder.keys[i]
        raise RepeatedCallError(
            f"Layer {key!r} ran again after featwrap had taken its value as final to stop the "
            "forward early (output_key=None): the model calls a module more often than its place "
            "in the module tree shows (a block called again outside its stack, a stack gone "
            "through twice). Returning the earlier value would be wrong, so featwrap stops here. "
            "Pass output_key='logits' to run the whole forward, or repeats='first' to take the "
            f"first call of {key!r}. See 'Early stop' in docs/how-it-works.md for the rule."
        )

    def parent_done(self, indices: tuple[int, ...]) -> None:
        for i in indices:
            if self.counts[i] and not self.done[i]:
                self._mark_done(i)

    def _mark_done(self, i: int) -> None:
        self.done[i] = True
        self.remaining -= 1
        if self.remaining == 0 and not self.traced:
            raise StopForward(self)

    def fired(self) -> list[str]:
        keys = self.recorder.keys
        return [keys[i] for i, c in enumerate(self.counts) if c]

    # -- the end of the forward --------------------------------------------------------------
    def _final_values(self) -> list[Any]:
        """Each key's value: the module's own tensor where nothing wrote to it, else the snapshot."""
        if self.all_calls:
            self.recorder.last_modified = frozenset(
                i for i, tensor, version in self.watched if tensor._version != version
            )
            self.watched = []
            for i, call, tensor, version, twinned in self.owned:
                if tensor._version == version:
                    self.values[i][call] = tensor
                elif not twinned:
                    self.lost_gradient(i)
            if not self.twinned:
                return [list(v) for v in self.values]
            changed = set(self.recorder.last_modified)
            resolved = [
                [self._resolve(i, v, changed) for v in calls] for i, calls in enumerate(self.values)
            ]
            self.recorder.last_modified = frozenset(changed)
            return resolved
        values = self.values
        versions = self.versions
        modified = []
        if not self.grad:  # no twin was handed on: own, or the snapshot if it was written to
            for i, own in enumerate(self.own):
                if own is not None:
                    if own._version == versions[i]:
                        values[i] = own
                    else:
                        modified.append(i)
            self.recorder.last_modified = frozenset(modified)
            if self.recorder.detach and not self.traced:
                return [v.detach() if type(v) is Tensor else v for v in values]
            return values
        handed = self.handed
        for i, own in enumerate(self.own):
            if own is not None:
                twin = handed[i]
                twin_written = twin is not None and twin._version != self.handed_versions[i]
                if own._version == versions[i]:
                    values[i] = own
                    if twin_written:  # the model wrote to its twin; own is untouched
                        modified.append(i)
                elif twin is not None and not twin_written:
                    values[i] = twin  # own written through an alias; the twin is still exact
                    modified.append(i)
                else:  # the snapshot
                    modified.append(i)
                    if (
                        twin is None
                        and self.grad
                        and own.requires_grad
                        and not self.recorder.detach
                    ):
                        self.lost_gradient(i)  # no twin: it shares memory with an input
        if self.twinned:
            found = set(modified)
            for i, value in enumerate(values):
                values[i] = self._resolve(i, value, found)
            modified = list(found)
        self.recorder.last_modified = frozenset(modified)
        if self.recorder.detach and not self.traced:
            return [v.detach() if type(v) is Tensor else v for v in values]
        return values

    def _resolve(self, i: int, value: Any, modified: set[int]) -> Any:
        """``value`` itself, or for :class:`Twins` the value to return (noting modifications)."""
        if type(value) is not Twins:
            return value
        final, was_modified, lost = value.final()
        if was_modified:
            modified.add(i)
        if lost:
            self.lost_gradient(i)
        return final

    def lost_gradient(self, i: int) -> None:
        """A captured tensor that shares memory with one the model still holds (the module's
        input, another tensor of its output) got no twin, and a later in-place op modified it:
        its value is exact (the snapshot), its gradient is not available. Say so once per key."""
        key = self.recorder.keys[i]
        if ("alias", key) in self.recorder.warned:
            return
        self.recorder.warned.add(("alias", key))
        warnings.warn(
            f"featwrap: layer {key!r} shares memory with a tensor the model still holds (the "
            "module's input, as for nn.Identity, dropout in eval mode, an in-place activation or "
            "a view; or another tensor of the same output), and a later in-place op modified "
            "it. Its value is exact, but featwrap cannot give the model a copy-on-write twin "
            "without changing what the model computes, so torch.autograd.grad or retain_grad "
            "at it gets no gradient. Capture the module that computes the tensor (the layer "
            "before), or switch the later in-place op off (inplace=False).",
            GradientWarning,
            stacklevel=4,
        )

    def result(self, output: Any, output_key: str | None) -> dict[str, Any]:
        """The dict returned by FeatureModel.forward; checks missing layers."""
        rec = self.recorder
        features: dict[str, Any] = {}
        if output_key is not None:
            features[output_key] = output
        values = self._final_values()
        if self.traced and self.grad and not torch.compiler.is_exporting():
            _warn_compiled_gradients(rec, _keys_with_graph(rec.keys, self.counts, values))
        if 0 not in self.counts:  # every layer fired: the common case, at C speed
            features.update(zip(rec.keys, values, strict=True))
            return features
        missing: list[str] = []
        for i, key in enumerate(rec.keys):
            if self.counts[i] == 0:
                missing.append(key)
                if rec.missing is Missing.NONE:
                    features[key] = None
            else:
                features[key] = values[i]
        if missing and rec.missing is Missing.ERROR:
            raise MissingFeatureError(
                f"Layer{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} did not "
                "run in this forward (a branch not taken, or a module the forward never calls), "
                "so there is no value to return. Pass missing='skip' to leave such keys out, or "
                "missing='none' to get None."
            )
        return features


def _keys_with_graph(
    keys: tuple[str, ...], counts: list[int], values: list[Any]
) -> tuple[str, ...]:
    """The keys whose traced value has an autograd graph (traced by torch.compile)."""
    return tuple(
        key
        for key, count, value in zip(keys, counts, values, strict=True)
        if count and any(t.requires_grad for t in _tree.tensors(value))
    )


@torch._dynamo.assume_constant_result  # type: ignore[untyped-decorator]
def _warn_compiled_gradients(recorder: Recorder, keys: tuple[str, ...]) -> bool:
    """Warn, once per layer, that a compiled forward gives no gradient *at* its captured values.

    Runs while torch.compile traces (``assume_constant_result``: called once, at trace time, and
    never part of the graph): an output of a compiled graph is not a node on the path to its
    other outputs, so ``torch.autograd.grad(out["logits"], out[key])`` cannot be answered.
    """
    new = [key for key in keys if ("compile", key) not in recorder.warned]
    if not new:
        return False
    recorder.warned.update(("compile", key) for key in new)
    names = ", ".join(map(repr, new))
    one = new[0]
    warnings.warn(
        f"featwrap: under torch.compile, layer{'s' if len(new) > 1 else ''} {names} "
        f"{'are' if len(new) > 1 else 'is an'} output{'s' if len(new) > 1 else ''} of the "
        "compiled graph, not on its path to the model's output: a loss on a feature trains "
        f"the model exactly as in eager, but torch.autograd.grad(output, out[{one!r}]) and "
        f"out[{one!r}].retain_grad() get no gradient at it (a compiled graph exposes none at "
        "its own intermediate values). For gradients at a layer, run that forward eagerly: "
        "call the FeatureModel itself, or the compiled one inside "
        "`with torch.compiler.set_stance('force_eager'):`. With detach=True (no gradient "
        "through the features) there is nothing to warn about.",
        GradientWarning,
        stacklevel=2,
    )
    return True


def _in_reentrant_checkpoint() -> bool:
    """Whether the caller runs inside ``torch.utils.checkpoint``'s reentrant forward (which runs
    the function with grad off). Walks the stack: only called on that rare path."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "forward" and code.co_filename.endswith(
            ("utils/checkpoint.py", "utils\\checkpoint.py")
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False

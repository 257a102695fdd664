"""What the hooks do: record each requested layer's output into the session of the running forward.

Design, in short:

* Hooks are registered once, at construction. Each is a ``functools.partial`` of a method of a
  :class:`Recorder` (picklable, deep-copyable, no closures), and is inert unless a forward of its
  own ``FeatureModel`` is running in the current thread.
* Each forward opens a :class:`Session` that lives only as long as the call. The running session
  is found through a ``threading.local``, so forwards in several threads never mix, and a value
  from an earlier call can never be returned. Under ``torch.compile`` tracing the session sits in
  a plain attribute that dynamo can follow (and that is cleared before the forward returns).
* In-place safety without paying for copies: the first forward in each mode (train/eval x grad
  on/off) copies every captured tensor and watches the originals' version counters (or compares
  values, for inference tensors). A layer whose output was modified after it returned is copied
  from then on; the others are returned as the very tensors the modules produced, and their
  version counters are still checked at the end of every forward, so a modification that shows
  up only later (data-dependent control flow) is never returned silently.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from enum import Enum
from typing import Any

import torch

from featwrap import _tree
from featwrap.errors import FeatureModifiedError, MissingFeatureError, RepeatedCallError

Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled


class Repeats(str, Enum):
    """What to return for a layer that runs several times in one forward."""

    LAST = "last"
    FIRST = "first"
    ALL = "all"
    ERROR = "error"


class Missing(str, Enum):
    """What to do with a requested layer that did not run in a forward."""

    ERROR = "error"
    SKIP = "skip"
    NONE = "none"


class StopForward(BaseException):
    """Raised by a hook to end the backbone's forward once every requested layer has fired.

    A ``BaseException`` so that ``except Exception`` blocks inside user models let it through.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session


_UNSET: Any = object()


class _Every(frozenset[int]):
    """Contains every key index: the copy set of a probing or traced session."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERY = _Every()


class _Local(threading.local):
    session: Session | None = None


class Recorder:
    """Per-FeatureModel state shared by its hooks: the layer keys, options and what was learned.

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
        # per mode (training, grad enabled): None until probed, then which keys need a copy
        self.copy_keys: dict[tuple[bool, bool], frozenset[int]] = {}
        self.traced: Session | None = None
        self._local = _Local()

    # -- pickling and deepcopy: a thread-local cannot be copied; make a fresh one ----------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        state["traced"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = _Local()

    # -- sessions --------------------------------------------------------------------------------
    def open(self, training: bool) -> tuple[Session, Session | None]:
        """Start a session for a forward in this thread; returns it and the one it shadows."""
        mode = (training, torch.is_grad_enabled())
        session = Session(self, self.copy_keys.get(mode), mode, traced=False)
        local = self._local
        previous = local.session
        local.session = session
        return session, previous

    def close(self, previous: Session | None) -> None:
        self._local.session = previous

    def open_traced(self) -> Session:
        """A session for a forward being traced by torch.compile: copies every captured value."""
        session = Session(self, None, (False, False), traced=True)
        self.traced = session
        return session

    # -- hooks (the hot path: keep them flat) ----------------------------------------------------
    def on_output(self, indices: tuple[int, ...], module: Any, args: Any, output: Any) -> None:
        """Forward hook: record ``output`` under every key in ``indices``."""
        session = self.traced
        if session is None or not torch.compiler.is_compiling():
            session = self._local.session
            if session is None:
                return
        fast = session.fast
        if fast is None or type(output) is not Tensor:
            session.record(indices, output)
            return
        # The common case inlined (repeats="last", no early stop, after the probe, a tensor):
        # store the very tensor and its version counter, checked when the forward ends.
        for i in indices:
            session.counts[i] += 1
            if i in fast:
                session.values[i] = session.capture_copy(i, output)
                session.versions[i] = -1
                continue
            try:
                session.versions[i] = output._version
            except RuntimeError:  # an inference tensor counts no versions
                session.values[i] = session.capture_tree(i, output)
                session.versions[i] = -1
            else:
                session.values[i] = output.detach() if session.must_detach() else output

    def on_selected_output(
        self, indices: tuple[int, ...], module: Any, args: Any, output: Any
    ) -> None:
        """Forward hook for layers captured with a selector: record the selected part."""
        session = self.traced
        if session is None or not torch.compiler.is_compiling():
            session = self._local.session
            if session is None:
                return
        for i in indices:
            session.record((i,), _tree.select_output(output, self.selectors[i], self.keys[i]))

    def on_input(
        self, indices: tuple[int, ...], module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Forward pre-hook (with kwargs) for inputs: record the argument before the module runs,
        so that an in-place op of the module itself is caught by the version check."""
        session = self.traced
        if session is None or not torch.compiler.is_compiling():
            session = self._local.session
            if session is None:
                return
        for i in indices:
            session.record((i,), _tree.select_input(args, kwargs, self.selectors[i], self.keys[i]))

    def on_parent_output(
        self, indices: tuple[int, ...], module: Any, args: Any, output: Any
    ) -> None:
        """Forward hook on the parent of layers that may repeat: they are final once it returns."""
        session = self.traced
        if session is None or not torch.compiler.is_compiling():
            session = self._local.session
            if session is None:
                return
        session.parent_done(indices)


class Session:
    """The capture state of one forward call."""

    __slots__ = (
        "all_calls",
        "copy",
        "counts",
        "detach",
        "done",
        "fast",
        "mode",
        "probe",
        "recorder",
        "remaining",
        "stop_early",
        "traced",
        "values",
        "versions",
        "watched_trees",
    )

    def __init__(
        self,
        recorder: Recorder,
        copy_keys: frozenset[int] | None,
        mode: tuple[bool, bool],
        traced: bool,
    ) -> None:
        n = len(recorder.keys)
        self.recorder = recorder
        self.mode = mode
        self.traced = traced
        self.detach = recorder.detach
        self.stop_early = recorder.stop_early
        self.all_calls = recorder.repeats is Repeats.ALL
        self.probe = copy_keys is None and not traced
        # which keys are copied at capture: all while probing or tracing, else the learned ones
        self.copy: frozenset[int] = _EVERY if copy_keys is None else copy_keys
        # the keys to copy when the hook's inlined fast path applies; None when it does not
        plain = not (self.probe or traced or self.all_calls or self.stop_early)
        self.fast = copy_keys if plain and recorder.repeats is Repeats.LAST else None
        self.values: list[Any] = [[] for _ in range(n)] if self.all_calls else [_UNSET] * n
        self.counts = [0] * n
        self.done = [False] * n
        self.remaining = n
        # version at capture of the bare tensor returned uncopied as values[i] (a detached alias
        # shares the version counter); -1 when values[i] is not such a tensor
        self.versions = [-1] * n
        # the rest: (key index, original value, its versions or None, the copy made or None)
        self.watched_trees: list[tuple[int, Any, tuple[int, ...] | None, Any]] = []

    # -- recording ---------------------------------------------------------------------------
    def record(self, indices: tuple[int, ...], output: Any) -> None:
        if not self.remaining:  # traced with early stop: an eager forward has stopped by now
            return
        counts = self.counts
        for i in indices:
            count = counts[i]
            counts[i] = count + 1
            if count and self._repeat_ignored(i, count):
                continue
            if self.all_calls or i in self.copy or type(output) is not Tensor:
                value = (
                    self.capture_copy(i, output) if i in self.copy else self.capture_tree(i, output)
                )
                if self.all_calls:
                    self.values[i].append(value)
                else:
                    self.values[i] = value
                    self.versions[i] = -1
            else:  # the fast path: the very tensor, its version counter checked at the end
                try:
                    self.versions[i] = output._version
                except RuntimeError:  # an inference tensor counts no versions
                    self.values[i] = self.capture_tree(i, output)
                    self.versions[i] = -1
                else:
                    self.values[i] = output.detach() if self.detach else output
            if self.stop_early and not count and not self.recorder.wait_for_parent[i]:
                self._mark_done(i)

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

    def must_detach(self) -> bool:
        """Detach on request, and for values made with grad off inside a forward with grad on:
        a reentrant checkpoint's autograd.Function attaches a graph to its output later, after
        the hook ran, which a copy made at capture would not have."""
        return self.detach or (self.mode[1] and not _grad_enabled())

    def capture_copy(self, i: int, output: Any) -> Any:
        value = _tree.clone(output, self.detach)
        if self.probe:
            versions = _tree.versions(output)
            self.watched_trees.append((i, output, versions, value if versions is None else None))
        return value

    def capture_tree(self, i: int, output: Any) -> Any:
        versions = _tree.versions(output)
        if versions is not None:
            self.watched_trees.append((i, output, versions, None))
        return _tree.detach(output) if self.must_detach() else _tree.shallow(output)

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
    def check_modified(self) -> None:
        """Learn (probe) or verify (later calls) which captured outputs were modified in place."""
        values = self.values
        modified = {
            i
            for i, (version, value) in enumerate(zip(self.versions, values, strict=True))
            if version >= 0 and value._version != version
        }
        for i, original, versions, copy in self.watched_trees:
            if copy is None:
                changed = _tree.versions(original) != versions
            else:  # inference tensors count no versions: compare values (probe only)
                changed = not _tree.equal(original, copy)
            if changed:
                modified.add(i)
        self.watched_trees = []
        rec = self.recorder
        if self.probe:
            rec.copy_keys[self.mode] = frozenset(modified)
            return
        if modified:
            learned = rec.copy_keys.get(self.mode, frozenset())
            rec.copy_keys[self.mode] = learned | modified
            names = ", ".join(repr(rec.keys[i]) for i in sorted(modified))
            raise FeatureModifiedError(
                f"The output of layer {names} was modified in place later in this forward (by an "
                "in-place op such as ReLU(inplace=True) or `x += y` in the model), which had not "
                "happened in earlier forwards in this mode, so the captured value is no longer "
                "what the layer returned. featwrap now copies this layer's output at capture: run "
                "the forward again. (The model's control flow depends on its input here.)"
            )

    def result(self, output: Any, output_key: str | None) -> dict[str, Any]:
        """The dict returned by FeatureModel.forward; checks missing layers."""
        rec = self.recorder
        features: dict[str, Any] = {}
        if output_key is not None:
            features[output_key] = output
        values = [list(v) for v in self.values] if self.all_calls else self.values
        if 0 not in self.counts:  # every layer fired: the common case, at C speed
            features.update(zip(rec.keys, values, strict=False))
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

"""Editing activations: ``with fm.edit({key: fn_or_value}):`` changes what layers return.

Design, in short:

* The edits of the ``with`` blocks open in a thread form an immutable :class:`EditState` kept in
  the recorder's thread-local, beside the running session. Entering a block installs a new state
  (the outer blocks' rules, then its own), leaving it reinstalls the previous one, on an
  exception too. Other threads see no edit; a deepcopy or pickle of the model gets a fresh
  thread-local, so no edit either.
* A forward that sees edits takes the hooks' general path. At a layer's hook: select the part
  (``Capture(select=...)``), apply the rules for that key in order (outer blocks first), record
  the result as the key's value, and hand the rest of the model a copy-on-write twin of it. Later
  in-place ops write to the twin: neither the returned value nor a tensor of the user's changes.
* ``torch.compile`` traces a thread-local once and never guards it, so an edit cannot be kept
  per thread inside a compiled forward: while any edit block is open (a guarded plain counter),
  a compiled forward of that ``FeatureModel`` runs eagerly, through a ``torch.compiler.disable``
  whose reason names the edit block (the error's message under ``fullgraph=True``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from featwrap import _tree
from featwrap._text import did_you_mean
from featwrap._twins import Twins
from featwrap.errors import EditError, FeatwrapTypeError, FeatwrapValueError

if TYPE_CHECKING:
    from featwrap._capture import Recorder, Session

__all__ = ["Edit", "EditValue"]

Tensor = torch.Tensor

#: What an edit does to a value: a callable ``fn(value) -> new value``, or a tensor replacing it.
EditValue: TypeAlias = Callable[[Any], Any] | Tensor

_COUNT_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Rule:
    key: str
    change: EditValue
    call: int | None

    def apply(self, value: Any) -> Any:
        change = self.change
        if not isinstance(change, Tensor):
            new = change(value)
            if new is None:
                raise EditError(
                    f"The edit function for layer {self.key!r} returned None. Return the new "
                    "value (to change the tensor in place, return it after the change)."
                )
            return new
        if not isinstance(value, Tensor):
            raise EditError(
                f"Layer {self.key!r} gives {_tree.describe_structure(value)}, which a tensor cannot "
                "replace. Pass a function that builds the new value, or capture one part "
                "with featwrap.Capture(path, select=...) and replace that."
            )
        if (change.shape, change.dtype, change.device) != (value.shape, value.dtype, value.device):
            raise EditError(
                f"The tensor replacing layer {self.key!r} has shape {tuple(change.shape)}, "
                f"{change.dtype} on {change.device}, but the layer gives shape "
                f"{tuple(value.shape)}, {value.dtype} on {value.device}. Pass a tensor like "
                "the layer's value (one captured in another run), or a function."
            )
        return change


class EditState:
    """The rules of the edit blocks open in one thread, per key index; immutable."""

    __slots__ = ("previous", "rules")

    def __init__(self, rules: dict[int, tuple[_Rule, ...]], previous: EditState | None) -> None:
        self.rules = rules
        self.previous = previous

    def _edited(self, session: Session, i: int, value: Any) -> Any:
        """``value`` after the rules for key ``i`` that apply to this call of its module."""
        count = session.counts[i]
        for rule in self.rules.get(i, ()):
            if rule.call is None or rule.call == count:
                value = rule.apply(value)
        return value

    # -- the hooks' general path when edits are open (see featwrap._capture.Recorder) ------------
    def on_output(
        self, session: Session, indices: tuple[int, ...], output: Any, args: tuple[Any, ...]
    ) -> Any:
        edited = output
        for i in indices:
            edited = self._edited(session, i, edited)
        if edited is output:
            twin = session.record(indices, output, args)
            return twin.handed(output) if isinstance(twin, Twins) else twin
        if type(edited) is Tensor and edited._base is None:
            for a in args:
                if a is edited:
                    break
            else:  # a new tensor (or the user's): returned as is, the model goes on with a twin
                return session.record_fresh(indices, edited)
        twin = session.record(indices, edited, args)
        if isinstance(twin, Twins):
            return twin.handed(edited)
        return _twin(twin, edited)

    def on_selected_output(
        self, session: Session, indices: tuple[int, ...], output: Any, args: tuple[Any, ...]
    ) -> Any:
        rec = session.recorder
        new_output = output
        for i in indices:
            select, key = rec.selectors[i], rec.keys[i]
            part = _tree.select_output(new_output, select, key)
            edited = self._edited(session, i, part)
            if edited is not part:
                new_output = _tree.replace_output(new_output, select, edited, key)
            twins = session.record((i,), edited, args, new_output)
            if twins is not None:
                new_output = twins.handed(new_output)
            elif edited is not part:  # no grad: the model goes on with a copy-on-write twin
                new_output = _tree.replace_output(new_output, select, _twin(None, edited), key)
        return None if new_output is output else new_output

    def on_input(
        self, session: Session, indices: tuple[int, ...], args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        rec = session.recorder
        replaced = None
        for i in indices:
            select, key = rec.selectors[i], rec.keys[i]
            arg = _tree.select_input(args, kwargs, select, key)
            edited = self._edited(session, i, arg)
            if edited is not arg:
                replaced = args, kwargs = _tree.replace_input(args, kwargs, select, edited)
            twins = session.record((i,), edited, (), (args, kwargs))
            if twins is not None:
                replaced = args, kwargs = twins.handed((args, kwargs))
            elif edited is not arg:  # no grad: the module runs on a copy-on-write twin
                twin = _twin(None, edited)
                replaced = args, kwargs = _tree.replace_input(args, kwargs, select, twin)
        return replaced


def _twin(twin: Any, edited: Any) -> Any:
    """What the model continues with after an edit: the session's twin, else a fresh
    copy-on-write one (so that the model's in-place ops never reach an edited value)."""
    return twin if twin is not None else _tree.snapshot(edited, detach=False)


class Edit:
    """The context manager returned by :meth:`featwrap.FeatureModel.edit`.

    Entering it makes the edits apply to the forwards of this thread; leaving it (normally or
    through an exception) restores the edits that applied before. It can be entered again.
    """

    def __init__(
        self, recorder: Recorder, edits: Mapping[str, EditValue], call: int | None
    ) -> None:
        self._recorder = recorder
        self._rules = _rules(recorder, edits, call)

    def __repr__(self) -> str:
        keys = sorted({rule.key for rules in self._rules.values() for rule in rules})
        return f"Edit({keys})"

    def __enter__(self) -> Edit:
        local = self._recorder._local
        previous: EditState | None = local.edits
        merged = dict(previous.rules) if previous is not None else {}
        for i, rules in self._rules.items():
            merged[i] = merged.get(i, ()) + rules
        local.edits = EditState(merged, previous)
        with _COUNT_LOCK:
            self._recorder.open_edits += 1
        return self

    def __exit__(self, *exc: object) -> None:
        local = self._recorder._local
        state: EditState | None = local.edits
        local.edits = state.previous if state is not None else None
        with _COUNT_LOCK:
            self._recorder.open_edits -= 1


def _rules(
    recorder: Recorder, edits: Mapping[str, EditValue], call: int | None
) -> dict[int, tuple[_Rule, ...]]:
    """Validate the arguments of ``FeatureModel.edit``; the rules per key index."""
    if not isinstance(edits, Mapping):
        raise FeatwrapTypeError(
            f"edit() takes a dict {{key: function or tensor}}, got {type(edits).__name__}: "
            f"{edits!r:.80}"
        )
    if call is not None and (isinstance(call, bool) or not isinstance(call, int) or call < 0):
        raise FeatwrapValueError(
            f"call={call!r} is not a call index. Pass None (every call of the layer's module "
            "in a forward) or an int >= 0 (0: the first call)."
        )
    keys = recorder.keys
    rules: dict[int, tuple[_Rule, ...]] = {}
    for key, change in edits.items():
        if key not in keys:
            raise EditError(
                f"{key!r} is not a key of this FeatureModel, whose layers are {list(keys)}."
                f"{did_you_mean(key, keys)} Edit a captured layer (add it to the layers "
                "of the FeatureModel first)."
            )
        if not (isinstance(change, Tensor) or callable(change)):
            raise FeatwrapTypeError(
                f"The edit for {key!r} must be a function fn(value) -> new value or a tensor, "
                f"got {type(change).__name__}: {change!r:.80}"
            )
        i = keys.index(key)
        if callable(recorder.selectors[i]):
            raise EditError(
                f"Layer {key!r} is captured with a function as select, through which an edit "
                "cannot be written back. Capture it with an int or str select (an index, key or "
                "attribute), or without select and edit the whole value."
            )
        rules[i] = (_Rule(key, change, call),)
    return rules

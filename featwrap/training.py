"""Training a FeatureModel that stops early: its view leaves out the modules that never run.

With ``output_key=None`` the forward stops once every requested layer has fired, so the modules
after the last one (a classifier's ``fc``, a ViT's final norm and head) never take part in the
loss. DDP (with ``find_unused_parameters=False``), optimizers and checkpoints should not see them.

The design, in short: the backbone object is never changed. The *FeatureModel's view* of it leaves
those modules out: ``fm.named_modules()`` skips them, hence ``fm.parameters()``,
``fm.named_parameters()``, ``fm.buffers()`` and everything built on them (optimizers, DDP's
parameters and buffer broadcasts, FSDP2, ``zero_grad``, gradient clipping), and
``fm.state_dict()`` leaves out their keys. ``fm.backbone`` still holds every module, with the
weights it had (``.to()``, ``.train()`` and ``load_state_dict`` reach them as before).

Which modules: one forward of the FeatureModel on fake tensors (no compute, no memory), with
autograd on. A module is unused when it holds parameters or buffers, neither it nor any module
inside it was entered before the last requested layer produced its value (so neither the modules
after the early stop, nor those that a parent runs before returning, as the blocks after the
requested one in an ``nn.Sequential``), and none of its parameters is in the autograd graph of
the returned features (a weight used by another module, as in tied embeddings, keeps its module
in). The forward's side effects on the modules' attributes are undone. Found when the
FeatureModel is made (before any wrapper such as FSDP2 adds its hooks), for the input size the
model expects; :meth:`FeatureModel.find_unused` finds it again for other inputs. A model the
fake forward fails on keeps every parameter, and the first use of the view says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from featwrap import _tree
from featwrap._capture import Recorder, StopForward
from featwrap._dryrun import (
    _FAKE_BATCH,
    _args,
    _python_state,
    _restore_python_state,
    input_size_for,
)
from featwrap.errors import FeatwrapValueError, PrunedModuleError

__all__ = ["Pruned", "UnusedModulesWarning", "parameters_by_key"]


class UnusedModulesWarning(UserWarning):
    """The unused modules could not be found, so a FeatureModel's view keeps every parameter."""


def find_unused(fm: Any, input_size: Any = None, inputs: Any = None) -> tuple[str, ...]:
    """Backbone paths of the outermost modules that cannot contribute to ``fm``'s features.

    ``fm`` is a FeatureModel whose view is complete while this runs. Raises a
    :class:`~featwrap.errors.FeatwrapValueError` naming the way out when the model cannot run on
    fake tensors of that size.
    """
    if inputs is not None and input_size is not None:
        raise FeatwrapValueError("Pass input_size or inputs, not both.")
    backbone: nn.Module = fm.backbone
    size = None if inputs is not None else input_size_for(backbone, input_size)
    try:
        ran, live = _fake_forward(fm, backbone, size, inputs)
    except Exception as error:
        cause = getattr(error, "original", None) or error  # a BackboneError's
        first_line = (str(cause).strip().splitlines() or [""])[0][:200]
        raise FeatwrapValueError(
            f"{type(backbone).__name__} could not run on fake tensors of input size {size} "
            f"({type(cause).__name__}: {first_line}); pass the input it expects: "
            "fm.find_unused(input_size=(C, H, W)) or fm.find_unused(inputs=example)."
        ) from error
    return _outermost_unused(backbone, ran, live)


def find_unused_or_why(fm: Any) -> tuple[tuple[str, ...], str | None]:
    """:func:`find_unused` for the input size the model expects, or nothing and the reason."""
    try:
        return find_unused(fm), None
    except FeatwrapValueError as error:
        return (), str(error)


def warn_view_incomplete(why: str) -> None:
    """Say once, on first use of the view, that the unused modules could not be found."""
    warnings.warn(
        f"{why} Until then every parameter stays in the FeatureModel's parameters(), including "
        "those that will get no gradient (DDP then fails): find them before building the "
        "optimizer or DDP.",
        UnusedModulesWarning,
        stacklevel=5,
    )


def _fake_forward(
    fm: Any, backbone: nn.Module, size: tuple[int, ...] | None, inputs: Any
) -> tuple[set[int], set[int]]:
    """Ids of the modules that ran before the features were final, and of the parameters in
    the autograd graph of the returned features."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    clock = _Clock(backbone, [(c.path, c.input) for c in fm._captures])
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    saved = _python_state(backbone)
    real_of: dict[int, nn.Parameter] = {}
    try:
        with mode, torch.enable_grad():
            state: dict[str, torch.Tensor] = {}
            for name, param in fm.named_parameters():
                fake = mode.from_tensor(param.detach())
                if fake.is_floating_point() or fake.is_complex():
                    fake.requires_grad_(True)
                state[name] = fake
                real_of[id(fake)] = param
            state.update((n, mode.from_tensor(b)) for n, b in fm.named_buffers())
            args, kwargs = _args(inputs, size, _FAKE_BATCH, fm)
            args, kwargs = _tree.map_tensors(mode.from_tensor, (args, kwargs))
            values = functional_call(fm, state, args, kwargs)
            live = {id(real_of[i]) for i in _leaves(values) if i in real_of}
            del state, values
    finally:
        _restore_python_state(saved)
        _restore_attributes(saved)
        clock.remove()
    return clock.ran_before_final(), live


def _restore_attributes(saved: Any) -> None:
    """Undo every attribute a forward set on a module (a flag, a counter): this forward runs
    when the FeatureModel is made, and must leave the model as it found it."""
    for module, before, _ in saved:
        now = module.__dict__
        for name in [n for n in now if n not in before]:
            del now[name]
        for name, value in before.items():
            if now.get(name, _MISSING) is not value:
                now[name] = value


_MISSING = object()


class _Clock:
    """When each module of the backbone was first entered, and when the requested layers last
    produced a value: a module entered after that cannot have contributed to any feature."""

    def __init__(self, backbone: nn.Module, captures: list[tuple[str, bool]]) -> None:
        self.ticks = 0
        self.entered: dict[int, int] = {}
        self.final = 0
        self.handles = [
            m.register_forward_pre_hook(self.enter, prepend=True) for m in backbone.modules()
        ]
        for path, is_input in captures:
            module = backbone.get_submodule(path)
            if is_input:  # the value is taken on entry: mark it before featwrap's hook stops
                self.handles.append(module.register_forward_pre_hook(self.produced, prepend=True))
            else:
                self.handles.append(module.register_forward_hook(self.produced, prepend=True))

    def enter(self, module: nn.Module, args: Any) -> None:
        self.ticks += 1
        self.entered.setdefault(id(module), self.ticks)

    def produced(self, module: nn.Module, *args: Any) -> None:
        self.ticks += 1
        self.final = self.ticks

    def ran_before_final(self) -> set[int]:
        final = self.final or self.ticks + 1
        return {m for m, tick in self.entered.items() if tick < final}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _leaves(values: Any) -> set[int]:
    """Ids of the leaf tensors in the autograd graph of every tensor inside ``values``."""
    seen: set[Any] = set()
    found = {id(t) for t in _tree.tensors(values) if t.requires_grad and t.grad_fn is None}
    stack = [t.grad_fn for t in _tree.tensors(values) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it feeds
        if variable is not None:
            found.add(id(variable))
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return found


def _outermost_unused(backbone: nn.Module, ran: set[int], live: set[int]) -> tuple[str, ...]:
    """The paths of the outermost modules that hold parameters or buffers and whose whole
    subtree neither ran before the features were final nor holds a parameter they depend on."""
    used: dict[int, bool] = {}

    def is_used(module: nn.Module) -> bool:
        key = id(module)
        if key not in used:
            used[key] = True  # a module inside itself (a cycle) counts as used
            direct = key in ran or any(id(p) in live for p in module.parameters(recurse=False))
            children = [is_used(child) for child in module.children()]  # every child, no short cut
            used[key] = direct or any(children)
        return used[key]

    is_used(backbone)
    unused: list[str] = []
    for path, module in backbone.named_modules(remove_duplicate=False):
        if (
            path
            and not used[id(module)]
            and _has_state(module)  # a dropout whose p a used module reads is no business of ours
            and not any(path.startswith(u + ".") for u in unused)
        ):
            unused.append(path)
    return tuple(unused)


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def named_modules_in_view(
    fm: nn.Module,
    unused: tuple[str, ...],
    memo: set[nn.Module] | None,
    prefix: str,
    remove_duplicate: bool,
) -> Iterator[tuple[str, nn.Module]]:
    """``fm.named_modules()`` without the backbone's ``unused`` subtrees (backbone paths)."""
    if memo is None:
        memo = set()
    skipped = frozenset("backbone." + u for u in unused)
    stack: list[tuple[str, nn.Module]] = [("", fm)]
    while stack:
        path, module = stack.pop()
        if path in skipped or (remove_duplicate and module in memo):
            continue
        if remove_duplicate:
            memo.add(module)
        yield (prefix + "." + path if prefix and path else prefix or path), module
        children = [(path + "." + n if path else n, m) for n, m in module._modules.items()]
        stack.extend(reversed([(p, m) for p, m in children if m is not None]))


def in_unused(key: str, unused: tuple[str, ...]) -> bool:
    """Whether the backbone state-dict key ``key`` belongs to one of the ``unused`` modules."""
    return any(key.startswith(u + ".") for u in unused)


# -- pruning: the unused modules taken out of the backbone, on request -----------------------------
class Pruned(nn.Module):
    """Stands in the backbone for a module that :meth:`FeatureModel.prune` took out.

    Holds no parameter. Called by the FeatureModel's forward (a parent that runs its children
    to the end, such as ``nn.Sequential``, after the features are final), it ends that forward,
    as the early stop would; called otherwise, it raises :class:`~featwrap.PrunedModuleError`.
    """

    def __init__(self, path: str, kind: str, recorder: Recorder) -> None:
        super().__init__()
        self.path = path
        self.kind = kind
        self._recorder = recorder

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        session = self._recorder._running()
        if session is not None:
            raise StopForward(session)
        raise PrunedModuleError(
            f"{self.path} ({self.kind}) was taken out of the backbone by FeatureModel.prune(), "
            "so the backbone cannot run to its end; fm.unprune(removed) puts it back."
        )

    def extra_repr(self) -> str:
        return f"{self.kind}, taken out by FeatureModel.prune()"


def prune(backbone: nn.Module, unused: tuple[str, ...], recorder: Recorder) -> dict[str, nn.Module]:
    """Replace each module of ``unused`` in ``backbone`` by a :class:`Pruned`; return them."""
    removed: dict[str, nn.Module] = {}
    for path in unused:
        parent, name = _parent_and_name(backbone, path)
        module = parent._modules[name]
        if module is not None and not isinstance(module, Pruned):
            removed[path] = module
            setattr(parent, name, Pruned(path, type(module).__name__, recorder))
    return removed


def unprune(backbone: nn.Module, removed: dict[str, nn.Module]) -> None:
    """Put the modules that :func:`prune` returned back in ``backbone``."""
    if not isinstance(removed, dict):
        raise FeatwrapValueError(
            f"unprune() takes the dict that prune() returned, got {type(removed).__name__}"
        )
    for path in removed:
        parent, name = _parent_and_name(backbone, path)
        if not isinstance(parent._modules.get(name), Pruned):
            raise FeatwrapValueError(
                f"{path!r} is not a module that prune() took out of this backbone (it holds "
                f"{type(parent._modules.get(name)).__name__}); pass the dict prune() returned."
            )
    for path, module in removed.items():
        parent, name = _parent_and_name(backbone, path)
        setattr(parent, name, module)


def _parent_and_name(backbone: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return (backbone.get_submodule(parent) if parent else backbone), name


def report_pruned_keys(keys: list[str]) -> None:
    """Say which keys of a loaded checkpoint belong to pruned modules, so were not loaded."""
    shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
    warnings.warn(
        f"{len(keys)} keys of the checkpoint belong to modules that FeatureModel.prune() took out "
        f"of the backbone, and were not loaded: {shown}. To load them too, call "
        "fm.unprune(removed) before load_state_dict.",
        UnusedModulesWarning,
        stacklevel=4,
    )


def parameters_by_key(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{state-dict key: parameter}`` for every parameter of ``model.parameters()``.

    A FeatureModel's parameters are named by attribute path (``backbone.layer1.0.conv1.weight``),
    as for any module, while its ``state_dict()`` keys are the backbone's own
    (``layer1.0.conv1.weight``). Use this where the checkpoint's names matter: parameter groups,
    freezing by name, weight-decay lists such as timm's ``no_weight_decay()``. ``model`` may be a
    FeatureModel or any module holding one (the keys are then ``model.state_dict()``'s).
    Parameters that a FeatureModel leaves out of its view are not in the result.

    >>> from torch import nn
    >>> from featwrap import FeatureModel
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> fm = FeatureModel(net, ["1"], output_key=None)
    >>> fm.find_unused(input_size=(4,))  # an MLP's input; images need no call
    ('2',)
    >>> [name for name, _ in fm.named_parameters()], list(parameters_by_key(fm))
    (['backbone.0.weight', 'backbone.0.bias'], ['0.weight', '0.bias'])
    """
    wanted = {id(p) for p in model.parameters()}
    found: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in wanted and id(value) not in seen:
            seen.add(id(value))
            found[key] = value
    return found

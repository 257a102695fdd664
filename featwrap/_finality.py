"""When a requested layer's value is final, so that a forward with ``output_key=None`` may stop.

A value is final when the module cannot be called again in this forward. featwrap cannot read a
forward's code, so it decides from the module tree, with what it knows of the code:

* ``nn.Sequential`` (its own ``forward``) calls each child once, in order, per call;
* a stack (``nn.ModuleList`` / ``nn.ModuleDict``, which has no forward) is gone through once, in
  order, per call of the module holding it (``for block in self.blocks: x = block(x)``);
* a module's forward calls each child that holds parameters or buffers once (the root's
  ``layer2``, a wrapper's ``bert.encoder``), except inside the blocks of a stack: blocks are
  where models loop and share weights (ALBERT calls its one layer group twelve times), so a
  module inside a block is final with its block;
* a child without weights (an activation, a pooling) may be called again by its holder
  (BasicBlock calls its ``relu`` twice);
* a module registered under two paths (a shared block, a Siamese encoder) may run once per path.

A module *runs once* per forward when it is registered under one path and each step from the
root to it is one of the first three (with its holder running once). A layer's **anchor** is the
nearest module, itself or an ancestor, that runs once; the layer is final when the anchor's call
is over: when the anchor returns, or, for an element of a stack, when the next element is called
(so a block called several times in a row is waited for); the last element of a stack, when the
module holding the stack returns. A layer whose anchor is the root is final only when the
forward returns (no early stop for it). With ``repeats="first"`` a layer is final at its first
call, whatever the tree.

At run time, a layer called again after featwrap took its value as final raises
:class:`~featwrap.RepeatedCallError` (the model breaks one of the rules above): an error, never a
stale value.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["Final", "plan"]


@dataclass(frozen=True)
class Final:
    """When one layer's value is final.

    Attributes:
        at_once: at its first capture (when the module returns; for an input, when it is called).
        after: when this module returns.
        before: when this module is called (the next element of a stack).
    All three unset: when the forward returns.
    """

    at_once: bool = False
    after: nn.Module | None = None
    before: nn.Module | None = None


AT_ONCE = Final(at_once=True)
AT_END = Final()


def plan(backbone: nn.Module, paths: list[str], first: bool) -> list[Final]:
    """:class:`Final` of each module path (``first``: ``repeats="first"``)."""
    if first:
        return [AT_ONCE] * len(paths)
    tree = _Tree(backbone)
    return [tree.final(path) for path in paths]


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _common_prefix(paths: list[str]) -> str:
    """The deepest module path that holds every one of ``paths``."""
    parts = [p.split(".") for p in paths]
    common = []
    for names in zip(*parts, strict=False):
        if len(set(names)) > 1:
            break
        common.append(names[0])
    return ".".join(common)


def _is_stack(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.ModuleDict)) and _no_forward(module)


def _no_forward(module: nn.Module) -> bool:
    return type(module).forward is nn.Module.forward


def _is_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _has_weights(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


class _Tree:
    """The backbone's module tree, with every path each module is registered under."""

    def __init__(self, backbone: nn.Module) -> None:
        self.root = backbone
        self.paths: dict[int, list[str]] = {}
        for path, module in backbone.named_modules(remove_duplicate=False):
            self.paths.setdefault(id(module), []).append(path)
        self._once: dict[str, bool] = {}

    def module(self, path: str) -> nn.Module:
        return self.root.get_submodule(path)

    def runs_once(self, path: str) -> bool:
        """Whether the module at ``path`` is called at most once per forward (module docstring)."""
        if not path:
            return True
        if path not in self._once:
            self._once[path] = self._decide(path)
        return self._once[path]

    def _decide(self, path: str) -> bool:
        module = self.module(path)
        if len(self.paths[id(module)]) > 1:
            return False
        parent_path = _parent(path)
        parent = self.module(parent_path)
        if _is_stack(module) or _is_sequential(parent) or _is_stack(parent):
            return self.runs_once(parent_path)
        return (
            _has_weights(module)
            and self.runs_once(parent_path)
            and not self._in_stack_block(parent_path)
        )

    def _in_stack_block(self, path: str) -> bool:
        """Whether ``path`` is an element of a stack or inside one."""
        while path:
            parent_path = _parent(path)
            if _is_stack(self.module(parent_path)):
                return True
            path = parent_path
        return False

    def final(self, path: str) -> Final:
        # a module registered under several paths is called from any of them: its anchor holds
        # them all
        anchor = _common_prefix(self.paths[id(self.module(path))])
        while anchor and not (self.runs_once(anchor) and not _no_forward(self.module(anchor))):
            anchor = _parent(anchor)
        return self._end_of_call(anchor, is_layer=anchor == path)

    def _end_of_call(self, anchor: str, is_layer: bool) -> Final:
        """The event that ends the only call of ``anchor``."""
        if not anchor:
            return AT_END
        parent_path = _parent(anchor)
        parent = self.module(parent_path)
        if _is_stack(parent):
            names = list(parent._modules)
            index = names.index(anchor.rpartition(".")[2])
            later = [parent._modules[n] for n in names[index + 1 :]]
            following = next((m for m in later if m is not None), None)
            if following is not None:
                return Final(before=following)
            holder = parent_path
            while holder and _no_forward(self.module(holder)):
                holder = _parent(holder)
            return self._end_of_call(holder, is_layer=False) if holder else AT_END
        return AT_ONCE if is_layer else Final(after=self.module(anchor))

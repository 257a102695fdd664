"""FeatureModel: a backbone whose forward returns a dict of its intermediate features."""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from featwrap import maps
from featwrap._capture import Recorder, StopForward
from featwrap._finality import plan
from featwrap._options import OUTPUT_KEY, Missing, Repeats
from featwrap.edit import Edit, EditValue
from featwrap.errors import (
    BackboneError,
    FeatwrapError,
    FeatwrapTypeError,
    FeatwrapValueError,
    HooksRemovedError,
    backbone_error_class,
)
from featwrap.info import FeatureInfo, InputSize, measure
from featwrap.layers import Capture, LayerSpec, resolve_layers
from featwrap.training import (
    find_unused,
    find_unused_or_why,
    in_unused,
    named_modules_in_view,
    prune,
    report_pruned_keys,
    unprune,
    warn_view_incomplete,
)

__all__ = ["FeatureModel", "feature_info"]

_PREFIX = "backbone."


class FeatureModel(nn.Module):
    """Wrap any model so that its forward returns a dict of intermediate features.

    Hooks are registered once, here; each forward returns ``{output_key: model output,
    key: feature, ...}`` with the features exactly as the modules returned them, autograd graph
    included (unless ``detach=True``).

    Args:
        backbone: any ``torch.nn.Module``. ``fm.backbone`` is this very object.
        layers: module paths as listed by :func:`featwrap.list_layers` (``"layer3.0.downsample.1"``),
            a single path, fnmatch globs (``"layer*"``, expanded in ``named_modules()`` order) or a
            dict ``{path: alias}`` whose aliases become the keys. ``"fc:input"`` is what ``fc``
            was called with (the pooled embedding); :class:`featwrap.Capture` picks a module's
            input or one part of a structured output (``Capture("attn", select=0)``).
            ``featwrap.stages(model)`` gives the multi-scale stages of timm and torchvision
            models.
        output_key: the key of the backbone's own return value, which comes first. ``None`` leaves
            it out, and the forward then stops as soon as every requested layer's value is final:
            later modules do not run. A value is final when the call of its *anchor* is over:
            the nearest module, the layer itself or an ancestor, that runs once per forward. A
            module runs once when it is registered under one path and each step from the root
            to it is a child of a plain ``nn.Sequential``, an element of an ``nn.ModuleList`` /
            ``nn.ModuleDict`` (gone through once by the module holding it), or a child that
            holds parameters or buffers (not inside a block of such a stack: a module there is
            final with its block). The call is over when the anchor returns;
            for an element of a stack, when the next element is called (the last element: when
            the module holding the stack returns). So block ``k`` of a stack stops the forward
            before block ``k + 1`` runs, a block's ``relu`` (called twice) waits for its block,
            and a module without weights at the root (a reused activation) or one registered
            twice waits for the forward's end. ``repeats="first"`` makes every layer final at
            its first call. A layer called again after it was taken as final (a block the
            forward calls outside its stack) raises :class:`~featwrap.RepeatedCallError`,
            never returns the earlier value.
            The modules that never run before the stop are then left out of the FeatureModel's
            parameters, buffers and state dict (not out of the backbone): see
            :attr:`unused_modules`.
        detach: return features detached from the autograd graph.
        repeats: for a layer that runs several times in one forward: ``"last"`` (default),
            ``"first"``, ``"all"`` (a list of every call, in order) or ``"error"``.
        missing: for a requested layer that did not run in a forward: ``"error"`` (default) raises
            :class:`~featwrap.MissingFeatureError`, ``"skip"`` leaves the key out, ``"none"`` maps
            it to ``None``.
        output_fmt: return every layer as ``"NCHW"`` (a channels-first map), ``"NHWC"`` or
            ``"NLC"`` (tokens); ``None`` (default): as the modules return them. Tokens are laid out
            on the grid of the actual input (prefix tokens left out), channels-last maps are
            permuted; a :class:`~featwrap.Capture` sets its own ``output_fmt`` and ``layout``
            (:class:`~featwrap.Tokens`). Applied after the forward, on the captured values.
        prefix_tokens: with a format, also return each token layer's prefix tokens (class,
            distillation, register), ``(B, prefix, C)``, under the key ``"<key>:prefix"``.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> fm = FeatureModel(net, {"1": "hidden"})
    >>> out = fm(torch.randn(3, 4))
    >>> list(out), tuple(out["hidden"].shape)
    (['logits', 'hidden'], (3, 8))
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: LayerSpec,
        *,
        output_key: str | None = "logits",
        detach: bool = False,
        repeats: Repeats | str = "last",
        missing: Missing | str = "error",
        output_fmt: str | None = None,
        prefix_tokens: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise FeatwrapTypeError(
                f"backbone must be a torch.nn.Module, got {type(backbone).__name__}: "
                f"{backbone!r:.80}"
            )
        if output_key is not None and not isinstance(output_key, str):
            raise FeatwrapTypeError(
                f"output_key must be a string or None, got {type(output_key).__name__}: "
                f"{output_key!r}"
            )
        if not isinstance(detach, bool):
            raise FeatwrapTypeError(f"detach must be True or False, got {detach!r}")
        repeats_ = Repeats.parse(repeats, "repeats")
        missing_ = Missing.parse(missing, "missing")
        resolved = resolve_layers(backbone, layers, output_key)

        self.backbone = backbone
        self.training = backbone.training  # mirror the backbone; never touch its submodules' modes
        self.output_key = output_key
        self._paths = OrderedDict((r.key, r.path) for r in resolved)
        stop_early = output_key is None
        # When stopping early: when each layer's value is final (see featwrap._finality).
        first = repeats_ is Repeats.FIRST or not stop_early
        finals = plan(backbone, [r.path for r in resolved], first)
        self._recorder = Recorder(
            keys=[r.key for r in resolved],
            repeats=repeats_,
            detach=detach,
            missing=missing_,
            stop_early=stop_early,
            wait_for_parent=[not f.at_once for f in finals],
            selectors=[r.select for r in resolved],
        )
        self._captures = tuple(
            Capture(r.path, r.key, r.input, r.select, r.layout, r.output_fmt) for r in resolved
        )
        self.output_fmt = output_fmt
        self.prefix_tokens = prefix_tokens
        self._maps = maps.converter(resolved, output_fmt, prefix_tokens)
        self._handles: list[RemovableHandle] = []
        self._removed = False
        rec, handles = self._recorder, self._handles
        plain = [r.module if not r.input and r.select is None else None for r in resolved]
        selected = [r.module if not r.input and r.select is not None else None for r in resolved]
        self._register(plain, rec.on_output, handles)
        self._register(selected, rec.on_selected_output, handles)
        self._register(
            [r.module if r.input else None for r in resolved], rec.on_input, handles, pre=True
        )
        self._register([f.after for f in finals], rec.on_parent_output, handles)
        self._register([f.before for f in finals], rec.on_next_called, handles, pre=True)
        self.register_state_dict_post_hook(_strip_prefix)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_add_prefix)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_post_hook(_report_backbone_keys)  # type: ignore[no-untyped-call]
        self._loading_prefixes: list[str] = []
        self._unused: tuple[str, ...] = ()  # the full view while the fake forward runs
        self._unused_why: str | None = None  # why it could not be found, until said once
        # found on first use of the view (parameters(), state_dict(), DDP...), not here: the
        # fake forward runs the model's own hooks, and most FeatureModels never need the view
        self._view_pending = stop_early and not detach
        self._finalizer = weakref.finalize(self, _remove_handles, self._handles)

    @staticmethod
    def _register(
        modules: list[nn.Module | None],
        method: Any,
        handles: list[RemovableHandle],
        pre: bool = False,
    ) -> None:
        groups: dict[int, tuple[nn.Module, list[int]]] = {}
        for i, module in enumerate(modules):
            if module is not None:
                groups.setdefault(id(module), (module, []))[1].append(i)
        for module, indices in groups.values():
            hook = functools.partial(method, tuple(indices))
            if pre:
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook))

    # -- properties ------------------------------------------------------------------------------
    @property
    def layers(self) -> dict[str, str]:
        """``{key: module path}`` for every requested layer, in the order of the returned dict."""
        return dict(self._paths)

    @property
    def detach(self) -> bool:
        return self._recorder.detach

    @property
    def repeats(self) -> str:
        return self._recorder.repeats.value

    @property
    def missing(self) -> str:
        return self._recorder.missing.value

    @property
    def unused_modules(self) -> tuple[str, ...]:
        """Backbone paths of the modules left out of this FeatureModel's view, outermost first.

        With ``output_key=None`` the forward stops after the last requested layer, so the modules
        after it never take part in a loss. They are left out of ``fm.parameters()``,
        ``fm.named_parameters()``, ``fm.buffers()``, ``fm.modules()`` (so of optimizers, DDP and
        FSDP) and of ``fm.state_dict()``; ``fm.backbone`` still holds them, unchanged, and
        ``fm.load_state_dict`` fills them when the checkpoint has their keys (a checkpoint without
        them loads strictly too). Found on first use, with one forward on fake tensors (no compute) for
        the input size the model expects, on first use; empty with an ``output_key`` or
        ``detach=True``.
        Call :meth:`find_unused` for other inputs.

        >>> from torchvision.models import resnet18
        >>> FeatureModel(resnet18(), ["layer3"], output_key=None).unused_modules
        ('layer4', 'fc')
        """
        return self._view()

    def _view(self) -> tuple[str, ...]:
        """:attr:`unused_modules`, found on first use (one forward on fake tensors)."""
        if self.__dict__.get("_view_pending") and not torch.compiler.is_compiling():
            self._view_pending = False  # the full view while the fake forward runs
            self._unused, self._unused_why = find_unused_or_why(self)
        return self._unused

    def find_unused(
        self, input_size: Sequence[int] | int | None = None, *, inputs: Any = None
    ) -> tuple[str, ...]:
        """Find :attr:`unused_modules` again, on fake tensors of ``input_size`` or like ``inputs``.

        For a model that does not take ``(N, 3, 224, 224)`` images (its own default size for timm
        models and torchvision ViTs); call it before building the optimizer or DDP. Raises when the
        model cannot run on such inputs; with an ``output_key`` nothing is left out.
        """
        if self.output_key is not None or self._recorder.detach:
            return ()
        self._unused, self._unused_why, self._view_pending = (), None, False
        self._unused = find_unused(self, input_size, inputs)
        return self._unused

    def prune(self) -> dict[str, nn.Module]:
        """Take :attr:`unused_modules` out of the backbone, on request; returns them by path.

        The view already leaves them out of parameters, buffers and the state dict; pruning also
        takes them out of ``fm.backbone`` itself (each replaced by a parameter-free
        :class:`~featwrap.training.Pruned`), so that tools walking ``children()`` do not see
        them (FSDP2's ``fully_shard``, ``.to()``), and their memory is freed once the returned
        dict is dropped. Reversible: ``fm.unprune(removed)``. The backbone can then no longer
        run to its end on its own.

        >>> from torchvision.models import resnet18
        >>> fm = FeatureModel(resnet18(), ["layer3"], output_key=None)
        >>> removed = fm.prune()
        >>> list(removed), fm.backbone.fc
        (['layer4', 'fc'], Pruned(Linear, taken out by FeatureModel.prune()))
        >>> fm.unprune(removed)
        """
        return prune(self.backbone, self._view(), self._recorder)

    def unprune(self, removed: dict[str, nn.Module]) -> None:
        """Put back the modules that :meth:`prune` took out of the backbone."""
        unprune(self.backbone, removed)

    def named_modules(
        self,
        memo: set[nn.Module] | None = None,
        prefix: str = "",
        remove_duplicate: bool = True,
    ) -> Iterator[tuple[str, nn.Module]]:
        """As ``nn.Module.named_modules``, without :attr:`unused_modules` (so are
        ``parameters()``, ``buffers()`` and their named forms)."""
        unused = self._view()
        if self._unused_why is not None:
            why, self._unused_why = self._unused_why, None
            warn_view_incomplete(why)
        if unused:
            yield from named_modules_in_view(self, unused, memo, prefix, remove_duplicate)
        else:
            yield from super().named_modules(memo, prefix, remove_duplicate)

    def extra_repr(self) -> str:
        options = [f"layers={list(self._paths)}", f"output_key={self.output_key!r}"]
        rec = self._recorder
        if rec.detach:
            options.append("detach=True")
        if rec.repeats is not Repeats.LAST:
            options.append(f"repeats={rec.repeats.value!r}")
        if rec.missing is not Missing.ERROR:
            options.append(f"missing={rec.missing.value!r}")
        if self.output_fmt is not None:
            options.append(f"output_fmt={self.output_fmt!r}")
        return ", ".join(options)

    # -- the forward -----------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run the backbone on the arguments; return ``{output_key: output, key: feature, ...}``."""
        if self._removed:
            raise HooksRemovedError(
                "This FeatureModel's hooks were removed (remove_hooks() or the end of its "
                "`with` block), so it can capture nothing. Create a new FeatureModel, or call "
                "fm.backbone directly for the plain output."
            )
        recorder = self._recorder
        if torch.compiler.is_compiling():
            return self._traced_forward(args, kwargs)
        session, previous = recorder.open()
        try:
            output = self.backbone(*args, **kwargs)
        except StopForward as stop:
            if stop.session is not session:
                raise
            output = None
        except FeatwrapError:
            raise
        except Exception as error:
            raise _backbone_error(error, session.fired(), recorder.keys) from error
        finally:
            recorder.close(previous)
        if self._maps is not None:
            return self._maps.apply(session.result(output, self.output_key), args, kwargs)
        return session.result(output, self.output_key)

    def _traced_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        recorder = self._recorder
        if recorder.open_edits:  # edits are per thread: one compiled graph cannot hold them
            return _forward_eagerly(self, args, kwargs)
        session = recorder.open_traced()
        try:
            output = self.backbone(*args, **kwargs)
        finally:
            recorder.traced = None
        if self._maps is not None:
            return self._maps.apply(session.result(output, self.output_key), args, kwargs)
        return session.result(output, self.output_key)

    # -- interventions -----------------------------------------------------------------------------
    def edit(self, edits: Mapping[str, EditValue], *, call: int | None = None) -> Edit:
        """Edit layers' values in the forwards of this thread, inside a ``with`` block.

        Args:
            edits: ``{key: change}`` for keys of the returned dict (a module's output, one part
                of it captured with ``Capture(select=...)``, or an input such as ``"fc:input"``).
                A change is a function ``fn(value) -> new value`` (gradients flow through it) or
                a tensor that replaces the value (activation patching: a value captured in
                another run; same shape, dtype and device).
            call: which call of a layer's module is edited when it runs several times in one
                forward: ``None`` (default) every call, an int the call of that index (0: the
                first). ``repeats`` still decides which call's value is returned.

        The rest of the model runs on the edited value, and the returned dict holds it. Edits
        apply in this thread only, to the forwards inside the block; blocks nest (for one key,
        outer edits apply first) and leaving a block, by an exception too, restores the edits
        of before. A copy or pickle of the model carries no edit. While an edit block is open,
        a ``torch.compile``'d forward runs eagerly (``fullgraph=True``: raises, saying so).

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> fm = FeatureModel(net, {"1": "hidden"})
        >>> x = torch.randn(3, 4)
        >>> with fm.edit({"hidden": torch.zeros(3, 8)}):
        ...     out = fm(x)
        >>> torch.equal(out["logits"], net[2].bias.expand(3, 2))
        True
        """
        return Edit(self._recorder, edits, call)

    # -- metadata ----------------------------------------------------------------------------------
    def feature_info(
        self, input_size: Sequence[int] | int | None = None, *, inputs: Any = None
    ) -> FeatureInfo:
        """Shape (without batch), channels and reduction of every returned key, for an input of
        ``input_size`` (``(C, H, W)``), measured on fake tensors: no FLOPs, no memory, no buffer
        changed. See :func:`featwrap.feature_info`.

        >>> import torch
        >>> from torchvision.models import resnet18
        >>> fm = FeatureModel(resnet18(), ["layer1", "layer4"])
        >>> info = fm.feature_info((3, 224, 224))
        >>> info.channels(), info.reduction(), info["layer4"].shape
        ([64, 512], [4, 32], (512, 7, 7))
        """
        return measure(
            type(self),
            self.backbone,
            list(self._captures),
            output_key=self.output_key,
            repeats=self.repeats,
            input_size=input_size,
            inputs=inputs,
            output_fmt=self.output_fmt,
            prefix_tokens=self.prefix_tokens,
        )

    # -- hooks' lifetime -------------------------------------------------------------------------
    def remove_hooks(self) -> None:
        """Remove every hook this FeatureModel registered on the backbone (idempotent)."""
        _remove_handles(self._handles)
        self._removed = True

    def __enter__(self) -> FeatureModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove_hooks()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_finalizer", None)  # a finalizer cannot be copied; __setstate__ makes one
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        self._finalizer = weakref.finalize(self, _remove_handles, self._handles)


def feature_info(
    model: FeatureModel | nn.Module,
    input_size: InputSize | None = None,
    *,
    layers: LayerSpec | None = None,
    inputs: Any = None,
) -> FeatureInfo:
    """Shapes, channels and reductions of every key a FeatureModel returns, at no compute cost.

    Args:
        model: a :class:`~featwrap.FeatureModel`, or a plain module together with ``layers``.
        input_size: ``(C, H, W)`` without batch (any number of spatial dims), or ``S`` for
            ``(3, S, S)``. Default: the timm model's ``pretrained_cfg["input_size"]``, a
            torchvision ViT's ``image_size``, else ``(3, 224, 224)``.
        layers: the layers, when ``model`` is a plain module (as for ``FeatureModel``).
        inputs: instead of ``input_size``, example inputs: a tensor, a tuple of positional
            arguments or a dict of keyword arguments (their batch size does not matter).

    Returns:
        A :class:`FeatureInfo`. The model's parameters, buffers, mode and hooks are as before.

    >>> import torch
    >>> from torch import nn
    >>> from featwrap import FeatureModel
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten())
    >>> info = FeatureModel(net, {"0": "conv"}).feature_info((3, 32, 32))
    >>> info["conv"].shape, info.channels(), info.reduction()
    ((8, 16, 16), [8], [2])
    """
    if isinstance(model, FeatureModel):
        if layers is not None:
            raise FeatwrapValueError(
                "feature_info(fm, layers=...): a FeatureModel has its layers already; pass a plain "
                "module with layers=, or call fm.feature_info(input_size)."
            )
        return model.feature_info(input_size, inputs=inputs)
    if isinstance(model, nn.Module):
        if layers is None:
            raise FeatwrapValueError(
                f"feature_info({type(model).__name__}) needs layers=: the module paths to measure "
                "(see featwrap.list_layers(model) or featwrap.stages(model)), or a FeatureModel."
            )
        return measure(
            FeatureModel,
            model,
            layers,
            output_key=OUTPUT_KEY,
            repeats=Repeats.LAST,
            input_size=input_size,
            inputs=inputs,
        )
    raise FeatwrapTypeError(
        f"feature_info expects a FeatureModel or a torch.nn.Module, got {type(model).__name__}"
    )


def _forward(fm: FeatureModel, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return fm.forward(*args, **kwargs)


#: A compiled forward's way out while an edit block is open: the whole forward runs eagerly
#: (nested modules are not compiled either); under ``fullgraph=True`` torch.compile raises with
#: this reason in its message.
_forward_eagerly: Callable[[FeatureModel, tuple[Any, ...], dict[str, Any]], dict[str, Any]]
_forward_eagerly = torch.compiler.disable(  # type: ignore[no-untyped-call]
    _forward,
    reason="featwrap: an edit block (`with fm.edit(...)`) is open on this FeatureModel, and "
    "edits do not apply inside a torch.compile'd graph (one graph serves every thread), so the "
    "forward runs eagerly. With fullgraph=True that is an error: call the FeatureModel itself, "
    "not its compiled version, inside the edit block.",
)


def _remove_handles(handles: list[RemovableHandle]) -> None:
    while handles:
        handles.pop().remove()


def _backbone_error(error: Exception, fired: list[str], keys: tuple[str, ...]) -> Exception:
    pending = [k for k in keys if k not in fired]
    message = (
        f"{type(error).__name__} raised inside the backbone's forward: {error}\n"
        f"(featwrap: requested layers that had fired before the error: "
        f"{', '.join(map(repr, fired)) or 'none'}; not reached: {', '.join(map(repr, pending)) or 'none'})"
    )
    try:
        wrapped: Exception = backbone_error_class(type(error))(message)
    except Exception:
        wrapped = backbone_error_class(RuntimeError)(message)
    assert isinstance(wrapped, BackboneError)
    wrapped.fired = tuple(fired)
    wrapped.original = error
    return wrapped


# -- state dict: the FeatureModel's keys are the backbone's own --------------------------------
# Parents call a child's state_dict() for its side effect on a shared destination, so both hooks
# rename in place, keeping the order. Module paths in ``_metadata`` carry no trailing dot.
def _strip_prefix(
    module: FeatureModel, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    _rename_in_place(state_dict, prefix + _PREFIX, prefix)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        _rename_in_place(metadata, prefix + _PREFIX, prefix, dotless=True)
    unused = module.unused_modules
    for key in [k for k in state_dict if k.startswith(prefix)] if unused else ():
        if in_unused(key[len(prefix) :], unused):
            del state_dict[key]


def _add_prefix(
    module: FeatureModel,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    _rename_in_place(state_dict, prefix, prefix + _PREFIX)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        _rename_in_place(metadata, prefix, prefix + _PREFIX, dotless=True, keep=True)
    module._loading_prefixes.append(prefix)  # for _report_backbone_keys, which gets no prefix


def _report_backbone_keys(module: FeatureModel, incompatible: Any) -> None:
    """Name missing and unexpected keys as the backbone's own, in strict-load errors too."""
    prefix = module._loading_prefixes.pop()
    inner = prefix + _PREFIX
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = [prefix + k[len(inner) :] if k.startswith(inner) else k for k in keys]
    unused = module.unused_modules  # a checkpoint of the view lacks them: not missing
    incompatible.missing_keys[:] = [
        k
        for k in incompatible.missing_keys
        if not (k.startswith(prefix) and in_unused(k[len(prefix) :], unused))
    ]
    pruned = [  # a full checkpoint, into a pruned backbone: not loaded, said
        k
        for k in incompatible.unexpected_keys
        if k.startswith(prefix) and in_unused(k[len(prefix) :], unused)
    ]
    if pruned:
        incompatible.unexpected_keys[:] = [
            k for k in incompatible.unexpected_keys if k not in pruned
        ]
        report_pruned_keys(pruned)


def _rename_in_place(
    mapping: dict[str, Any], old: str, new: str, dotless: bool = False, keep: bool = False
) -> None:
    """Replace the prefix ``old`` by ``new`` in the keys of ``mapping``, keeping the order.

    ``dotless``: keys are module paths without the trailing dot (``_metadata``); ``keep``: also
    keep the original entries (the FeatureModel's own metadata when loading).
    """
    items = list(mapping.items())
    mapping.clear()
    for key, value in items:
        dotted = key + "." if dotless and key else key
        if dotted.startswith(old):
            renamed = new + dotted[len(old) :]
            if keep:
                mapping[key] = value
            mapping[renamed[:-1] if dotless and renamed else renamed] = value
        else:
            mapping[key] = value

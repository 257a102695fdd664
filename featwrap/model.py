"""FeatureModel: a backbone whose forward returns a dict of its intermediate features."""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from featwrap import maps
from featwrap._capture import Missing, Recorder, Repeats, StopForward
from featwrap.errors import (
    BackboneError,
    FeatwrapError,
    FeatwrapTypeError,
    FeatwrapValueError,
    HooksRemovedError,
    backbone_error_class,
)
from featwrap.layers import Capture, LayerSpec, resolve_layers

if TYPE_CHECKING:
    from featwrap.info import FeatureInfo

__all__ = ["FeatureModel"]

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
            it out, and the forward then stops as soon as every requested layer has produced its
            value: later modules do not run. A requested layer is final once its parent module
            returns (a block may call its ``relu`` twice); a child of the root is final at once,
            so a root-level module that the forward calls a second time after every requested
            layer fired is not waited for (use ``output_key="..."`` to run the whole forward).
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
        repeats_ = _option(Repeats, repeats, "repeats")
        missing_ = _option(Missing, missing, "missing")
        resolved = resolve_layers(backbone, layers, output_key)

        self.backbone = backbone
        self.training = backbone.training  # mirror the backbone; never touch its submodules' modes
        self.output_key = output_key
        self._paths = OrderedDict((r.key, r.path) for r in resolved)
        stop_early = output_key is None
        # A layer may run again inside its parent (BasicBlock calls its relu twice): when stopping
        # early, a layer is final once its parent returns (children of the root: at once).
        wait = stop_early and repeats_ is not Repeats.FIRST
        parents = [_parent(backbone, r.path) if wait else None for r in resolved]
        self._recorder = Recorder(
            keys=[r.key for r in resolved],
            repeats=repeats_,
            detach=detach,
            missing=missing_,
            stop_early=stop_early,
            wait_for_parent=[p is not None for p in parents],
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
        self._register(parents, rec.on_parent_output, handles)
        self.register_state_dict_post_hook(_strip_prefix)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_add_prefix)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_post_hook(_report_backbone_keys)  # type: ignore[no-untyped-call]
        self._loading_prefixes: list[str] = []
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
        session = recorder.open_traced()
        try:
            output = self.backbone(*args, **kwargs)
        finally:
            recorder.traced = None
        if self._maps is not None:
            return self._maps.apply(session.result(output, self.output_key), args, kwargs)
        return session.result(output, self.output_key)

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
        from featwrap.info import feature_info

        return feature_info(self, input_size, inputs=inputs)

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


def _option(enum: Any, value: Any, name: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)
        raise FeatwrapValueError(f"{name}={value!r} is not one of {choices}.") from None


def _parent(backbone: nn.Module, path: str) -> nn.Module | None:
    """The module holding ``path``; None for children of the root (they are the root's business)."""
    parent, _, _ = path.rpartition(".")
    return backbone.get_submodule(parent) if parent else None


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
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    _rename_in_place(state_dict, prefix + _PREFIX, prefix)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        _rename_in_place(metadata, prefix + _PREFIX, prefix, dotless=True)


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

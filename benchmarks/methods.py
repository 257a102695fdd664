"""The methods a case compares: featwrap, the plain backbone and what users would pick instead.

Every method gets its own copy of the backbone's modules, so that one method's hooks never run
(not even as inert calls) inside another's forward; the copies share the parameters and buffers,
so that every method reads the very same weight memory (separate weight copies alone made
identical forwards differ by 2-3% on a shared CPU: cache placement). ``run`` is what is timed:
what a user calls.
``features`` maps its result to ``{key: tensor}`` for the equality check and is not timed.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from benchmarks.previous import Previous
from featwrap.model import FeatureModel

__all__ = [
    "LABELS",
    "OUTPUT",
    "Method",
    "Role",
    "blog_hooks",
    "compiled",
    "cow_hooks",
    "empty_hooks",
    "featwrap",
    "fx",
    "intermediate_layer_getter",
    "keep_hooks",
    "lego",
    "plain",
    "plain_copy",
    "previous_featwrap",
    "timm_features_only",
    "timm_forward_intermediates",
    "truncated_stack",
]

Role = Literal["baseline", "featwrap", "previous", "peer", "floor", "control"]
Features = Callable[[Any], dict[str, Any]]
View = Callable[[str, torch.Tensor], torch.Tensor]

#: The reference's key for the model's own output when a case leaves it out (``output_key=None``):
#: methods that run the whole model (plain, empty hooks) are still checked on it.
OUTPUT = "<output>"

#: How each method is named in tables and plots.
LABELS = {
    "plain": "plain backbone",
    "plain-copy": "plain backbone, a 2nd copy (the noise: ideally 1.00)",
    "featwrap": "featwrap",
    "fx": "torchvision create_feature_extractor (FX)",
    "ilg": "torchvision IntermediateLayerGetter",
    "lego": "Lego truncation nn.Sequential(children[:k])",
    "blog": "blog recipe: hooks fill a global dict (.detach())",
    "empty-hooks": "empty forward hooks (PyTorch's floor)",
    "keep-hooks": "minimal hooks: found[key] = output (the floor for returning features)",
    "cow-hooks": "minimal exact hooks: copy-on-write snapshot + version check",
    "timm-features_only": "timm features_only",
    "timm-forward_intermediates": "timm forward_intermediates",
    "timm-forward_intermediates-stop_early": "timm forward_intermediates(stop_early=True)",
    "truncated-stack": "the model's own loop, stopped after the block (hand-written)",
}


@dataclass
class Method:
    """One way of getting the features of a case."""

    name: str
    role: Role
    run: Callable[[torch.Tensor], Any] | None
    features: Features
    keys: tuple[str, ...] = ()  # the keys ``features`` must return
    view: View | None = None
    error: str = ""  # why it could not be built (then ``run`` is None)
    note: str = ""
    title: str = ""  # the label, when not the one in LABELS
    #: the same method with a previous release's featwrap (``featwrap`` methods only)
    previous: Callable[[Previous], Method] | None = None

    @property
    def label(self) -> str:
        if self.title:
            return self.title
        base = self.name.removeprefix("compiled ")
        label = LABELS.get(base, base)
        return f"compiled {label}" if self.name.startswith("compiled ") else label


def _own(model: nn.Module) -> nn.Module:
    """A deep copy of the modules that shares the parameters and buffers of ``model``."""
    shared: dict[int, Any] = {id(t): t for t in model.parameters()}
    shared.update((id(t), t) for t in model.buffers())
    return copy.deepcopy(model, memo=shared)


def _identity(out: Any) -> dict[str, Any]:
    return dict(out)


def _guard(name: str, role: Role, build: Callable[[], Method]) -> Method:
    """Build a method; a peer that cannot handle the model is recorded, not fatal."""
    try:
        return build()
    except Exception as error:
        message = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        return Method(name, role, None, _identity, error=message)


def plain(model: nn.Module, output_key: str | None) -> Method:
    """The backbone alone, no hooks: the limit (zero overhead)."""
    key = output_key or OUTPUT
    return Method("plain", "baseline", _own(model), lambda out: {key: out}, (key,))


def plain_copy(model: nn.Module, output_key: str | None) -> Method:
    """Another copy of the plain backbone: a control whose ratio to ``plain`` shows the noise."""
    key = output_key or OUTPUT
    return Method("plain-copy", "control", _own(model), lambda out: {key: out}, (key,))


def featwrap(model: nn.Module, layers: Mapping[str, str], output_key: str | None) -> Method:
    """``FeatureModel(backbone, {path: key}, output_key=...)``."""
    fm = FeatureModel(_own(model), dict(layers), output_key=output_key)
    return Method(
        "featwrap",
        "featwrap",
        fm,
        _identity,
        _keys(layers, output_key),
        previous=functools.partial(
            previous_featwrap, model=model, layers=layers, output_key=output_key
        ),
    )


def previous_featwrap(
    previous: Previous, model: nn.Module, layers: Mapping[str, str], output_key: str | None
) -> Method:
    """The same ``FeatureModel`` call with a previous release's package (``--against REV``)."""

    def build() -> Method:
        feature_model = previous.package.FeatureModel
        fm = feature_model(_own(model), dict(layers), output_key=output_key)
        keys = _keys(layers, output_key)
        return Method(previous.name, "previous", fm, _identity, keys, title=previous.label)

    method = _guard(previous.name, "previous", build)
    method.title = previous.label
    return method


def _keys(layers: Mapping[str, str], output_key: str | None) -> tuple[str, ...]:
    return ((output_key,) if output_key is not None else ()) + tuple(layers.values())


def fx(
    model: nn.Module, layers: Mapping[str, str], output_key: str | None, output_node: str
) -> Method:
    """torchvision's ``create_feature_extractor`` (an FX-traced copy returning the nodes)."""

    def build() -> Method:
        from torchvision.models.feature_extraction import create_feature_extractor

        nodes = dict(layers)
        alias = None
        if output_key is not None:
            if output_node in nodes:  # one node cannot have two names: copy it afterwards
                alias = nodes[output_node]
            else:
                nodes[output_node] = output_key
        extractor = create_feature_extractor(_own(model), return_nodes=nodes)

        def features(out: Any) -> dict[str, Any]:
            found = dict(out)
            if alias is not None and output_key is not None:
                found[output_key] = found[alias]
            return found

        return Method("fx", "peer", extractor, features, _keys(layers, output_key))

    return _guard("fx", "peer", build)


def intermediate_layer_getter(model: nn.Module, layers: Mapping[str, str]) -> Method | None:
    """torchvision's ``IntermediateLayerGetter``: only for children of the root, without logits."""
    children = [name for name, _ in model.named_children()]
    if not all(path in children for path in layers):
        return None

    def build() -> Method:
        from torchvision.models._utils import IntermediateLayerGetter

        getter = IntermediateLayerGetter(_own(model), return_layers=dict(layers))
        return Method("ilg", "peer", getter, _identity, _keys(layers, None))

    return _guard("ilg", "peer", build)


def lego(model: nn.Module, layers: Mapping[str, str]) -> Method | None:
    """``nn.Sequential(*list(model.children())[:k])``: one early child, nothing after it runs.

    Valid only when the model's forward is the sequence of its children up to that child; the
    equality check verifies it.
    """
    if len(layers) != 1:
        return None
    ((path, key),) = layers.items()
    children = [name for name, _ in model.named_children()]
    if path not in children:
        return None
    k = children.index(path) + 1
    truncated = nn.Sequential(*list(_own(model).children())[:k])

    def features(out: Any) -> dict[str, Any]:
        return {key: out}

    return Method("lego", "peer", truncated, features, (key,), note=f"children[:{k}]")


def blog_hooks(model: nn.Module, layers: Mapping[str, str], output_key: str | None) -> Method:
    """The recipe people write by hand: hooks storing ``output.detach()`` into a global dict."""
    own = _own(model)
    activation: dict[str, torch.Tensor] = {}  # the blog's global `activation = {}`

    def get_activation(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            activation[name] = output.detach()

        return hook

    for path, key in layers.items():
        own.get_submodule(path).register_forward_hook(get_activation(key))

    def features(out: Any) -> dict[str, Any]:
        found: dict[str, Any] = {output_key: out} if output_key is not None else {}
        found.update((key, activation[key]) for key in layers.values())
        return found

    return Method("blog", "peer", own, features, _keys(layers, output_key))


def empty_hooks(model: nn.Module, layers: Mapping[str, str], output_key: str | None) -> Method:
    """Forward hooks that do nothing, on the same modules: what PyTorch charges for any hook."""
    own = _own(model)
    for path in layers:
        own.get_submodule(path).register_forward_hook(_empty_hook)
    key = output_key or OUTPUT
    return Method("empty-hooks", "floor", own, lambda out: {key: out}, (key,))


def _empty_hook(module: nn.Module, args: Any, output: Any) -> None:
    return None


def keep_hooks(model: nn.Module, layers: Mapping[str, str], output_key: str | None) -> Method:
    """The least a hook can do to return features: ``found[key] = output`` (no copy, no detach,
    no check), the dict handed over and cleared after each forward. Not in-place safe."""
    own = _own(model)
    found: dict[str, Any] = {}
    for path, key in layers.items():
        own.get_submodule(path).register_forward_hook(functools.partial(_keep, found, key))

    def run(x: torch.Tensor) -> dict[str, Any]:
        out = own(x)
        result = {output_key: out} if output_key is not None else {}
        result.update(found)
        found.clear()
        return result

    return Method("keep-hooks", "floor", run, _identity, _keys(layers, output_key))


def _keep(found: dict[str, Any], key: str, module: nn.Module, args: Any, output: Any) -> None:
    found[key] = output


def cow_hooks(model: nn.Module, layers: Mapping[str, str], output_key: str | None) -> Method:
    """The least a hook can do to return *exact* features whatever in-place op follows: keep the
    output, a copy-on-write snapshot (``torch._lazy_clone``: no data copied) and its version
    counter; after the forward, the output if nothing wrote to it, else the snapshot. No session,
    no options, no checks: featwrap's capture without featwrap."""
    own = _own(model)
    found: dict[str, tuple[torch.Tensor, torch.Tensor, int | None]] = {}
    for path, key in layers.items():
        own.get_submodule(path).register_forward_hook(functools.partial(_snapshot, found, key))

    def run(x: torch.Tensor) -> dict[str, Any]:
        out = own(x)
        result = {output_key: out} if output_key is not None else {}
        for key, (tensor, snapshot, version) in found.items():
            result[key] = tensor if version is not None and tensor._version == version else snapshot
        found.clear()
        return result

    return Method("cow-hooks", "floor", run, _identity, _keys(layers, output_key))


def _snapshot(
    found: dict[str, tuple[torch.Tensor, torch.Tensor, int | None]],
    key: str,
    module: nn.Module,
    args: Any,
    output: torch.Tensor,
) -> None:
    version = None if output.is_inference() else output._version  # inference: no versions
    found[key] = (output, torch._lazy_clone(output), version)


def timm_features_only(
    name: str,
    model: nn.Module,
    layers: Mapping[str, str],
    out_indices: tuple[int, ...],
    **kwargs: Any,
) -> Method:
    """``timm.create_model(name, features_only=True, out_indices=...)`` with the model's weights."""

    def build() -> Method:
        import timm

        net = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=out_indices, **kwargs
        )
        net.to(next(model.parameters()).device)
        net.load_state_dict(model.state_dict(), strict=False, assign=True)  # shares the weights
        net.eval()
        keys = list(layers.values())

        def features(out: Any) -> dict[str, Any]:
            return dict(zip(keys, out, strict=True))

        return Method("timm-features_only", "peer", net, features, tuple(keys))

    return _guard("timm-features_only", "peer", build)


def timm_forward_intermediates(
    model: nn.Module,
    layers: Mapping[str, str],
    output_key: str | None,
    indices: int | list[int],
    view: View | None = None,
    stop_early: bool = False,
) -> Method:
    """``model.forward_intermediates(x, indices=...)`` (then ``forward_head`` for the logits);
    ``stop_early``: ``stop_early=True, intermediates_only=True`` (needs ``output_key=None``)."""
    name = "timm-forward_intermediates" + ("-stop_early" if stop_early else "")

    def build() -> Method:
        own: Any = _own(model)
        if not hasattr(own, "forward_intermediates"):
            raise TypeError(f"{type(own).__name__} has no forward_intermediates")
        keys = list(layers.values())
        if output_key is None:

            def run(x: torch.Tensor) -> Any:
                return None, own.forward_intermediates(
                    x, indices=indices, intermediates_only=True, stop_early=stop_early
                )

        else:

            def run(x: torch.Tensor) -> Any:
                final, intermediates = own.forward_intermediates(x, indices=indices)
                return own.forward_head(final), intermediates

        def features(out: Any) -> dict[str, Any]:
            logits, intermediates = out
            found = {output_key: logits} if output_key is not None else {}
            found.update(zip(keys, intermediates, strict=True))
            return found

        return Method(name, "peer", run, features, _keys(layers, output_key), view)

    return _guard(name, "peer", build)


def truncated_stack(model: nn.Module, index: int, key: str) -> Method:
    """The model's own ``forward_until(x, index)``: the hidden states after block ``index``, with
    no later block run (what a user writes by hand to stop a stack early)."""
    own: Any = _own(model)

    def run(x: torch.Tensor) -> Any:
        return own.forward_until(x, index)

    return Method("truncated-stack", "peer", run, lambda out: {key: out}, (key,))


def compiled(method: Method) -> Method:
    """The same method under ``torch.compile(fullgraph=True)`` (compiled at its first call)."""
    if method.run is None:
        return method
    run = torch.compile(method.run, fullgraph=True)
    role: Role = method.role
    return Method(f"compiled {method.name}", role, run, method.features, method.keys, method.view)

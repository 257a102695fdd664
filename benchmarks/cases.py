"""The benchmark cases: which model, which layers, which methods, which goal each one measures."""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from benchmarks import methods as m
from benchmarks.checks import reference_features
from featwrap._text import did_you_mean
from featwrap.errors import FeatwrapValueError

__all__ = [
    "CASES",
    "MLP_BLOCKS",
    "Case",
    "Mode",
    "Settings",
    "Setup",
    "deep_mlp",
    "select_cases",
]

Mode = Literal["no_grad", "grad", "inference"]

#: resnet18's layers in the 3-layer cases: the seed blog's choice (maxpool, a nested BatchNorm, avgpool)
RESNET18_LAYERS = {
    "maxpool": "maxpool",
    "layer3.0.downsample.1": "downsample",
    "avgpool": "avgpool",
}
#: 16 resnet18 layers whose outputs no later in-place op modifies (each conv feeds a BatchNorm)
RESNET18_16 = {
    f"layer{i}.{j}.conv{k}": f"l{i}.{j}.conv{k}"
    for i in (1, 2, 3, 4)
    for j in (0, 1)
    for k in (1, 2)
}
#: blocks of the deep small MLP of the hooks sweep (each a Linear and a ReLU: 2 modules)
MLP_BLOCKS = 128
MLP_WIDTH = 16
HOOK_COUNTS = (1, 4, 16, 64, 2 * MLP_BLOCKS)


@dataclass(frozen=True)
class Settings:
    """How to run: device, threads, how long to time."""

    device: str = "cpu"
    threads: int = 1
    rounds: int = 60
    budget_s: float = 8.0
    min_sample_s: float = 0.002
    warmup: int = 3
    seed: int = 0
    #: a previous commit whose featwrap is timed beside today's (``--against REV``)
    against: str | None = None


@dataclass
class Setup:
    """A built case: the input, the reference features and the methods, baseline first."""

    x: torch.Tensor
    reference: dict[str, torch.Tensor]
    methods: list[m.Method]
    baseline: str = "plain"


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    ``known_wrong`` names peers known to return wrong values here, with the reason (the check
    still runs and must find them wrong); ``hooked`` is the number of hooked modules (hooks
    sweep); ``memory`` measures peak and retained memory; ``timed=False`` skips timing.
    """

    id: str
    title: str
    group: str
    build: Callable[[Settings], Setup]
    quick: bool = False
    compile: bool = False
    memory: bool = False
    timed: bool = True
    mode: Mode = "no_grad"
    hooked: int = 0
    known_wrong: Mapping[str, str] = field(default_factory=dict)


def _input(settings: Settings, batch: int, px: int, channels: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(settings.seed)
    return torch.randn(batch, channels, px, px, generator=gen).to(settings.device)


def _seeded(build: Callable[[], nn.Module], device: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build()
    return model.eval().to(device)


def _resnet18(device: str) -> nn.Module:
    from torchvision.models import resnet18

    return _seeded(lambda: resnet18(weights=None), device)


def _reference(
    model: nn.Module, layers: Mapping[str, str], output_key: str | None, x: torch.Tensor, mode: Mode
) -> dict[str, torch.Tensor]:
    with mode_context(mode):
        return reference_features(model, layers, output_key or m.OUTPUT, x)


def mode_context(mode: Mode) -> contextlib.AbstractContextManager[Any]:
    """The autograd context a case runs in."""
    if mode == "grad":
        return torch.enable_grad()
    if mode == "inference":
        return torch.inference_mode()
    return torch.no_grad()


def _standard(
    model: nn.Module,
    layers: Mapping[str, str],
    output_key: str | None,
    output_node: str,
    x: torch.Tensor,
    mode: Mode,
    extra: tuple[str, ...] = (),
) -> Setup:
    """plain, featwrap, FX, the blog recipe (and optionally empty hooks, ILG, Lego)."""
    methods = [
        m.plain(model, output_key),
        m.plain_copy(model, output_key),
        m.featwrap(model, layers, output_key),
        m.fx(model, layers, output_key, output_node),
        m.blog_hooks(model, layers, output_key),
    ]
    if "empty-hooks" in extra:
        methods.append(m.empty_hooks(model, layers, output_key))
    if "keep-hooks" in extra:
        methods.append(m.keep_hooks(model, layers, output_key))
    if "cow-hooks" in extra:
        methods.append(m.cow_hooks(model, layers, output_key))
    if "ilg" in extra:
        methods += [p for p in [m.intermediate_layer_getter(model, layers)] if p is not None]
    baseline = "plain"
    if "lego" in extra:
        truncated = m.lego(model, layers)
        if truncated is not None:
            methods.insert(0, truncated)
            baseline = "lego"
    return Setup(x, _reference(model, layers, output_key, x, mode), methods, baseline)


# -- resnet18 ---------------------------------------------------------------------------------------
def _resnet18_case(px: int, batch: int, mode: Mode = "no_grad") -> Callable[[Settings], Setup]:
    def build(s: Settings) -> Setup:
        return _standard(
            _resnet18(s.device),
            RESNET18_LAYERS,
            "logits",
            "fc",
            _input(s, batch, px),
            mode,
            ("empty-hooks", "keep-hooks", "cow-hooks"),
        )

    return build


def _resnet18_16(s: Settings) -> Setup:
    return _standard(
        _resnet18(s.device),
        RESNET18_16,
        "logits",
        "fc",
        _input(s, 1, 64),
        "no_grad",
        ("empty-hooks", "keep-hooks", "cow-hooks"),
    )


def _resnet18_inplace(s: Settings) -> Setup:
    layers = {"bn1": "bn1", "layer1": "layer1"}
    return _standard(
        _resnet18(s.device), layers, "logits", "fc", _input(s, 1, 64), "no_grad", ("cow-hooks",)
    )


def _early(px: int, batch: int, layer: str) -> Callable[[Settings], Setup]:
    def build(s: Settings) -> Setup:
        return _standard(
            _resnet18(s.device),
            {layer: layer},
            None,
            "fc",
            _input(s, batch, px),
            "no_grad",
            ("ilg", "lego"),
        )

    return build


# -- the hooks sweep on a deep small MLP ------------------------------------------------------------
def deep_mlp(blocks: int = MLP_BLOCKS, width: int = MLP_WIDTH) -> nn.Sequential:
    """``blocks`` x (Linear(width, width), ReLU): tiny layers, so that hooks dominate the time."""
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def mlp_layers(n: int, blocks: int = MLP_BLOCKS) -> dict[str, str]:
    """``n`` module paths of :func:`deep_mlp`, spread evenly (every module when n = 2 * blocks)."""
    total = 2 * blocks
    if n >= total:
        return {str(i): f"m{i}" for i in range(total)}
    step = blocks // n
    return {str(2 * (i * step)): f"m{2 * i * step}" for i in range(n)}


def _hooks(n: int) -> Callable[[Settings], Setup]:
    def build(s: Settings) -> Setup:
        model = _seeded(deep_mlp, s.device)
        gen = torch.Generator().manual_seed(s.seed)
        x = torch.randn(1, MLP_WIDTH, generator=gen).to(s.device)
        last = str(2 * MLP_BLOCKS - 1)
        extra = ("empty-hooks", "keep-hooks", "cow-hooks")
        return _standard(model, mlp_layers(n), "logits", last, x, "no_grad", extra)

    return build


# -- timm -------------------------------------------------------------------------------------------
def _timm(name: str, **kwargs: Any) -> Callable[[str], nn.Module]:
    def make(device: str) -> nn.Module:
        import timm

        return _seeded(lambda: timm.create_model(name, pretrained=False, **kwargs), device)

    return make


def _timm_resnet50(px: int, stages_only: bool) -> Callable[[Settings], Setup]:
    stages = {f"layer{i}": f"stage{i}" for i in (1, 2, 3, 4)}

    def build(s: Settings) -> Setup:
        model = _timm("resnet50")(s.device)
        x = _input(s, 1, px)
        if stages_only:
            setup = _standard(model, stages, None, "fc", x, "no_grad", ("ilg",))
            setup.methods.append(m.timm_features_only("resnet50", model, stages, (1, 2, 3, 4)))
        else:
            setup = _standard(model, stages, "logits", "fc", x, "no_grad")
        setup.methods.append(
            m.timm_forward_intermediates(model, stages, None if stages_only else "logits", 4)
        )
        return setup

    return build


def _timm_vit(px: int) -> Callable[[Settings], Setup]:
    def build(s: Settings) -> Setup:
        model = _timm("vit_tiny_patch16_224", img_size=px)(s.device)
        depth = len(model.blocks)  # type: ignore[arg-type]
        blocks = {f"blocks.{i}": f"block{i}" for i in range(depth - 4, depth)}
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        side = px // 16

        def nchw(key: str, t: torch.Tensor) -> torch.Tensor:
            if t.dim() != 3:
                return t
            b, _, c = t.shape
            return t[:, prefix:].reshape(b, side, side, c).permute(0, 3, 1, 2)

        setup = _standard(model, blocks, "logits", "head", _input(s, 1, px), "no_grad")
        setup.methods.append(
            m.timm_forward_intermediates(model, blocks, "logits", 4, view=_only_blocks(nchw))
        )
        return setup

    return build


def _only_blocks(
    view: Callable[[str, torch.Tensor], torch.Tensor],
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    def apply(key: str, t: torch.Tensor) -> torch.Tensor:
        return view(key, t) if key.startswith("block") else t

    return apply


# -- early stop in block stacks ---------------------------------------------------------------------
#: the block requested in the stack cases (block k of 12 should cost about (k + 1) / 12)
STACK_BLOCK = 2


def _stack_vit(name: str, px: int) -> Callable[[Settings], Setup]:
    """``FeatureModel(vit, ["blocks.2"], output_key=None)`` against timm's own early stop."""

    def build(s: Settings) -> Setup:
        model = _timm(name, img_size=px)(s.device)
        layers = {f"blocks.{STACK_BLOCK}": "block"}
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        side = px // 16

        def nchw(key: str, t: torch.Tensor) -> torch.Tensor:
            b, _, c = t.shape
            return t[:, prefix:].reshape(b, side, side, c).permute(0, 3, 1, 2)

        x = _input(s, 1, px)
        methods = [
            m.plain(model, None),
            m.plain_copy(model, None),
            m.featwrap(model, layers, None),
            m.timm_forward_intermediates(
                model, layers, None, [STACK_BLOCK], view=_only_blocks(nchw), stop_early=True
            ),
        ]
        return Setup(x, _reference(model, layers, None, x, "no_grad"), methods)

    return build


def _stack_gpt(tokens: int) -> Callable[[Settings], Setup]:
    """``FeatureModel(gpt2, ["h.2"], output_key=None)`` (blocks in an nn.ModuleList) against the
    model's own loop stopped by hand."""

    def build(s: Settings) -> Setup:
        from benchmarks.gpt import GPT2Config, GPT2Model

        config = GPT2Config()
        model = _seeded(lambda: GPT2Model(config), s.device)
        gen = torch.Generator().manual_seed(s.seed)
        x = torch.randint(config.vocab_size, (1, tokens), generator=gen).to(s.device)
        layers = {f"h.{STACK_BLOCK}": "block"}
        methods = [
            m.plain(model, None),
            m.plain_copy(model, None),
            m.featwrap(model, layers, None),
            m.truncated_stack(model, STACK_BLOCK, "block"),
        ]
        return Setup(x, _reference(model, layers, None, x, "no_grad"), methods)

    return build


# -- torch.compile ----------------------------------------------------------------------------------
def _compiled(s: Settings) -> Setup:
    torch._dynamo.reset()
    setup = _resnet18_case(64, 1)(s)
    keep = [x for x in setup.methods if x.name in ("plain", "plain-copy", "featwrap", "fx")]
    setup.methods = [m.compiled(x) for x in keep]
    setup.baseline = "compiled plain"
    return setup


# -- memory -----------------------------------------------------------------------------------------
def _memory(mode: Mode) -> Callable[[Settings], Setup]:
    return _resnet18_case(64, 8, mode)


_POST_RELU = "returns bn1 after the in-place ReLU that follows it (not what bn1 returned)"


def _all_cases() -> list[Case]:
    cases: list[Case] = []
    for px in (32, 64, 224):
        for batch in (1, 8):
            cases.append(
                Case(
                    f"resnet18-{px}px-b{batch}",
                    f"resnet18, {px} px, batch {batch}: 3 layers + logits",
                    "resnet18",
                    _resnet18_case(px, batch),
                    quick=(px, batch) in ((32, 1), (64, 1)),
                )
            )
    cases += [
        Case(
            "resnet18-64px-b1-grad",
            "resnet18, 64 px, batch 1: 3 layers + logits, grad enabled",
            "resnet18",
            _resnet18_case(64, 1, "grad"),
            mode="grad",
        ),
        Case(
            "resnet18-64px-b1-inference",
            "resnet18, 64 px, batch 1: 3 layers + logits, torch.inference_mode",
            "resnet18",
            _resnet18_case(64, 1, "inference"),
            mode="inference",
        ),
        Case(
            "resnet18-16layers-64px-b1",
            "resnet18, 64 px, batch 1: 16 layers (every conv of layer1-4) + logits",
            "resnet18",
            _resnet18_16,
            quick=True,
            hooked=16,
        ),
        Case(
            "resnet18-inplace-64px-b1",
            "resnet18, 64 px, batch 1: bn1 (modified in place later) + layer1 + logits",
            "inplace",
            _resnet18_inplace,
            quick=True,
            known_wrong={"fx": _POST_RELU, "blog": _POST_RELU},
        ),
    ]
    for px, batch, quick in ((64, 1, True), (224, 1, False), (224, 8, False)):
        cases.append(
            Case(
                f"early-layer1-{px}px-b{batch}",
                f"resnet18, {px} px, batch {batch}: layer1 only (output_key=None)",
                "early",
                _early(px, batch, "layer1"),
                quick=quick,
            )
        )
    for n in HOOK_COUNTS:
        label = "all" if n == 2 * MLP_BLOCKS else str(n)
        cases.append(
            Case(
                f"hooks-mlp-{label}",
                f"MLP of {2 * MLP_BLOCKS} tiny modules, batch 1: {n} hooked + logits",
                "hooks",
                _hooks(n),
                quick=True,
                hooked=n,
            )
        )
    for px, quick in ((64, True), (224, False)):
        cases += [
            Case(
                f"timm-resnet50-{px}px",
                f"timm resnet50, {px} px, batch 1: 4 stages + logits",
                "timm",
                _timm_resnet50(px, stages_only=False),
                quick=quick,
            ),
            Case(
                f"timm-resnet50-stages-{px}px",
                f"timm resnet50, {px} px, batch 1: 4 stages only (output_key=None)",
                "timm",
                _timm_resnet50(px, stages_only=True),
                quick=quick,
            ),
            Case(
                f"timm-vit-{px}px",
                f"timm vit_tiny_patch16 ({px} px), batch 1: last 4 blocks + logits",
                "timm",
                _timm_vit(px),
                quick=quick,
            ),
        ]
    cases += [
        Case(
            "stack-vit-small-224px",
            f"timm vit_small_patch16_224, 224 px, batch 1: blocks.{STACK_BLOCK} of 12 only "
            "(output_key=None)",
            "stack",
            _stack_vit("vit_small_patch16_224", 224),
        ),
        Case(
            "stack-gpt2-64tok",
            f"GPT-2 small from its config (h: nn.ModuleList), 64 tokens, batch 1: h.{STACK_BLOCK} "
            "of 12 only (output_key=None)",
            "stack",
            _stack_gpt(64),
        ),
    ]
    cases += [
        Case(
            "compile-resnet18-64px-b1",
            "torch.compile(fullgraph=True): resnet18, 64 px, batch 1, 3 layers + logits",
            "compile",
            _compiled,
            compile=True,
        ),
        Case(
            "memory-resnet18-64px-b8",
            "memory per forward: resnet18, 64 px, batch 8, 3 layers + logits, no_grad",
            "memory",
            _memory("no_grad"),
            quick=True,
            memory=True,
            timed=False,
        ),
        Case(
            "memory-resnet18-64px-b8-grad",
            "memory per forward: resnet18, 64 px, batch 8, 3 layers + logits, grad enabled",
            "memory",
            _memory("grad"),
            quick=True,
            memory=True,
            timed=False,
            mode="grad",
        ),
    ]
    return cases


CASES: list[Case] = _all_cases()


def select_cases(
    patterns: list[str] | None = None, *, quick: bool = False, compile: bool = False
) -> list[Case]:
    """The cases to run, in their order.

    Args:
        patterns: fnmatch globs over case ids (``"resnet18-*"``); None: the default set.
        quick: without patterns, only the quick subset.
        compile: also the ``torch.compile`` cases (slow on CPU: ~30 s each to compile).

    Raises:
        FeatwrapValueError: a pattern that matches no case, with the close matches.
    """
    if not patterns:
        return [c for c in CASES if (c.quick or not quick) and (not c.compile or compile)]
    ids = [c.id for c in CASES]
    chosen: set[str] = set()
    for pattern in patterns:
        found = [i for i in ids if fnmatch.fnmatchcase(i, pattern)]
        if not found:
            hint = did_you_mean(pattern, ids, cutoff=0.5)
            raise FeatwrapValueError(
                f"No benchmark case matches {pattern!r}.{hint} `python -m benchmarks --list` lists the "
                "case ids; globs such as 'resnet18-*' work."
            )
        chosen.update(found)
    return [c for c in CASES if c.id in chosen]

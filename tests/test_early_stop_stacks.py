"""Early stop inside block stacks (nn.ModuleList, nn.Sequential), and where it must not stop.

Every value is compared with hand-written cloning hooks on the full forward (tests/reference.py);
which modules ran is counted with plain forward hooks (a call counts once it has returned).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import timm
import torch
from torch import nn

from featwrap import FeatureModel, RepeatedCallError
from tests.models import (
    Block,
    EncoderModel,
    Loop,
    ReuseReLU,
    SequentialCalledOutside,
    SharedLayers,
    Stack,
    Wrapped,
)
from tests.reference import assert_same, reference


@contextmanager
def finished_calls(model: nn.Module, paths: list[str]) -> Iterator[dict[str, int]]:
    """Count the calls of each path that returned (a stop inside a module leaves it uncounted)."""
    counts = dict.fromkeys(paths, 0)

    def hook(path: str) -> object:
        return lambda *_: counts.__setitem__(path, counts[path] + 1)

    handles = [model.get_submodule(p).register_forward_hook(hook(p)) for p in paths]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def run(model: nn.Module, layers: list[str], x: torch.Tensor, **options: object) -> dict:  # type: ignore[type-arg]
    return FeatureModel(model, layers, output_key=None, **options)(x)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["list", "sequential"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_block_k_of_a_stack_stops_after_block_k(kind: str, k: int) -> None:
    model = Stack(depth=4, kind=kind)
    x = torch.randn(2, 4)
    layer = f"blocks.{k}"
    _, calls = reference(model, [layer], x)
    blocks = [f"blocks.{j}" for j in range(4)]
    with finished_calls(model, [*blocks, "norm", "head"]) as ran:
        out = run(model, [layer], x)
    assert_same(out[layer], calls[layer][0])
    assert ran == {**{b: int(j <= k) for j, b in enumerate(blocks)}, "norm": 0, "head": 0}


def test_a_layer_inside_a_block_stops_with_its_block() -> None:
    """``blocks.1.act`` runs twice in its block: the value is the second call's, and it is final
    when the next block is called, so blocks 2 and 3 do not run."""
    model = Stack(depth=4)
    x = torch.randn(2, 4)
    layer = "blocks.1.act"
    _, calls = reference(model, [layer], x)
    with finished_calls(model, ["blocks.1", "blocks.2", "blocks.3"]) as ran:
        last = run(model, [layer], x)[layer]
        every = run(model, [layer], x, repeats="all")[layer]
        first = run(model, [layer], x, repeats="first")[layer]
    assert_same(last, calls[layer][1])
    assert_same(every, calls[layer])
    assert_same(first, calls[layer][0])
    assert ran == {"blocks.1": 2, "blocks.2": 0, "blocks.3": 0}  # 'first' stops inside blocks.1


def test_a_block_called_twice_in_a_row_is_waited_for() -> None:
    model = Stack(depth=3, twice=True)
    x = torch.randn(2, 4)
    _, calls = reference(model, ["blocks.1"], x)
    with finished_calls(model, ["blocks.1", "blocks.2"]) as ran:
        last = run(model, ["blocks.1"], x)["blocks.1"]
        every = run(model, ["blocks.1"], x, repeats="all")["blocks.1"]
    assert_same(last, calls["blocks.1"][1])
    assert_same(every, calls["blocks.1"])
    assert ran == {"blocks.1": 4, "blocks.2": 0}


def test_hf_layout_stops_in_the_nested_stack() -> None:
    model = EncoderModel(depth=3)
    x = torch.randn(2, 4)
    layers = ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    _, calls = reference(model, layers, x)
    with finished_calls(model, ["encoder.layer.2", "pooler"]) as ran:
        out = run(model, ["encoder.layer.1"], x)
        assert ran == {"encoder.layer.2": 0, "pooler": 0}
        # the last element of a stack is final when the module holding the stack returns
        out_last = run(model, ["encoder.layer.2"], x)
        assert ran == {"encoder.layer.2": 1, "pooler": 0}
    assert_same(out["encoder.layer.1"], calls["encoder.layer.1"][0])
    assert_same(out_last["encoder.layer.2"], calls["encoder.layer.2"][0])


def test_the_last_block_of_a_root_stack_runs_the_forward_to_its_end() -> None:
    """The root's own code holds the stack: what follows the loop may call the last block again,
    so its value is final when the forward returns."""
    model = Stack(depth=3)
    x = torch.randn(2, 4)
    _, calls = reference(model, ["blocks.2"], x)
    with finished_calls(model, ["head"]) as ran:
        out = run(model, ["blocks.2"], x)
    assert_same(out["blocks.2"], calls["blocks.2"][0])
    assert ran == {"head": 1}


def test_a_block_in_the_stack_twice_is_waited_for() -> None:
    """``ModuleList([b0, b1, b0])``: b0 runs at positions 0 and 2."""
    b0, b1 = Block(), Block()
    model = Stack(blocks=[b0, b1, b0])
    x = torch.randn(2, 4)
    _, calls = reference(model, ["blocks.0", "blocks.1"], x)
    assert len(calls["blocks.0"]) == 2
    assert_same(run(model, ["blocks.0"], x)["blocks.0"], calls["blocks.0"][1])
    assert_same(run(model, ["blocks.0"], x, repeats="all")["blocks.0"], calls["blocks.0"])
    with finished_calls(model, ["blocks.1", "head"]) as ran:
        first = run(model, ["blocks.0"], x, repeats="first")["blocks.0"]
        # blocks.1 is final when the next element (b0 again) is called: the head does not run
        out = run(model, ["blocks.1"], x)
    assert_same(first, calls["blocks.0"][0])
    assert_same(out["blocks.1"], calls["blocks.1"][0])
    assert ran == {"blocks.1": 1, "head": 0}


def test_a_sequential_child_also_called_outside_is_waited_for() -> None:
    model = SequentialCalledOutside()
    x = torch.randn(2, 4)
    _, calls = reference(model, ["body.0", "body.1"], x)
    assert len(calls["body.1"]) == 2
    assert_same(run(model, ["body.1"], x)["body.1"], calls["body.1"][1])
    with finished_calls(model, ["body.1"]) as ran:
        out = run(model, ["body.0"], x)  # registered once: final at once
    assert_same(out["body.0"], calls["body.0"][0])
    assert ran == {"body.1": 0}


def test_a_reused_activation_at_the_root_is_waited_for() -> None:
    """ReuseReLU calls its root-level relu three times: no early stop can tell the last call, so
    with repeats='last' the forward runs to its end; repeats='first' stops at the first call."""
    model = ReuseReLU()
    x = torch.randn(2, 4)
    _, calls = reference(model, ["relu"], x)
    assert len(calls["relu"]) == 3
    with finished_calls(model, ["fc2", "head"]) as ran:
        last = run(model, ["relu"], x)["relu"]
        assert ran == {"fc2": 1, "head": 1}
        first = run(model, ["relu"], x, repeats="first")["relu"]
        assert ran == {"fc2": 1, "head": 1}
    assert_same(last, calls["relu"][2])
    assert_same(first, calls["relu"][0])


def test_maxpool_of_resnet_stops_only_with_repeats_first(resnet18) -> None:
    x = torch.randn(1, 3, 32, 32)
    _, calls = reference(resnet18, ["maxpool"], x)
    with finished_calls(resnet18, ["layer1", "fc"]) as ran:
        last = run(resnet18, ["maxpool"], x)["maxpool"]
        assert ran == {"layer1": 1, "fc": 1}
        first = run(resnet18, ["maxpool"], x, repeats="first")["maxpool"]
        assert ran == {"layer1": 1, "fc": 1}
    assert_same(last, calls["maxpool"][0])
    assert_same(first, calls["maxpool"][0])


def test_a_block_called_again_after_it_was_final_raises() -> None:
    """The root calls ``blocks[0]`` again after its loop, which the module tree does not show;
    when that call comes before the stop, the user gets an error, never the earlier value."""
    model = Stack(depth=3, again=True)
    x = torch.randn(2, 4)
    with pytest.raises(RepeatedCallError, match=r"'blocks\.0' ran again after .* output_key="):
        run(model, ["blocks.0", "head"], x)
    _, calls = reference(model, ["blocks.0"], x)  # other options are right
    out = FeatureModel(model, ["blocks.0"])(x)
    assert_same(out["blocks.0"], calls["blocks.0"][1])
    assert_same(run(model, ["blocks.0"], x, repeats="first")["blocks.0"], calls["blocks.0"][0])


def test_a_sequential_called_in_a_loop_raises() -> None:
    model = Loop()
    x = torch.full((1, 4), 0.5)  # |x|.sum() = 2: three steps
    _, calls = reference(model, ["block.0"], x)
    assert len(calls["block.0"]) == 3
    with pytest.raises(RepeatedCallError, match=r"'block\.0' ran again"):
        run(model, ["block.0", "head"], x)


def test_timm_vit_blocks_stop_and_equal_forward_intermediates() -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, depth=4, num_classes=3
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    _, calls = reference(model, ["blocks.1"], x)
    with finished_calls(model, ["blocks.1", "blocks.2", "norm", "head"]) as ran:
        out = run(model, ["blocks.1"], x)
    assert ran == {"blocks.1": 1, "blocks.2": 0, "norm": 0, "head": 0}
    assert_same(out["blocks.1"], calls["blocks.1"][0])
    timm_out = model.forward_intermediates(
        x, indices=[1], stop_early=True, intermediates_only=True, output_fmt="NLC"
    )[0]
    assert_same(out["blocks.1"][:, model.num_prefix_tokens :], timm_out)


def test_a_stack_inside_a_wrapper_stops() -> None:
    model = Wrapped()
    x = torch.randn(2, 4)
    layer = "model.encoder.layer.0.fc2"
    _, calls = reference(model, [layer], x)
    with finished_calls(model, ["model.encoder.layer.1", "classifier"]) as ran:
        out = run(model, [layer], x)
    assert_same(out[layer], calls[layer][0])
    assert ran == {"model.encoder.layer.1": 0, "classifier": 0}


@pytest.mark.parametrize("groups", [1, 2])
def test_albert_style_shared_blocks_are_waited_for(groups: int) -> None:
    """Each block of the stack runs 3 times in a row: a block, and any module inside it, is
    final when the next block is called (the last one: when the root returns)."""
    model = SharedLayers(groups=groups, repeat=3)
    x = torch.randn(2, 4)
    layers = ["groups.0", "groups.0.fc1", "groups.0.act"]
    _, calls = reference(model, layers, x)
    for layer in layers:
        assert_same(run(model, [layer], x)[layer], calls[layer][-1])
        assert_same(run(model, [layer], x, repeats="all")[layer], calls[layer])
    if groups == 2:
        with finished_calls(model, ["groups.1"]) as ran:
            run(model, ["groups.0.fc1"], x)
        assert ran == {"groups.1": 0}


#: timm transformer (and a few other) families: a block of their first stack of 3 or more
TIMM_STACKS = [
    "vit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "eva02_tiny_patch14_224",
    "cait_xxs24_224",
    "xcit_nano_12_p16_224",
    "swin_tiny_patch4_window7_224",
    "levit_128s",
    "tiny_vit_5m_224",
    "mixer_s32_224",
    "pvt_v2_b0",
    "caformer_s18",
    "convnext_atto",
]


def first_stack(model: nn.Module) -> tuple[str, str]:
    """The paths of blocks 1 and 2 of the model's first stack of 3 blocks or more."""
    for path, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 3:
            names = list(module._modules)
            return f"{path}.{names[1]}", f"{path}.{names[2]}"
    raise AssertionError(f"{type(model).__name__} has no stack of 3 blocks")


@pytest.mark.zoo
@pytest.mark.parametrize("name", TIMM_STACKS)
def test_timm_zoo_block_of_a_stack(name: str) -> None:
    """Block 1 of the model's first stack: equal to cloning hooks on the full forward, and
    block 2 does not run."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"]
    x = torch.randn(1, *size)
    layer, after = first_stack(model)
    with torch.no_grad():
        _, calls = reference(model, [layer], x)
        with finished_calls(model, [after]) as ran:
            out = run(model, [layer], x)
    assert_same(out[layer], calls[layer][-1])
    assert ran == {after: 0}

"""Training view of an early-stopping FeatureModel: no dead parameters, checkpoints, names.

References, each computed without featwrap: torchvision's ``IntermediateLayerGetter`` (which
drops the unused children), timm's ``prune_intermediate_layers``, the gradients autograd gives on
a real forward, and the plain backbone's own ``state_dict``.
"""

from __future__ import annotations

import copy
import gc
import warnings
import weakref

import pytest
import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import resnet18
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from featwrap import (
    FeatureModel,
    FeatwrapError,
    PrunedModuleError,
    UnusedModulesWarning,
    parameters_by_key,
)
from featwrap.training import Pruned
from tests.models import Checkpointed

RETURN = {"layer1": "0", "layer2": "1", "layer3": "2"}
FPN_RETURN = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}  # as torchvision's


def ids(params: object) -> set[int]:
    return {id(p) for p in params}  # type: ignore[attr-defined]


def tiny_vit(**kwargs: object) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=4,
        num_heads=2,
        **kwargs,
    )


def grads_of_features(fm: FeatureModel, x: torch.Tensor) -> set[int]:
    """Ids of the backbone's parameters that get a gradient from the features (real forward)."""
    fm.backbone.zero_grad(set_to_none=True)
    sum(v.float().sum() for v in fm(x).values()).backward()
    return {id(p) for p in fm.backbone.parameters() if p.grad is not None}


# -- which modules: against torchvision and timm ------------------------------------------------
def test_resnet_view_is_torchvisions_intermediate_layer_getter() -> None:
    backbone = resnet18()
    fm = FeatureModel(backbone, RETURN, output_key=None)
    getter = IntermediateLayerGetter(backbone, RETURN)  # shares the modules, drops the rest
    assert fm.unused_modules == ("layer4", "fc")
    assert ids(fm.parameters()) == ids(getter.parameters())
    assert ids(fm.buffers()) == ids(getter.buffers())
    assert list(fm.state_dict()) == list(getter.state_dict())
    assert ids(fm.parameters()) == grads_of_features(fm, torch.randn(2, 3, 32, 32))


def test_the_backbone_is_not_changed() -> None:
    backbone = resnet18()
    before = [(n, id(m)) for n, m in backbone.named_modules()]
    keys = list(backbone.state_dict())
    fm = FeatureModel(backbone, RETURN, output_key=None)
    assert fm.unused_modules
    assert fm.backbone is backbone
    assert [(n, id(m)) for n, m in backbone.named_modules()] == before
    assert list(backbone.state_dict()) == keys
    assert len(list(backbone.parameters())) > len(list(fm.parameters()))
    out = backbone(torch.randn(2, 3, 32, 32))  # the classifier still classifies
    assert out.shape == (2, 1000)


@pytest.mark.parametrize("index", [0, 2])
def test_vit_view_is_timms_pruned_model(index: int) -> None:
    """Blocks after the requested one run (nn.Sequential returns only after its last child), yet
    they feed no feature: left out, as timm's ``prune_intermediate_layers`` removes them."""
    vit = tiny_vit()
    fm = FeatureModel(vit, [f"blocks.{index}"], output_key=None)
    pruned = copy.deepcopy(vit)
    pruned.prune_intermediate_layers([index], prune_norm=True, prune_head=True)
    expected = [n for n, _ in pruned.named_parameters()]
    assert [n for n, _ in fm.named_parameters()] == ["backbone." + n for n in expected]
    assert ids(fm.parameters()) == grads_of_features(fm, torch.randn(2, 3, 32, 32))


def test_only_modules_with_an_output_key_or_detach_keep_everything() -> None:
    backbone = resnet18()
    full = ids(backbone.parameters())
    assert ids(FeatureModel(backbone, RETURN).parameters()) == full
    assert FeatureModel(backbone, RETURN).unused_modules == ()
    detached = FeatureModel(backbone, RETURN, output_key=None, detach=True)
    assert detached.unused_modules == ()
    assert ids(detached.parameters()) == full


class TiedHead(nn.Module):
    """The head's weight is the embedding's: used before the stop, through another module."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight
        self.scale = nn.Linear(1, 1)  # never used

    def forward(self, ids_: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.embedding(ids_, self.head.weight)
        return self.head(self.mix(x))


def test_a_weight_used_before_the_stop_keeps_its_module() -> None:
    fm = FeatureModel(TiedHead(), ["mix"], output_key=None)
    assert fm.find_unused(inputs=torch.tensor([[1, 2, 3]])) == ("scale",)
    assert ids(fm.parameters()) == grads_of_features(fm, torch.tensor([[1, 2, 3]]))


class CheckpointedThenMore(Checkpointed):
    """A checkpointed block, then a module to request, then the head."""

    def __init__(self, use_reentrant: bool) -> None:
        super().__init__(use_reentrant)
        self.mid = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.block, self.stem(x), use_reentrant=self.use_reentrant)
        return self.head(self.mid(h))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_blocks_stay_in_the_view(use_reentrant: bool) -> None:
    """A reentrant checkpoint hides its parameters from the forward's graph: they ran before
    the requested layer, so they stay."""
    fm = FeatureModel(CheckpointedThenMore(use_reentrant), ["mid"], output_key=None)
    x = torch.randn(3, 4)
    assert fm.find_unused(inputs=x) == ("head",)
    assert ids(fm.parameters()) == grads_of_features(fm, x)


# -- models that do not take images --------------------------------------------------------------
def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_a_model_the_default_input_does_not_fit_warns_and_keeps_everything() -> None:
    model = mlp()
    fm = FeatureModel(model, ["1"], output_key=None)
    with pytest.warns(UnusedModulesWarning, match=r"input size \(3, 224, 224\).*DDP then fails"):
        params = ids(fm.parameters())
    assert params == ids(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert ids(fm.parameters()) == params
    assert fm.find_unused(input_size=(4,)) == ("2", "4")  # ReLU '3' holds nothing
    assert ids(fm.parameters()) == ids(model[0].parameters())


def test_find_unused_with_a_wrong_input_raises_with_the_way_out() -> None:
    fm = FeatureModel(mlp(), ["1"], output_key=None)
    with pytest.raises(
        FeatwrapError,
        match=r"input size \(5,\) \(RuntimeError: .*fm\.find_unused\(inputs=example\)",
    ):
        fm.find_unused(input_size=(5,))
    with pytest.raises(ValueError, match="not both"):
        fm.find_unused((4,), inputs=torch.randn(1, 4))


# -- training ------------------------------------------------------------------------------------
def test_every_parameter_of_the_optimizer_gets_a_gradient() -> None:
    backbone = resnet18()
    fm = FeatureModel(backbone, RETURN, output_key=None)
    optimizer = torch.optim.SGD(fm.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    head_before = backbone.fc.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        sum(v.mean() for v in fm(torch.randn(2, 3, 32, 32)).values()).backward()
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        assert all(g is not None for g in grads)
        optimizer.step()
    assert torch.equal(backbone.fc.weight, head_before)


def test_deepcopy_keeps_the_view() -> None:
    fm = FeatureModel(resnet18(), RETURN, output_key=None)
    ema = copy.deepcopy(fm)
    assert ema.unused_modules == fm.unused_modules
    assert len(list(ema.parameters())) == len(list(fm.parameters()))


# -- checkpoints ---------------------------------------------------------------------------------
def test_a_full_backbone_checkpoint_loads_strictly_and_fills_the_backbone() -> None:
    source = resnet18()
    fm = FeatureModel(resnet18(), RETURN, output_key=None)
    assert str(fm.load_state_dict(source.state_dict())) == "<All keys matched successfully>"
    for key, value in source.state_dict().items():  # fc too: nothing in the checkpoint is lost
        assert torch.equal(fm.backbone.state_dict()[key], value), key


def test_a_feature_model_checkpoint_loads_into_the_plain_backbone_naming_the_left_out_keys() -> (
    None
):
    fm = FeatureModel(resnet18(), RETURN, output_key=None)
    state = fm.state_dict()
    plain = resnet18()
    report = plain.load_state_dict(state, strict=False)
    expected = [k for k in plain.state_dict() if k.startswith(("layer4.", "fc."))]
    assert report.missing_keys == expected
    assert report.unexpected_keys == []
    for key, value in state.items():
        assert torch.equal(plain.state_dict()[key], value), key
    # and back: a checkpoint of the view loads strictly into the view
    assert str(fm.load_state_dict(state)) == "<All keys matched successfully>"
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"conv1.weight\""):
        fm.load_state_dict({k: v for k, v in state.items() if k != "conv1.weight"})


def detector(body: nn.Module) -> FasterRCNN:
    torch.manual_seed(0)
    fpn = BackboneWithFPN(resnet18(), FPN_RETURN, [64, 128, 256, 512], 32)
    fpn.body = body
    return FasterRCNN(fpn, num_classes=3, min_size=64, max_size=64).eval()


def test_a_detector_with_a_feature_model_body_matches_torchvisions_checkpoints() -> None:
    torch.manual_seed(1)
    reference = detector(IntermediateLayerGetter(resnet18(), FPN_RETURN))
    ours = detector(FeatureModel(resnet18(), FPN_RETURN, output_key=None))
    assert ours.backbone.body.unused_modules == ("fc",)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert str(ours.load_state_dict(reference.state_dict())) == "<All keys matched successfully>"
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        expected, got = reference(images), ours(images)
    for e, g in zip(expected, got, strict=True):
        for key in e:
            torch.testing.assert_close(g[key], e[key], rtol=0, atol=0)
    reference = detector(IntermediateLayerGetter(resnet18(), FPN_RETURN))
    assert str(reference.load_state_dict(ours.state_dict())) == "<All keys matched successfully>"


# -- names ---------------------------------------------------------------------------------------
def test_parameters_by_key_are_the_state_dict_keys() -> None:
    fm = FeatureModel(resnet18(), RETURN, output_key=None)
    by_key = parameters_by_key(fm)
    state = fm.state_dict(keep_vars=True)
    assert list(by_key) == [k for k in state if isinstance(state[k], nn.Parameter)]
    assert ids(by_key.values()) == ids(fm.parameters())
    outer = nn.ModuleDict({"features": fm, "head": nn.Linear(2, 2)})
    assert list(parameters_by_key(outer)) == [
        *("features." + k for k in by_key),
        "head.weight",
        "head.bias",
    ]


def test_timm_no_weight_decay_groups_by_key() -> None:
    vit = tiny_vit()
    fm = FeatureModel(vit, ["blocks.1"], output_key=None)
    skip = vit.no_weight_decay()  # timm's own names: {"pos_embed", "cls_token", ...}
    by_key = parameters_by_key(fm)
    no_decay = [p for k, p in by_key.items() if k in skip or p.ndim <= 1]
    decay = [p for k, p in by_key.items() if not (k in skip or p.ndim <= 1)]
    assert {"pos_embed", "cls_token"} <= set(by_key)
    assert ids([vit.pos_embed, vit.cls_token]) <= ids(no_decay)
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0}])
    assert ids(p for g in optimizer.param_groups for p in g["params"]) == ids(fm.parameters())


def test_activation_checkpointing_in_timm_gives_the_same_gradients() -> None:
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        vit = tiny_vit()
        vit.set_grad_checkpointing(checkpointing)
        fm = FeatureModel(vit, ["blocks.1", "blocks.2"], output_key=None)
        fm.zero_grad(set_to_none=True)
        sum(v.sum() for v in fm(x).values()).backward()
        grads.append({n: p.grad for n, p in fm.named_parameters()})
        assert all(g is not None for g in grads[-1].values())
    assert list(grads[0]) == list(grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name])


def test_checkpointing_the_whole_feature_model() -> None:
    fm = FeatureModel(resnet18(), RETURN, output_key=None)
    x = torch.randn(2, 3, 32, 32)
    sum(v.sum() for v in fm(x).values()).backward()
    expected = [p.grad.clone() for p in fm.parameters()]  # type: ignore[union-attr]
    fm.zero_grad(set_to_none=True)
    out = checkpoint(fm, x, use_reentrant=False)
    sum(v.sum() for v in out.values()).backward()
    for p, e in zip(fm.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e)


# -- pruning, on request ---------------------------------------------------------------------------
def test_prune_takes_the_unused_modules_out_and_unprune_puts_them_back() -> None:
    backbone = resnet18()
    fm = FeatureModel(backbone, RETURN, output_key=None)
    x = torch.randn(2, 3, 32, 32)
    fc, state, expected = backbone.fc, fm.state_dict(), fm(x)
    removed = fm.prune()
    assert list(removed) == ["layer4", "fc"]
    assert removed["fc"] is fc
    assert isinstance(backbone.fc, Pruned)
    getter = IntermediateLayerGetter(resnet18(), RETURN)
    assert [n for n, _ in backbone.named_parameters()] == [n for n, _ in getter.named_parameters()]
    in_backbone = [f"backbone.{n}" for n, _ in backbone.named_parameters()]
    assert [n for n, _ in fm.named_parameters()] == in_backbone
    assert list(fm.state_dict()) == list(state)
    got = fm(x)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    with pytest.raises(PrunedModuleError, match=r"layer4 \(Sequential\).*fm\.unprune\(removed\)"):
        backbone(x)
    fm.unprune(removed)
    assert backbone.fc is fc
    assert backbone(x).shape == (2, 1000)
    with pytest.raises(ValueError, match=r"'layer4' is not a module that prune\(\) took out"):
        fm.unprune(removed)


def test_pruned_blocks_that_a_sequential_would_still_run_end_the_forward() -> None:
    vit = tiny_vit()
    fm = FeatureModel(vit, ["blocks.1"], output_key=None)
    x = torch.randn(2, 3, 32, 32)
    expected = fm(x)["blocks.1"]
    removed = fm.prune()
    assert list(removed) == ["blocks.2", "blocks.3", "norm", "head"]
    assert torch.equal(fm(x)["blocks.1"], expected)


def test_pruning_frees_the_memory_once_the_removed_modules_are_dropped() -> None:
    fm = FeatureModel(resnet18(), RETURN, output_key=None)
    removed = fm.prune()
    alive = weakref.ref(removed["layer4"])
    del removed
    gc.collect()
    assert alive() is None


def test_a_full_checkpoint_into_a_pruned_model_says_what_was_left_out() -> None:
    source = resnet18()
    fm = FeatureModel(resnet18(), RETURN, output_key=None)
    fm.prune()
    with pytest.warns(
        UnusedModulesWarning, match=r"32 keys .* not loaded: layer4\.0\.conv1\.weight"
    ):
        report = fm.load_state_dict(source.state_dict())
    assert str(report) == "<All keys matched successfully>"
    for key, value in fm.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


ZOO = [
    *(("torchvision", n) for n in ("resnet18", "mobilenet_v3_small", "efficientnet_b0")),
    *(("torchvision", n) for n in ("convnext_tiny", "densenet121", "swin_t", "vit_b_16")),
    *(("timm", n) for n in ("vit_tiny_patch16_224", "convnext_atto", "regnety_002")),
]


@pytest.mark.zoo
@pytest.mark.parametrize(("source", "name"), ZOO)
def test_zoo_view_is_what_gets_a_gradient(source: str, name: str) -> None:
    """All stages but the last, early stop, train mode: the view found on fake tensors is
    exactly the set of parameters a real forward/backward gives a gradient."""
    import torchvision.models as tvm

    from featwrap import stages

    if source == "timm":
        model = timm.create_model(name, pretrained=False)
    else:
        model = getattr(tvm, name)(weights=None)
    found = stages(model)
    fm = FeatureModel(model.train(), found[:-1], output_key=None)
    assert fm.unused_modules
    assert ids(fm.parameters()) == grads_of_features(fm, torch.randn(2, 3, 224, 224))

"""stages() and feature_info over the model zoos.

For every model: feature_info's shapes (a dry run on fake tensors) equal the shapes of a real
forward, and FeatureModel(model, stages(model)) returns what independent hooks saw. Against the
libraries' own extractors, where they define the same tensors: timm's forward_intermediates (on the
same model object) and features_only (a second model loaded with the same weights); torchvision's
create_feature_extractor, except on outputs modified in place later (where FX returns the modified
value, as tests/test_zoo.py shows). A few models always run; the registries run with ``-m zoo``.
"""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from featwrap import FeatureModel, stages
from tests.reference import reference
from tests.zoo import TV_KWARGS, TV_SIZE

TV_QUICK = ["resnet18", "mobilenet_v3_small", "regnet_y_400mf", "swin_t", "shufflenet_v2_x0_5"]
TV_ALL = sorted(tvm.list_models(module=tvm))
# timm: the representative subset always runs (create_model kwargs that keep it small); the
# whole registry runs with -m zoo. Reference: the model's own forward_intermediates(NCHW).
TIMM_QUICK: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "convnext_atto": {},
    "efficientnet_b0": {},
    "vit_tiny_patch16_224": {"img_size": 64, "reg_tokens": 4, "depth": 4},  # class + registers
    "deit_tiny_distilled_patch16_224": {"img_size": 64, "depth": 4},  # class + distillation
    "eva02_tiny_patch14_224": {"img_size": 56, "depth": 4},
    "swin_tiny_patch4_window7_224": {"depths": (1, 1, 1, 1)},  # channels-last stages
    "hiera_tiny_224": {},  # tokens in unrolled order
    "efficientvim_m1": {},  # tuple stages: efficientvim, PiT, TNT
    "pit_ti_224": {},
    "tnt_s_patch16_224": {"depth": 2},
    "selecsls42": {},
    "hrnet_w18_small": {},  # families refused before: HRNet, Twins, MViTv2, TResNet
    "twins_svt_small": {"depths": (1, 1, 1, 1)},  # one block: the position block follows
    "twins_pcpvt_small": {"depths": (2, 1, 1, 1)},
    "mvitv2_tiny": {},
    "tresnet_m": {},
    "levit_128s": {},  # token grids of padded convs
    "coat_lite_tiny": {},  # blocks in a ModuleList
    "coat_tiny": {},  # every scale from one tuple
    "crossvit_tiny_240": {},  # two branches
}
# The registry sweep leaves out models above this size: building several GB of random weights on
# the shared CI machine would take minutes each (the reason is printed in the skip).
TIMM_MAX_PARAMS = 150_000_000


def build_tv(name: str) -> tuple[nn.Module, torch.Tensor]:
    model = tvm.get_model(name, weights=None, **TV_KWARGS.get(name, {})).eval()
    size = TV_SIZE.get(name, 64)
    return model, torch.randn(2, 3, size, size)


def smallest_input(model: nn.Module) -> torch.Tensor:
    """64 px where the model takes it (most CNNs), else its configured size."""
    cfg = model.pretrained_cfg
    own = getattr(getattr(model, "patch_embed", None), "img_size", None)
    size = tuple(own) if isinstance(own, (tuple, list)) else tuple(cfg["input_size"][1:])
    if not cfg.get("fixed_input_size") and own is None:
        small = torch.randn(1, 3, 64, 64)
        try:
            with torch.no_grad():
                model.forward_intermediates(small, output_fmt="NCHW", intermediates_only=True)
            return small
        except Exception:
            pass
    return torch.randn(1, 3, *size)


def check_stages(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """feature_info shapes == real shapes; features == independent hooks; returns the features."""
    paths = stages(model)
    assert paths
    fm = FeatureModel(model, paths, output_key=None)
    info = fm.feature_info(tuple(x.shape[1:]))
    with torch.no_grad():
        out = fm(x)
        _, calls = reference(model, paths, x)
    assert list(out) == paths
    for path in paths:
        assert tuple(out[path].shape[1:]) == info[path].shape, path
        assert torch.equal(out[path], calls[path][-1]), path
    fm.remove_hooks()
    return out


def check_timm(model: nn.Module) -> None:
    """FeatureModel(model, stages(model)) equals forward_intermediates(output_fmt="NCHW"), and
    feature_info reports those shapes and timm's channels."""
    x = smallest_input(model)
    fm = FeatureModel(model, stages(model), output_key=None)
    with torch.no_grad():
        out = fm(x)
        theirs = model.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)
    assert len(out) == len(theirs)
    for (key, ours), want in zip(out.items(), theirs, strict=True):
        assert ours.shape == want.shape, key
        assert torch.equal(ours, want), key
    info = fm.feature_info(tuple(x.shape[1:]))
    assert [info[k].shape for k in out] == [tuple(t.shape[1:]) for t in theirs]
    assert info.channels() == [d["num_chs"] for d in model.feature_info]
    fm.remove_hooks()


def check_torchvision(name: str, fx: bool) -> None:
    model, x = build_tv(name)
    out = check_stages(model, x)
    if not fx:
        return
    extractor = create_feature_extractor(model, {p: p for p in out})
    fm = FeatureModel(model, list(out), output_key=None)
    with torch.no_grad():
        fm(x)
        theirs = extractor(x)
    copied = {fm._recorder.keys[i] for i in fm._recorder.last_modified}
    for path, ours in out.items():
        if path in copied:  # modified in place later: FX returns the modified value
            continue
        assert torch.equal(theirs[path], ours), path


@pytest.mark.parametrize("name", TV_QUICK)
def test_torchvision_quick(name: str) -> None:
    check_torchvision(name, fx=True)


@pytest.mark.parametrize("name", TIMM_QUICK)
def test_timm_quick(name: str) -> None:
    check_timm(timm.create_model(name, pretrained=False, **TIMM_QUICK[name]).eval())


def test_timm_grad_checkpointing() -> None:
    """Checkpointed stages run their blocks one by one, never the stage module itself."""
    model = timm.create_model("resnet18", pretrained=False).eval()
    model.set_grad_checkpointing(True)
    check_timm(model)


def test_timm_features_only_with_the_same_weights() -> None:
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    features = timm.create_model("convnext_atto", pretrained=False, features_only=True).eval()
    state = model.state_dict()
    # features_only flattens top-level Sequentials: "stages_0.x" is the model's "stages.0.x"
    remapped = {
        k: state[k if k in state else k.replace("_", ".", 1)] for k in features.state_dict()
    }
    features.load_state_dict(remapped, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = FeatureModel(model, stages(model), output_key=None)(x)
        theirs = features(x)
    assert len(theirs) == len(ours) == 4
    for got, want in zip(ours.values(), theirs, strict=True):
        assert torch.equal(got, want)


def test_timm_unservable_family_says_why() -> None:
    """A feature_info that names no module of the model: the error names the family and timm's
    own extractor (no timm family of the registry is left in that state; see the sweep)."""
    model = timm.create_model("resnet18", pretrained=False)
    model.feature_info[1]["module"] = "layer_one"
    with pytest.raises(
        ValueError,
        match=r"cannot serve timm's ResNet \(family 'resnet'\): its feature_info names "
        r"'layer_one'.*forward_intermediates\(x, output_fmt='NCHW'",
    ):
        stages(model)


# torchvision families whose stages FX is also compared on (one model each), in the zoo run
TV_FX = {"alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
         "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "resnext50_32x4d",
         "squeezenet1_1", "swin_v2_t", "vgg11_bn", "vit_b_32", "wide_resnet50_2"}  # fmt: skip


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in TV_ALL if n not in TV_QUICK])
def test_torchvision_zoo(name: str) -> None:
    check_torchvision(name, fx=name in TV_FX)


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in timm.list_models() if n not in TIMM_QUICK])
def test_timm_registry(name: str) -> None:
    try:
        with torch.device("meta"):
            size = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    except Exception:  # a model that computes in __init__: build it for real
        size = 0
    if size > TIMM_MAX_PARAMS:
        pytest.skip(f"{name}: {size / 1e6:.0f}M parameters, above TIMM_MAX_PARAMS")
    check_timm(timm.create_model(name, pretrained=False).eval())

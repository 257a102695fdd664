"""stages() and feature_info over the model zoos.

For every model: feature_info's shapes (a dry run on fake tensors) equal the shapes of a real
forward, and FeatureModel(model, stages(model)) returns what independent hooks saw. Against the
libraries' own extractors, where they define the same tensors: timm's forward_intermediates (on the
same model object) and features_only (a second model loaded with the same weights); torchvision's
create_feature_extractor, except on outputs modified in place later (where FX returns the modified
value, as tests/test_zoo.py shows). A few models always run; the registries run with ``-m zoo``.
"""

from __future__ import annotations

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
TIMM_QUICK = ["resnet18", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224"]
TIMM_ALL = [
    # convolutional: run on a 64x64 input
    "resnet18",
    "resnet50d",
    "resnext26ts",
    "cspresnet50",
    "convnext_atto",
    "convnextv2_atto",
    "efficientnet_b0",
    "efficientnetv2_rw_t",
    "tf_efficientnetv2_b0",
    "mobilenetv2_100",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "lcnet_050",
    "ghostnet_100",
    "rexnet_100",
    "regnetx_002",
    "regnety_002",
    "densenet121",
    "dla34",
    "vgg11",
    "hgnetv2_b0",
    "nfnet_l0",
    "repvit_m1",
    "fastvit_t8",
    "efficientvit_b0",
    "edgenext_xx_small",
    "poolformer_s12",
    "caformer_s18",
    "pvt_v2_b0",
    # transformers and hybrids: their configured input size
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "eva02_tiny_patch14_224",
    "xcit_nano_12_p16_224",
    "cait_xxs24_224",
    "swin_tiny_patch4_window7_224",
    "levit_128s",
    "efficientformer_l1",
    "tiny_vit_5m_224",
    "mixer_s32_224",
]
TIMM_NATIVE_SIZE = set(TIMM_ALL[TIMM_ALL.index("vit_tiny_patch16_224") :])
# Families stages() cannot serve, with the reason (asserted below, so the list stays true):
# HRNet's feature_info names modules of timm's separate features wrapper, not of the model.
TIMM_UNSUPPORTED = ["hrnet_w18_small"]


def build_tv(name: str) -> tuple[nn.Module, torch.Tensor]:
    model = tvm.get_model(name, weights=None, **TV_KWARGS.get(name, {})).eval()
    size = TV_SIZE.get(name, 64)
    return model, torch.randn(2, 3, size, size)


def build_timm(name: str) -> tuple[nn.Module, torch.Tensor]:
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"][-1] if name in TIMM_NATIVE_SIZE else 64
    return model, torch.randn(2, 3, size, size)


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


def as_timm_format(feature: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The same tensor in timm's NCHW intermediate format: NHWC maps permuted, tokens without the
    prefix (class, distillation) tokens and laid out on their grid."""
    if feature.shape == like.shape:
        return feature
    if feature.dim() == 4:
        return feature.permute(0, 3, 1, 2)
    b, c, h, w = like.shape
    return feature[:, feature.shape[1] - h * w :].transpose(1, 2).reshape(b, c, h, w)


def check_timm(name: str) -> None:
    model, x = build_timm(name)
    out = check_stages(model, x)
    with torch.no_grad():
        theirs = model.forward_intermediates(x, intermediates_only=True)
    assert len(theirs) == len(out)
    for (path, ours), want in zip(out.items(), theirs, strict=True):
        assert torch.equal(as_timm_format(ours, want), want), path


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
    check_timm(name)


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


@pytest.mark.parametrize("name", TIMM_UNSUPPORTED)
def test_timm_unsupported_family_says_why(name: str) -> None:
    with pytest.raises(ValueError, match=r"not a submodule.*features_only=True"):
        stages(timm.create_model(name, pretrained=False))


# torchvision families whose stages FX is also compared on (one model each), in the zoo run
TV_FX = {"alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
         "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "resnext50_32x4d",
         "squeezenet1_1", "swin_v2_t", "vgg11_bn", "vit_b_32", "wide_resnet50_2"}  # fmt: skip


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in TV_ALL if n not in TV_QUICK])
def test_torchvision_zoo(name: str) -> None:
    check_torchvision(name, fx=name in TV_FX)


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in TIMM_ALL if n not in TIMM_QUICK])
def test_timm_zoo(name: str) -> None:
    check_timm(name)

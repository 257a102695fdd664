"""The backbone stays the user's: same object, same state-dict keys, hooks removable, modes kept."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn
from torchvision.models import resnet18 as make_resnet18

from featwrap import FeatureModel, HooksRemovedError


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_backbone_is_the_object_passed(resnet18) -> None:
    fm = FeatureModel(resnet18, ["layer1"])
    assert fm.backbone is resnet18
    assert list(fm.parameters()) == list(resnet18.parameters())


def test_state_dict_has_the_backbone_keys(resnet18) -> None:
    fm = FeatureModel(resnet18, ["layer1"])
    sd, ref = fm.state_dict(), resnet18.state_dict()
    assert list(sd) == list(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert sd._metadata[""] == ref._metadata[""]  # type: ignore[attr-defined]


def test_load_backbone_checkpoint_strict(tmp_path) -> None:
    source = make_resnet18(weights=None)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    fm = FeatureModel(make_resnet18(weights=None), ["layer1"])
    result = fm.load_state_dict(torch.load(path), strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    for k, v in source.state_dict().items():
        assert torch.equal(fm.backbone.state_dict()[k], v)
    # and back: a FeatureModel checkpoint loads into a plain backbone
    plain = make_resnet18(weights=None)
    plain.load_state_dict(fm.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(plain.eval()(x), fm.eval()(x)["logits"])


def test_strict_load_still_reports_bad_keys() -> None:
    fm = FeatureModel(nn.Sequential(nn.Linear(2, 2)), ["0"])
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*0\.bias"):
        fm.load_state_dict({"0.weight": torch.zeros(2, 2)})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\).*"extra"'):
        fm.load_state_dict(
            {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2), "extra": torch.zeros(1)}
        )


def test_nested_in_a_bigger_model() -> None:
    """A FeatureModel inside a module: keys are parent prefix + backbone keys; loading works."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = FeatureModel(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)), ["0"])
            self.head = nn.Linear(4, 1)

    net = Net()
    keys = list(net.state_dict())
    assert keys[:2] == ["encoder.0.weight", "encoder.0.bias"]
    assert "encoder.1.running_mean" in keys
    assert keys[-2:] == ["head.weight", "head.bias"]
    other = Net()
    other.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(other.encoder.backbone[0].weight, net.encoder.backbone[0].weight)


def test_backbone_with_its_own_backbone_submodule() -> None:
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(x)

    det = Detector()
    fm = FeatureModel(det, ["backbone"])
    assert list(fm.state_dict()) == ["backbone.weight", "backbone.bias"]
    fm.load_state_dict(Detector().state_dict(), strict=True)


def test_train_eval_modes_untouched(resnet18) -> None:
    resnet18.eval()
    resnet18.layer1.train()  # a deliberately mixed state
    modes = {n: m.training for n, m in resnet18.named_modules()}
    fm = FeatureModel(resnet18, ["layer1", "layer2"])
    fm(torch.randn(1, 3, 32, 32))
    assert {n: m.training for n, m in resnet18.named_modules()} == modes
    assert not fm.training  # mirrors the backbone
    resnet18.eval()


def test_remove_hooks_and_context_manager(resnet18) -> None:
    gc.collect()  # no FeatureModel of an earlier test may go away during this one
    before = all_hooks(resnet18)
    fm = FeatureModel(resnet18, ["layer1", "layer1.0.relu", "fc"], output_key=None)
    assert all_hooks(resnet18) > before
    fm.remove_hooks()
    assert all_hooks(resnet18) == before
    fm.remove_hooks()  # idempotent
    with pytest.raises(HooksRemovedError, match="remove_hooks"):
        fm(torch.randn(1, 3, 32, 32))
    with FeatureModel(resnet18, ["layer2"]) as fm2:
        assert "layer2" in fm2(torch.randn(1, 3, 32, 32))
        assert all_hooks(resnet18) > before
    assert all_hooks(resnet18) == before


def test_hooks_go_with_the_featuremodel(resnet18) -> None:
    gc.collect()  # FeatureModels of earlier tests held by reference cycles (tracebacks)
    before = all_hooks(resnet18)
    FeatureModel(resnet18, ["layer1"])(torch.randn(1, 3, 32, 32))  # never kept
    gc.collect()
    assert all_hooks(resnet18) == before


def test_two_featuremodels_on_one_backbone(resnet18) -> None:
    a = FeatureModel(resnet18, ["layer1", "layer2"])
    b = FeatureModel(resnet18, {"layer2": "x", "avgpool": "y"})
    x = torch.randn(1, 3, 32, 32)
    out_a, out_b = a(x), b(x)
    assert list(out_a) == ["logits", "layer1", "layer2"]
    assert list(out_b) == ["logits", "x", "y"]
    assert torch.equal(out_a["layer2"], out_b["x"])
    a.remove_hooks()
    assert list(b(x)) == ["logits", "x", "y"]
    b.remove_hooks()


def test_no_tensor_kept_between_calls(resnet18) -> None:
    """Once the caller drops the returned dict, every feature tensor is freed."""
    import weakref

    for output_key in ("logits", None):
        fm = FeatureModel(resnet18, ["layer1", "bn1", "layer1.0.relu"], output_key=output_key)
        for _ in range(2):  # successive calls
            out = fm(torch.randn(1, 3, 32, 32))
            refs = [weakref.ref(v) for v in out.values()]
            del out
            gc.collect()
            assert [r() for r in refs] == [None] * len(refs)
        for obj in [fm, fm._recorder, *resnet18.modules()]:
            for name, value in vars(obj).items():
                if name not in ("_parameters", "_buffers", "_modules"):
                    assert not isinstance(value, torch.Tensor), name
        assert fm._recorder._local.session is None
        assert fm._recorder.traced is None
        fm.remove_hooks()


def test_repr_lists_the_layers(resnet18) -> None:
    fm = FeatureModel(resnet18, {"layer1": "c2"}, repeats="all")
    assert "layers=['c2'], output_key='logits', repeats='all'" in repr(fm)
    assert fm.layers == {"c2": "layer1"}

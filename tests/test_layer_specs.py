"""The ``layers`` argument: paths, aliases, globs, and the errors for bad ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featwrap import (
    FeatureModel,
    FeatwrapError,
    LayerNotFoundError,
    LayerSpecError,
    list_layers,
)
from tests.models import Shared


def test_list_layers_is_named_modules_without_root(resnet18) -> None:
    expected = [name for name, _ in resnet18.named_modules()][1:]
    assert list_layers(resnet18) == expected
    assert "layer3.0.downsample.1" in expected


def test_list_layers_pattern(resnet18) -> None:
    assert list_layers(resnet18, "layer?.0.downsample") == [
        "layer2.0.downsample",
        "layer3.0.downsample",
        "layer4.0.downsample",
    ]


def test_single_string(resnet18) -> None:
    out = FeatureModel(resnet18, "layer2")(torch.randn(1, 3, 32, 32))
    assert list(out) == ["logits", "layer2"]


def test_tuple_and_dict_aliases(resnet18) -> None:
    x = torch.randn(1, 3, 32, 32)
    out = FeatureModel(resnet18, {"layer4": "c5", "layer1": "c2"})(x)
    assert list(out) == ["logits", "c5", "c2"]
    plain = FeatureModel(resnet18, ("layer4", "layer1"))(x)
    assert torch.equal(out["c5"], plain["layer4"])
    assert torch.equal(out["c2"], plain["layer1"])


def test_glob_expands_in_named_modules_order_at_its_place(resnet18) -> None:
    fm = FeatureModel(resnet18, ["avgpool", "layer*.0.downsample.1", "maxpool"])
    assert list(fm.layers) == [
        "avgpool",
        "layer2.0.downsample.1",
        "layer3.0.downsample.1",
        "layer4.0.downsample.1",
        "maxpool",
    ]
    out = fm(torch.randn(1, 3, 32, 32))
    assert list(out)[1:] == list(fm.layers)


def test_glob_question_mark_and_brackets(resnet18) -> None:
    fm = FeatureModel(resnet18, ["layer[13]", "bn?"])
    assert list(fm.layers) == ["layer1", "layer3", "bn1"]


def test_custom_output_key() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    out = FeatureModel(net, ["0"], output_key="out")(torch.randn(1, 2))
    assert list(out) == ["out", "0"]


def test_shared_module_under_two_paths() -> None:
    model = Shared()
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    fm = FeatureModel(model, ["encoder", "other"], repeats="all")
    out = fm(a, b)
    # one module, two paths: each key sees both calls
    assert torch.equal(out["encoder"][0], model.encoder(a))
    assert torch.equal(out["other"][1], model.encoder(b))
    assert len(out["encoder"]) == len(out["other"]) == 2


def test_unknown_path_suggests_close_match(resnet18) -> None:
    with pytest.raises(LayerNotFoundError, match=r"Did you mean 'layer3.0.downsample.1'\?") as info:
        FeatureModel(resnet18, ["layer3.0.downsampl.1"])
    assert "list_layers" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FeatwrapError)


def test_unknown_path_names_the_value(resnet18) -> None:
    with pytest.raises(
        ValueError, match=r"'layer5' is not a submodule of ResNet. Did you mean 'layer4'"
    ):
        FeatureModel(resnet18, "layer5")


def test_empty_layers(resnet18) -> None:
    for empty in ([], (), {}):
        with pytest.raises(LayerSpecError, match="empty"):
            FeatureModel(resnet18, empty)


def test_glob_matching_nothing(resnet18) -> None:
    with pytest.raises(LayerNotFoundError, match=r"glob 'block\*' matches no submodule"):
        FeatureModel(resnet18, ["block*"])


def test_two_layers_one_key(resnet18) -> None:
    with pytest.raises(LayerSpecError, match=r"'layer1'.*requested twice"):
        FeatureModel(resnet18, ["layer1", "layer1"])
    with pytest.raises(LayerSpecError, match="map to one key"):
        FeatureModel(resnet18, {"layer1": "x", "layer2": "x"})
    with pytest.raises(LayerSpecError, match="requested twice"):
        FeatureModel(resnet18, ["layer1", "layer[12]"])


def test_alias_equal_to_output_key(resnet18) -> None:
    with pytest.raises(LayerSpecError, match="equals output_key 'logits'"):
        FeatureModel(resnet18, {"fc": "logits"})
    with pytest.raises(ValueError, match="equals output_key 'out'"):
        FeatureModel(nn.Sequential(nn.Linear(1, 1)), {"0": "out"}, output_key="out")
    FeatureModel(resnet18, {"fc": "logits"}, output_key=None)  # fine without an output key


def test_glob_with_single_alias_needs_one_match(resnet18) -> None:
    with pytest.raises(LayerSpecError, match="matches 3 layers"):
        FeatureModel(resnet18, {"layer?.0.downsample": "d"})
    fm = FeatureModel(resnet18, {"layer4.0.down*[!0-9]": "d"})
    assert fm.layers == {"d": "layer4.0.downsample"}  # [!0-9]: not its children


def test_root_path_rejected(resnet18) -> None:
    with pytest.raises(LayerNotFoundError, match="backbone itself"):
        FeatureModel(resnet18, [""])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backbone": "resnet18"}, TypeError, "backbone must be a torch.nn.Module, got str"),
        ({"layers": 3}, TypeError, "layers must be a path string"),
        ({"layers": ["layer1", 2]}, TypeError, "got int: 2"),
        ({"layers": {"layer1": 5}}, TypeError, "alias strings"),
        (
            {"repeats": "most"},
            ValueError,
            "repeats='most' is not one of 'last', 'first', 'all', 'error'",
        ),
        (
            {"missing": "ignore"},
            ValueError,
            "missing='ignore' is not one of 'error', 'skip', 'none'",
        ),
        ({"output_key": 1}, TypeError, "output_key must be a string or None"),
        ({"detach": "yes"}, TypeError, "detach must be True or False"),
    ],
)
def test_bad_arguments(resnet18, kwargs, error, match) -> None:  # type: ignore[no-untyped-def]
    args = {"backbone": resnet18, "layers": ["layer1"], **kwargs}
    backbone, layers = args.pop("backbone"), args.pop("layers")
    with pytest.raises(error, match=match) as info:
        FeatureModel(backbone, layers, **args)
    assert isinstance(info.value, FeatwrapError)


def test_string_enums_accept_enum_members(resnet18) -> None:
    from featwrap._capture import Missing, Repeats

    fm = FeatureModel(resnet18, "layer1", repeats=Repeats.FIRST, missing=Missing.SKIP)
    assert fm.repeats == "first"
    assert fm.missing == "skip"

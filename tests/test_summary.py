"""The layer table (featwrap.summary, `featwrap layers`): shapes, call counts and in-place marks
checked against independent hooks on a real forward; the CLI output against golden files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from featwrap import LayerSummary, list_layers, summary
from featwrap.cli import main
from tests.models import InplaceChain, ReuseReLU, Shared, Structured

GOLDEN = Path(__file__).parent / "golden"


def observed(model: nn.Module, *args: Any) -> dict[str, tuple[list[Any], bool]]:
    """An independent reference: per module, the shape (without batch) of each call's output, and
    whether any output tensor's version counter moved after the module returned (in place later)."""
    seen: dict[str, list[tuple[Any, list[tuple[torch.Tensor, int]]]]] = {}

    def walk(value: Any) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (tuple, list)):
            return [t for v in value for t in walk(v)]
        if isinstance(value, dict):
            return [t for v in value.values() for t in walk(v)]
        if hasattr(value, "__dataclass_fields__"):
            return [t for f in value.__dataclass_fields__ for t in walk(getattr(value, f))]
        return []

    handles = []
    for path, module in model.named_modules():
        if path:

            def hook(m: nn.Module, a: Any, out: Any, path: str = path) -> None:
                tensors = walk(out)
                shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
                seen.setdefault(path, []).append((shape, [(t, t._version) for t in tensors]))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return {
        path: (
            [shape for shape, _ in calls],
            any(t._version != v for _, ts in calls for t, v in ts),
        )
        for path, calls in seen.items()
    }


@pytest.mark.parametrize("train", [False, True])
def test_resnet_rows_match_a_real_forward(resnet18, train: bool) -> None:
    model = resnet18.train(train)
    try:
        table = summary(model, (3, 64, 64))
        truth = observed(model, torch.randn(2, 3, 64, 64))
    finally:
        model.eval()
    assert isinstance(table, LayerSummary)
    assert [r.path for r in table] == list_layers(model)
    for row in table:
        shapes, modified = truth[row.path]
        assert row.calls == len(shapes), row.path
        assert row.shapes == shapes[-1], row.path
        assert row.modified == modified, row.path
        assert row.module == type(model.get_submodule(row.path)).__name__
    rows = {r.path: r for r in table}
    assert rows["layer1.0.relu"].calls == 2  # BasicBlock calls its ReLU twice
    assert rows["bn1"].modified  # then ReLU(inplace=True)
    assert not rows["conv1"].modified
    assert (rows["layer3"].channels, rows["layer3"].reduction) == (256, 16)
    assert not table.real_forward


@pytest.mark.parametrize(
    ("factory", "args"),
    [
        (InplaceChain, (torch.randn(2, 3, 8, 8),)),
        (ReuseReLU, (torch.randn(2, 4),)),
        (Structured, (torch.randn(2, 4),)),
        (Shared, (torch.randn(2, 4), torch.randn(2, 4))),
    ],
)
def test_edge_case_models(factory: type[nn.Module], args: tuple[torch.Tensor, ...]) -> None:
    model = factory()
    table = summary(model, inputs=args)
    truth = observed(model, *args)
    for row in table:
        shapes, modified = truth.get(row.path, ([], False))
        assert row.calls == len(shapes), row.path
        if isinstance(shapes[-1] if shapes else None, tuple):
            assert row.shapes == shapes[-1], row.path
        assert row.modified == modified, row.path
    assert any(r.modified for r in table) == any(m for _, m in truth.values())


def test_filters(resnet18) -> None:
    assert [r.path for r in summary(resnet18, 32, depth=1)] == [
        p for p in list_layers(resnet18) if "." not in p
    ]
    assert [r.path for r in summary(resnet18, 32, pattern="layer?.0.downsample")] == [
        "layer2.0.downsample",
        "layer3.0.downsample",
        "layer4.0.downsample",
    ]
    assert [r.path for r in summary(resnet18, 32, layers=["fc", "layer2"])] == ["fc", "layer2"]
    with pytest.raises(ValueError, match="No layer of ResNet matches pattern='nope'"):
        summary(resnet18, 32, pattern="nope")
    with pytest.raises(ValueError, match="depth must be a positive int"):
        summary(resnet18, 32, depth=0)


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("layers_resnet18_layer1.txt", ["torchvision:resnet18", "-s", "3,64,64", "-p", "layer1*"]),
        (
            "layers_convnext_atto_stages.txt",
            ["timm:convnext_atto", "--input-size", "64", "--stages"],
        ),
        ("layers_resnet18_paths.txt", ["torchvision:resnet18", "--paths-only", "-d", "1"]),
    ],
)
def test_cli_golden(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", *argv]) == 0
    out = capsys.readouterr().out
    golden = GOLDEN / name
    if os.environ.get("FEATWRAP_UPDATE_GOLDEN"):  # rewrite on purpose, then review the diff
        golden.write_text(out)
    assert out == golden.read_text()


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "torchvision:resnet18", "-p", "nothing*"]) == 2
    assert (
        "No layer of torchvision:resnet18 matches --pattern 'nothing*'" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["layers", "-s", "3,x"])
    assert "'3,x' is not a size" in capsys.readouterr().err
    assert main(["layers", "torchvision:resnet1800"]) == 2
    assert "Did you mean 'torchvision:resnet18" in capsys.readouterr().err
    assert main(["layers", "tests.models:InplaceChain", "--stages"]) == 2
    assert "no preset for InplaceChain" in capsys.readouterr().err

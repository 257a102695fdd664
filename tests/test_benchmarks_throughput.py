"""The extraction throughput harness (benchmarks/throughput.py) at tiny sizes: its bare loop keeps
what cloning reference hooks see, to disk and in memory, under each setting; its check finds a
wrong extract; the command line writes every figure. No speed figure is asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks import throughput as tp
from tests.reference import reference

SIZE, N = 32, 6


def _images() -> torch.Tensor:
    return torch.stack([tp.Images(N, SIZE)[i][0] for i in range(N)])


@pytest.mark.parametrize(
    ("name", "setting"),
    [("resnet18", "fp32"), ("resnet18", "bf16+cl"), ("vit_ti16", "fp32"), ("vit_ti16", "bf16")],
)
def test_bare_loop_keeps_the_reference_features(name: str, setting: str, tmp_path: Path) -> None:
    model = tp.build_model(name, SIZE)
    layers = tp.MODELS[name]
    options = tp.SETTINGS[setting]
    dtype = getattr(torch, options.autocast) if options.autocast else None
    with torch.no_grad(), torch.autocast("cpu", dtype, enabled=dtype is not None):
        logits, calls = reference(model, layers[:-1], _images())
    expected = {k: calls[k][0] for k in layers[:-1]} | {"logits": logits}
    loader = DataLoader(tp.Images(N, SIZE), batch_size=4)
    bare = tp.BareLoop(model, layers, options, torch.device("cpu"))
    in_memory = bare.run(loader, None)
    assert in_memory is not None
    assert bare.run(loader, tmp_path / "bare") is None
    for key, value in expected.items():
        torch.testing.assert_close(in_memory[key], value, rtol=0.02, atol=0.02)
        assert in_memory[key].dtype == value.dtype
        raw = (tmp_path / "bare" / f"{key}.bin").read_bytes()
        on_disk = torch.frombuffer(bytearray(raw), dtype=value.dtype).reshape(value.shape)
        assert torch.equal(on_disk, in_memory[key])
    assert next(model.parameters()).is_contiguous()  # the model left in its own format


def test_bare_loop_pools_like_extract() -> None:
    model = tp.build_model("resnet18", SIZE)
    loader = DataLoader(tp.Images(N, SIZE), batch_size=4)
    layers = ["layer1", "logits"]
    pooled = tp.BareLoop(model, layers, tp.SETTINGS["fp32"], torch.device("cpu"), "avg")
    whole = tp.BareLoop(model, layers, tp.SETTINGS["fp32"], torch.device("cpu"))
    got, full = pooled.run(loader, None), whole.run(loader, None)
    assert got is not None
    assert full is not None
    torch.testing.assert_close(got["layer1"], full["layer1"].mean(dim=(2, 3)))
    assert torch.equal(got["logits"], full["logits"])


def test_check_finds_a_wrong_extract() -> None:
    right = {"a": torch.ones(2, 3)}
    tp._check(right, {"a": torch.ones(2, 3)}, "in memory")
    with pytest.raises(AssertionError, match="extract to disk: 'a' differs"):
        tp._check(right, {"a": torch.ones(2, 3).add(1e-3)}, "to disk")


def test_command_line_writes_every_figure(tmp_path: Path, capsys: Any) -> None:
    argv = [
        "--models", "resnet18", "--settings", "fp32", "bf16+cl", "--n", str(N), "--size",
        str(SIZE), "--batch-size", "4", "--workers", "0", "--rounds", "1", "--folder",
        str(tmp_path), "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md"),
    ]  # fmt: skip
    assert tp.main(argv) == 0
    results = json.loads((tmp_path / "t.json").read_text())
    assert [(r["model"], r["setting"]) for r in results] == [
        ("resnet18", "fp32"),
        ("resnet18", "bf16+cl"),
    ]
    for r in results:
        assert set(r["images_per_s"]) == set(tp.VARIANTS)
        assert (
            set(r["wall_ratio"]) == set(r["cpu_ratio"]) == {"extract to disk", "extract in memory"}
        )
        assert all(v > 0 for v in r["wall_ratio"].values())
    table = (tmp_path / "t.md").read_text()
    assert "| resnet18 | bf16+cl |" in table
    assert list(tmp_path.iterdir()) != []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("featwrap-throughput-")]
    assert "6 images of 32 px" in capsys.readouterr().out

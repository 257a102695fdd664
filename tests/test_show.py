"""`featwrap show` and featwrap.viz: PNGs of the expected size, with the expected pixels."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.models import resnet18

from featwrap.assets import sample_image
from featwrap.cli import main
from featwrap.viz import channel_grid, save_channel_grid, save_layer_statistics
from tests.reference import reference


def grid_size(channels: int, h: int, w: int, cell: int = 64, padding: int = 2) -> tuple[int, int]:
    """(width, height) as documented: ceil(sqrt(n)) columns, cells enlarged by cell // max(h, w)."""
    scale = max(1, cell // max(h, w))
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    return cols * (w * scale + padding) + padding, rows * (h * scale + padding) + padding


def test_show_saves_the_grid_and_the_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    grid, stats = tmp_path / "grid.png", tmp_path / "grid-stats.png"
    argv = ["show", "--layer", "layer1", "--image", str(sample_image("cat.jpg")),
            "--image-size", "64", "--out", str(grid)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {grid} (530x530 px): 64 channels of layer1 (64, 16, 16)" in printed
    with Image.open(grid) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == grid_size(64, 16, 16) == (530, 530)
        pixels = np.asarray(image)
    with Image.open(stats) as image:
        assert image.format == "PNG"
        assert image.size == (1000, 600)
        assert (
            len(np.unique(np.asarray(image).reshape(-1, 4 if image.mode == "RGBA" else 3), axis=0))
            > 10
        )

    # The top-left cell is channel 0 of layer1, min-max scaled and colored with viridis.
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    transform = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    x = transform(Image.open(sample_image("cat.jpg")).convert("RGB"))[None]
    with torch.no_grad():
        _, calls = reference(model, ["layer1"], x)
    channel = calls["layer1"][0][0, 0].numpy().astype(np.float64)
    scaled = (channel - channel.min()) / (channel.max() - channel.min())
    colors = matplotlib.colormaps["viridis"](np.round(scaled * 255).astype(int))[..., :3] * 255
    cell = pixels[2 : 2 + 64 : 4, 2 : 2 + 64 : 4].astype(np.float64)  # one pixel per value (x4)
    assert np.abs(cell - colors).max() <= 1.0
    assert (pixels[:2] == 255).all()
    assert (pixels[:, :2] == 255).all()


def test_show_from_an_extraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "features"
    assert main(["extract", "--weights", "none", "--layers", "layer2,avgpool", "--image-size",
                 "32", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    grid = tmp_path / "g.png"
    argv = ["show", "--features", str(out), "--layer", "layer2", "--index", "1", "--out", str(grid),
            "--max-channels", "10"]  # fmt: skip
    assert main(argv) == 0
    assert "10 channels of layer2 (128, 4, 4) for cat.jpg" in capsys.readouterr().out
    with Image.open(grid) as image:
        assert image.size == grid_size(10, 4, 4)  # 4 columns, 3 rows of 64 px cells
    with Image.open(tmp_path / "g-stats.png") as image:
        assert image.size == (1000, 600)
    assert main([*argv[:4], "layer3", *argv[5:]]) == 2
    assert "Did you mean 'layer2'" in capsys.readouterr().err


def test_channel_grid_shapes_and_values(tmp_path: Path) -> None:
    feature = torch.arange(5 * 3 * 2, dtype=torch.float32).reshape(5, 3, 2)
    grid = channel_grid(feature, cell=6, padding=1)
    assert tuple(grid.shape) == (2 * (6 + 1) + 1, 3 * (4 + 1) + 1, 3)  # 3 columns, 2 rows, x2
    lut = matplotlib.colormaps["viridis"]
    first = torch.tensor(lut(np.array([0.0, 1.0]))[:, :3] * 255).round().to(torch.uint8)
    assert torch.equal(grid[1, 1], first[0])
    assert torch.equal(grid[1 + 5, 1 + 3], first[1])
    assert (grid[8:, 11:] == 255).all()  # the sixth cell is empty
    vector = channel_grid(torch.randn(10))  # a (C,) vector: one 4x4 heat map, 6 values empty
    assert tuple(vector.shape) == (2 + 64 + 2, 2 + 64 + 2, 3)
    size = save_channel_grid(torch.randn(512, 1, 1), tmp_path / "v.png")
    with Image.open(tmp_path / "v.png") as image:
        assert image.size == size == (2 + 46 + 2, 2 + 46 + 2)  # 23x23 values, x2
    with pytest.raises(ValueError, match="index the batch first"):
        channel_grid(torch.randn(2, 3, 4, 4))
    stats = {"a": {"mean": 0.1, "std": 1.0, "min": -2.0, "max": 3.0, "zeros": 0.5}}
    assert save_layer_statistics(stats, tmp_path / "s.png", size=(4, 3), dpi=50) == (200, 150)
    with Image.open(tmp_path / "s.png") as image:
        assert image.size == (200, 150)

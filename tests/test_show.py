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
from featwrap.viz import (
    channel_figure,
    channel_grid,
    save_channel_grid,
    save_layer_statistics,
    statistics_figure,
)
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
    with Image.open(grid) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert f"Wrote {grid} ({width}x{height} px): 64 channels of layer1 (64, 16, 16)" in printed
    # the grid of 530x530 px, drawn one pixel per pixel 0.45 inch (45 px) from the top and
    # 0.15 inch from the left, beside a colour scale (1 inch) and under the title
    assert grid_size(64, 16, 16) == (530, 530)
    assert (width, height) == (15 + 530 + 100, 45 + 530 + 15)
    pixels = pixels[45 : 45 + 530, 15 : 15 + 530]
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
    # one pixel per value (x4); the lower right of the cell (the channel number sits top left)
    cell = pixels[2 : 2 + 64 : 4, 2 : 2 + 64 : 4].astype(np.float64)
    assert np.abs(cell[8:, 8:] - colors[8:, 8:]).max() <= 1.0
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
    printed = capsys.readouterr().out
    with Image.open(grid) as image:
        width, height = image.size
    assert f"({width}x{height} px): 10 channels of layer2 (128, 4, 4) for cat.jpg" in printed
    assert grid_size(10, 4, 4) == (266, 200)  # 4 columns, 3 rows of 64 px cells
    assert height == 45 + 200 + 15
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
    size = save_channel_grid(torch.randn(512, 1, 1), tmp_path / "v.png")  # a bar plot
    with Image.open(tmp_path / "v.png") as image:
        assert image.size == size == (1000, 360)
    with pytest.raises(ValueError, match="index the batch first"):
        channel_grid(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"^max_channels=0, padding=-1: .*--max-channels"):
        channel_grid(torch.randn(3, 4, 4), max_channels=0, padding=-1)
    stats = {"a": {"mean": 0.1, "std": 1.0, "min": -2.0, "max": 3.0, "zeros": 0.5}}
    assert save_layer_statistics(stats, tmp_path / "s.png", size=(4, 3), dpi=50) == (200, 150)
    with Image.open(tmp_path / "s.png") as image:
        assert image.size == (200, 150)


def test_show_function_leaves_the_model_as_found(tmp_path: Path) -> None:
    from torch import nn

    from featwrap.viz import show

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 2, 3))
    model.train()
    image = Image.open(sample_image("shapes.jpg"))
    result = show(model, image, "1", tmp_path / "g.png", stats=tmp_path / "s.png", image_size=20)
    assert result["shape"] == (5, 18, 18)
    assert grid_size(5, 18, 18) == (3 * (54 + 2) + 2, 2 * (54 + 2) + 2) == (170, 114)
    assert result["grid"][1] == 45 + 114 * 2 + 15  # small grids are drawn at x2 (400 // 170)
    assert result["stats"] == (1000, 600)
    assert result["layers"] == 4
    with Image.open(tmp_path / "g.png") as png:
        assert png.size == result["grid"]
    assert model.training
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert int(model[1].num_batches_tracked) == 0  # ran in eval mode: BatchNorm stats untouched


def test_a_vector_layer_is_a_bar_plot_of_its_values(tmp_path: Path) -> None:
    """avgpool (512, 1, 1) and fc (1000,): every value, against independent reference hooks."""
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, calls = reference(model, ["avgpool", "fc"], x)
    avgpool, fc = calls["avgpool"][0][0], calls["fc"][0][0]
    figure = channel_figure(avgpool, title="avgpool")
    (ax,) = figure.axes
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx(avgpool.reshape(-1).double().tolist(), abs=0)
    assert ax.get_xlabel() == "channel"
    assert not ax.images  # no 1x1 tiles
    (line,) = channel_figure(fc).axes[0].get_lines()[:1]  # beyond 512 channels: a line
    assert list(line.get_ydata()) == pytest.approx(fc.double().tolist(), abs=0)
    assert len(line.get_xdata()) == 1000


def test_a_map_is_numbered_and_has_a_colour_scale() -> None:
    feature = torch.randn(20, 7, 7)
    figure = channel_figure(feature, max_channels=12)
    grid_ax, scale_ax = figure.axes
    assert np.array_equal(grid_ax.images[0].get_array(), channel_grid(feature, max_channels=12))
    assert [t.get_text() for t in grid_ax.texts] == [str(i) for i in range(12)]
    assert grid_ax.get_title(loc="left") == "12 of 20 channels"
    assert [t.get_text() for t in scale_ax.get_yticklabels()] == ["min", "max"]


def test_statistics_show_ranges_a_layer_can_have(tmp_path: Path) -> None:
    """Percentiles against torch.quantile; every drawn range within the layer's min and max
    (a ReLU layer is never drawn below zero, as mean - std was)."""
    from featwrap.extraction import layer_statistics

    torch.manual_seed(0)
    relu = torch.relu(torch.randn(101, 1))  # 101 values: each percentile is one exact rank
    wide = torch.randn(4, 30000)  # more values than the exact sample: an evenly spaced one
    stats = layer_statistics({"relu": relu, "wide": wide})
    for p in (1, 25, 50, 75, 99):
        exact = torch.quantile(relu.double().reshape(-1), p / 100, interpolation="nearest")
        assert stats["relu"][f"p{p:02d}"] == exact.item()
        close = torch.quantile(wide.double().reshape(-1)[::2], p / 100).item()
        assert abs(stats["wide"][f"p{p:02d}"] - close) < 0.05
    assert stats["relu"]["min"] == 0.0
    saved = save_layer_statistics(stats, tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as image:
        assert image.size == saved == (1000, 600)
    figure = statistics_figure(stats)
    top = figure.axes[0]
    for collection in top.collections[:3]:  # min-max, 1-99%, 25-75%
        for segment, (low, high) in zip(
            collection.get_segments(), [(s["min"], s["max"]) for s in stats.values()], strict=True
        ):
            ys = segment[:, 1]
            assert low <= ys.min() <= ys.max() <= high

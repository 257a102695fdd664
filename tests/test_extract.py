"""featwrap.extract in one process: values against independent hooks, order, pooling, files."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import featwrap
from featwrap import DataError, FeatureModel, LayerNotFoundError, LayerSpecError, extract
from featwrap.errors import FeatwrapError
from tests.reference import reference


class TinyNet(nn.Module):
    """conv -> in-place ReLU -> conv -> global pool -> linear; small enough for every test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        return self.fc(self.pool(self.conv2(x)).flatten(1))


LAYERS = ["conv1", "conv2", "pool"]


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(1)
    return TinyNet().eval()


@pytest.fixture
def data() -> TensorDataset:
    return TensorDataset(torch.randn(11, 3, 12, 12), torch.arange(11))


def expected(
    model: nn.Module, inputs: torch.Tensor, paths: list[str], batches: list[list[int]]
) -> dict[str, torch.Tensor]:
    """Each layer's rows, from reference hooks over the given batches, plus the logits."""
    rows: dict[str, list[torch.Tensor]] = {p: [] for p in [*paths, "logits"]}
    with torch.no_grad():
        for batch in batches:
            out, calls = reference(model, paths, inputs[batch])
            for p in paths:
                rows[p].append(calls[p][-1])
            rows["logits"].append(out)
    return {k: torch.cat(v) for k, v in rows.items()}


def test_in_memory_rows_equal_reference_hooks(net: TinyNet, data: TensorDataset) -> None:
    feats = extract(net, data, [*LAYERS, "logits"], batch_size=4)
    want = expected(net, data.tensors[0], LAYERS, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]])
    assert list(feats) == [*LAYERS, "logits"]
    for key in feats:
        assert torch.equal(feats[key], want[key]), key
    assert feats.ids == [str(i) for i in range(11)]
    # conv1's output is modified by the in-place ReLU: featwrap keeps the module's own output
    assert (feats["conv1"] < 0).any()


def test_rows_in_dataset_order_with_the_loaders_collate(net: TinyNet, data: TensorDataset) -> None:
    def doubling(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        return torch.stack([x for x, _ in items]) * 2, torch.stack([y for _, y in items])

    loader = DataLoader(data, batch_size=5, shuffle=True, collate_fn=doubling)
    feats = extract(net, loader, ["pool", "logits"])
    want = expected(net, data.tensors[0] * 2, ["pool"], [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10]])
    assert torch.equal(feats["pool"], want["pool"])
    assert torch.equal(feats["logits"], want["logits"])


def test_batches_never_cross_shards(net: TinyNet, data: TensorDataset, tmp_path: Path) -> None:
    feats = extract(net, data, ["conv2"], out=tmp_path / "o", batch_size=3, shard_size=4)
    batches = [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9, 10]]
    assert torch.equal(feats["conv2"], expected(net, data.tensors[0], ["conv2"], batches)["conv2"])


def test_pooling_and_dtype(net: TinyNet, data: TensorDataset) -> None:
    feats = extract(
        net,
        data,
        ["conv1", "conv2", "pool", "fc"],
        pool={"conv1": "avg", "conv2": "max", "pool": "flatten", "fc": lambda t: t[:, :2]},
        dtype=torch.float16,
        batch_size=11,
    )
    want = expected(net, data.tensors[0], ["conv1", "conv2", "pool", "fc"], [list(range(11))])
    assert torch.equal(feats["conv1"], want["conv1"].mean(dim=(2, 3)).half())
    assert torch.equal(feats["conv2"], want["conv2"].amax(dim=(2, 3)).half())
    assert torch.equal(feats["pool"], want["pool"].reshape(11, 8).half())
    assert torch.equal(feats["fc"], want["fc"][:, :2].half())
    assert {v.dtype for v in feats.values()} == {torch.float16}


def test_only_the_output(net: TinyNet, data: TensorDataset) -> None:
    feats = extract(net, data, "logits", batch_size=11)
    with torch.no_grad():
        assert torch.equal(feats["logits"], net(data.tensors[0]))


def test_aliases_and_a_feature_model(net: TinyNet, data: TensorDataset) -> None:
    feats = extract(net, data, {"conv2": "c2", "logits": "out"}, batch_size=11)
    want = expected(net, data.tensors[0], ["conv2", "pool"], [list(range(11))])
    assert list(feats) == ["c2", "out"]
    assert torch.equal(feats["c2"], want["conv2"])
    fm = FeatureModel(net, {"pool": "p"})
    feats = extract(fm, data, batch_size=11)
    assert list(feats) == ["logits", "p"]
    assert torch.equal(feats["p"], want["pool"])
    assert torch.equal(feats["logits"], want["logits"])
    assert list(fm(data.tensors[0][:2])) == ["logits", "p"]  # its hooks are still in place
    feats = extract(fm, data, ["conv2"], batch_size=11)  # other layers: the backbone's paths
    assert torch.equal(feats["conv2"], want["conv2"])


def test_to_directory_any_reader(net: TinyNet, data: TensorDataset, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file as load_numpy

    out = tmp_path / "feats"
    memory = extract(net, data, [*LAYERS, "logits"], batch_size=4, shard_size=4)
    disk = extract(net, data, [*LAYERS, "logits"], out=out, batch_size=4, shard_size=4)
    again = featwrap.load_features(out)
    assert sorted(p.name for p in out.iterdir()) == ["features.safetensors", "manifest.json"]
    arrays = load_numpy(str(out / "features.safetensors"))
    with safe_open(str(out / "features.safetensors"), framework="pt") as f:
        from_safetensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key in memory:
        assert torch.equal(disk[key], memory[key]), key
        assert torch.equal(again[key], memory[key]), key
        assert torch.equal(from_safetensors[key], memory[key]), key
        assert np.array_equal(arrays[key], memory[key].numpy()), key
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 11
    assert manifest["ids"] == [str(i) for i in range(11)]
    assert manifest["layers"]["conv2"] == {
        "path": "conv2",
        "pool": "none",
        "shape": [11, 8, 6, 6],
        "dtype": "float32",
    }
    assert manifest["samples"] == 11
    assert manifest["layers"]["logits"]["path"] == ""
    assert manifest["model"].endswith("TinyNet")
    assert manifest["featwrap"] == featwrap.__version__
    assert manifest["skipped"] == []
    assert again.ids == manifest["ids"]
    assert again.manifest == manifest


def test_running_again_when_complete_recomputes_nothing(
    net: TinyNet, data: TensorDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o"
    first = extract(net, data, ["pool"], out=out)
    stamp = (out / "features.safetensors").stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed again")

    # featwrap.extract is the function; its package's modules are reached through sys.modules
    monkeypatch.setattr(importlib.import_module("featwrap.extraction.run"), "compute_rows", fail)
    second = extract(net, data, ["pool"], out=out)
    assert torch.equal(first["pool"], second["pool"])
    assert (out / "features.safetensors").stat().st_mtime_ns == stamp


def _images(root: Path, names: list[str], size: int = 10) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        color = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
        Image.new("RGB", (size + i % 3, size), color).save(path)


def test_image_folder_order_ids_and_classes_match_torchvision(net: TinyNet, tmp_path: Path) -> None:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    root = tmp_path / "data"
    names = ["dog/b.png", "dog/a.PNG", "cat/z.png", "cat/sub/a.png", "cat/sub-2/c.png", "cat/a.png"]
    _images(root, names)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    transform = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    feats = extract(net, root, ["pool"], transform=transform, batch_size=2)

    def visible_image(path: str) -> bool:  # featwrap skips hidden files (macOS "._x.jpg")
        name = Path(path).name
        return not name.startswith(".") and name.lower().endswith((".png", ".jpg"))

    reference_set = ImageFolder(str(root), transform=transform, is_valid_file=visible_image)
    want_ids = [Path(p).relative_to(root).as_posix() for p, _ in reference_set.samples]
    assert feats.ids == want_ids
    inputs = torch.stack([reference_set[i][0] for i in range(len(reference_set))])
    want = expected(net, inputs, ["pool"], [[0, 1], [2, 3], [4, 5]])
    assert torch.equal(feats["pool"], want["pool"])
    assert feats.classes == reference_set.classes
    assert feats.targets == reference_set.targets
    disk = extract(net, root, ["pool"], out=tmp_path / "o", transform=transform, batch_size=2)
    assert disk.manifest["classes"] == reference_set.classes
    assert disk.manifest["targets"] == reference_set.targets
    assert (disk.classes, disk.targets) == (reference_set.classes, reference_set.targets)
    assert "Resize" in disk.manifest["transform"]


def test_flat_folder_and_single_image(net: TinyNet, tmp_path: Path) -> None:
    import torchvision.transforms as T

    _images(tmp_path, ["b.png", "a.jpg", "deeper/c.png"])
    transform = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    feats = extract(net, tmp_path, ["pool"], transform=transform)
    assert feats.ids == ["a.jpg", "b.png", "deeper/c.png"]  # sorted(os.walk): the root first
    one = extract(net, tmp_path / "b.png", ["pool"], transform=transform)
    assert one.ids == ["b.png"]
    torch.testing.assert_close(one["pool"], feats["pool"][1:2])  # another batch: last bits differ


def test_the_model_is_left_as_found(net: TinyNet, data: TensorDataset) -> None:
    net.train()
    net.conv2.eval()
    extract(net, data, ["conv1", "logits"], batch_size=11)
    assert net.training
    assert net.conv1.training
    assert not net.conv2.training
    assert all(not m._forward_hooks for m in net.modules())


def test_load_features_maps_the_file(tmp_path: Path) -> None:
    """Loading ~48 MB of features adds little resident memory; reading them all adds it all."""

    class Big(Dataset[torch.Tensor]):
        def __len__(self) -> int:
            return 96

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.full((1, 64, 64), float(i))

    model = nn.Sequential(nn.Conv2d(1, 32, 1))  # 512 KiB per row
    extract(model, Big(), ["0"], out=tmp_path / "o", batch_size=32)
    before = _rss()
    feats = featwrap.load_features(tmp_path / "o")
    corner = feats["0"][:, 0, 0, 0]  # one value per row: one page of each row is read
    loaded = _rss() - before
    weight, bias = model[0].weight[0, 0].item(), model[0].bias[0].item()
    assert torch.allclose(corner, torch.arange(96.0) * weight + bias)
    assert loaded < 8 << 20, f"load_features made {loaded >> 20} MiB resident"
    feats["0"].sum()
    assert _rss() - before > 40 << 20  # the check above could see a full read


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_unreadable_samples(net: TinyNet) -> None:
    class Flaky(Dataset[torch.Tensor]):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> torch.Tensor:
            if i == 3:
                raise OSError("disk says no")
            return torch.full((3, 8, 8), float(i))

    with pytest.raises(DataError, match=r"sample '3' \(index 3\): OSError: disk says no.*skip"):
        extract(net, Flaky(), ["pool"])
    feats = extract(net, Flaky(), ["pool"], on_error="skip", batch_size=4)
    assert feats.ids == ["0", "1", "2", "4", "5"]
    assert [s["index"] for s in feats.skipped] == [3]
    inputs = torch.stack([torch.full((3, 8, 8), float(i)) for i in (0, 1, 2, 4, 5)])
    want = expected(net, inputs, ["pool"], [[0, 1, 2], [3, 4]])
    assert torch.equal(feats["pool"], want["pool"])


def test_argument_errors(net: TinyNet, data: TensorDataset) -> None:
    with pytest.raises(DataError, match=r"dicts with the keys \['image'\] but lacks \['x'\]"):
        extract(net, [{"image": torch.zeros(3, 8, 8)}], ["pool"])
    with pytest.raises(ValueError, match=r"'avgg'.*Did you mean 'avg'"):
        extract(net, data, ["pool"], pool="avgg")
    with pytest.raises(ValueError, match=r"'pol'.*Did you mean 'pool'"):
        extract(net, data, ["pool"], pool={"pol": "avg"})
    with pytest.raises(LayerNotFoundError, match=r"'conv' is not a submodule.*Did you mean"):
        extract(net, data, ["conv"])
    with pytest.raises(LayerSpecError, match="Name the layers"):
        extract(net, data)
    with pytest.raises(ValueError, match="on_error='ignore'"):
        extract(net, data, ["pool"], on_error="ignore")
    with pytest.raises(ValueError, match="first dimension is not the batch"):
        extract(net, data, ["pool"], pool=lambda t: t.sum())  # 0-dim
    with pytest.raises(FeatwrapError, match="not a tensor"):
        extract(net, data, ["pool"], pool=lambda t: [t])
    with pytest.raises(DataError, match="holds no extracted features"):
        featwrap.load_features(Path(__file__).parent)


@pytest.mark.parametrize(
    "module",
    ["featwrap.extraction.data", "featwrap.extraction.safetensors_file", "featwrap.extraction.plan", "featwrap.extraction.store",
     "featwrap.extraction.pool", "featwrap.extraction.inputs", "featwrap.extraction.tokens",
     "featwrap.extraction.tars", "featwrap.viz"],
)  # fmt: skip
def test_docstring_examples(module: str) -> None:
    import doctest

    result = doctest.testmod(importlib.import_module(module), raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0

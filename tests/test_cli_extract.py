"""`featwrap extract` on the command line: the default (seed) scenario, weights, bad input."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.models import resnet18

import featwrap
from featwrap.assets import sample_dir
from featwrap.cli import main
from tests.reference import reference

SEED_LAYERS = ["maxpool", "layer3.0.downsample.1", "avgpool"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sample_batch(size: int = 224) -> torch.Tensor:
    """The shipped images, preprocessed by hand (resize, center crop, ImageNet normalization)."""
    transform = T.Compose(
        [
            T.Resize(round(size * 256 / 224)),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    paths = sorted(sample_dir().iterdir())
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture
def no_cached_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_no_arguments_runs_the_seed_scenario(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_cached_weights: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["extract"]) == 0
    printed = capsys.readouterr().out
    assert "using random weights (seed 0" in printed
    assert "download https://download.pytorch.org/models/resnet18-f37072fd.pth" in printed

    torch.manual_seed(0)  # what random weights (seed 0) mean
    model = resnet18(weights=None).eval()
    with torch.no_grad():
        logits, calls = reference(model, SEED_LAYERS, sample_batch())
    expected = {**{p: calls[p][0] for p in SEED_LAYERS}, "logits": logits}
    features = featwrap.load_features(tmp_path / "features")
    assert list(features) == [*SEED_LAYERS, "logits"]
    assert features.ids == sorted(p.name for p in sample_dir().iterdir())
    for key, value in expected.items():
        assert torch.equal(features[key], value), key

    table = [line.split() for line in printed.splitlines() if line.split()[:1] in (["layer"], *([k] for k in expected))]  # fmt: skip
    assert table[0] == ["layer", "shape", "dtype", "mean", "std"]
    for row, (key, value) in zip(table[1:], expected.items(), strict=True):
        assert row[0] == key
        assert "".join(row[1:-3]) == str(tuple(value.shape)).replace(" ", "")
        assert row[-3] == "float32"
        assert float(row[-2]) == pytest.approx(value.double().mean().item(), rel=1e-3, abs=1e-6)
        assert float(row[-1]) == pytest.approx(value.double().std().item(), rel=1e-3)

    manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
    assert manifest["model"] == "torchvision:resnet18"
    assert manifest["weights"] == "none (random, seed 0)"
    assert manifest["pretrained"] is False
    assert "CenterCrop(size=(224, 224))" in manifest["transform"]

    stamp = (tmp_path / "features" / "features.safetensors").stat().st_mtime_ns
    assert main(["extract", "--quiet"]) == 0  # complete already: nothing is computed again
    assert (tmp_path / "features" / "features.safetensors").stat().st_mtime_ns == stamp


def test_cached_pretrained_weights_are_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_cached_weights: Path
) -> None:
    torch.manual_seed(7)
    trained = resnet18(weights=None).eval()
    checkpoints = no_cached_weights / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(trained.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    out = tmp_path / "out"
    argv = ["extract", "--layers", "avgpool", "--image-size", "32", "--out", str(out)]
    assert main(argv) == 0
    assert "random" not in capsys.readouterr().out
    features = featwrap.load_features(out)
    assert features.manifest["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert features.manifest["pretrained"] is True
    with torch.no_grad():
        _, calls = reference(trained, ["avgpool"], sample_batch(32))
    assert torch.equal(features["avgpool"], calls["avgpool"][0])


def test_pool_and_dtype_flags(tmp_path: Path, no_cached_weights: Path) -> None:
    out = tmp_path / "out"
    argv = ["extract", "--layers", "layer1,avgpool,logits", "--pool", "avg,logits=none",
            "--dtype", "float16", "--image-size", "32", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    with torch.no_grad():
        logits, calls = reference(model, ["layer1", "avgpool"], sample_batch(32))
    features = featwrap.load_features(out)
    assert torch.equal(features["layer1"], calls["layer1"][0].mean(dim=(2, 3)).half())
    assert torch.equal(features["avgpool"], calls["avgpool"][0].flatten(1).half())
    assert torch.equal(features["logits"], logits.half())


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"featwrap {argv[0]}: error: ")
    return err


def test_bad_input_one_clear_line_exit_2_nothing_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_cached_weights: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "d.png"):
        Image.new("RGB", (12, 12), (40, 90, 200)).save(images / name)
    (images / "c.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    tiny = ["--model", "torch.nn:Identity", "--layers", "logits", "--image-size", "8",
            "--shard-size", "1", "--batch-size", "1", "--num-workers", "0", "--quiet"]  # fmt: skip

    err = one_error_line(capsys, "extract", "--data", str(images), "--out", str(out), *tiny)
    assert "Cannot read sample 'c.png' (index 2)" in err
    assert "--on-error skip" in err
    kept = digest(out)
    assert [p for p in kept if p.endswith(".json") and "shards" in p] == [
        ".featwrap-run/shards/000000.json",
        ".featwrap-run/shards/000001.json",
    ]
    for argv, message in [
        (["--data", str(tmp_path / "nowhere")], "'.*nowhere' does not exist"),
        (["--data", str(tmp_path / "empty")], "holds no images \\(it is empty\\)"),
        (["--model", "torchvision:resnet19", "--data", str(images)], "Did you mean 'torchvision:resnet18'"),
        (["--layers", "maxpol", "--model", "torchvision:resnet18", "--data", str(images)], "Did you mean 'maxpool'"),
        (["--pool", "avgg", "--data", str(images)], "Did you mean 'avg'"),
    ]:  # fmt: skip
        (tmp_path / "empty").mkdir(exist_ok=True)
        model = [] if "--model" in argv else ["--model", "torch.nn:Identity"]
        layers = [] if "--layers" in argv else ["--layers", "logits"]
        err = one_error_line(capsys, "extract", "--out", str(out), *model, *layers, *argv)
        assert re.search(message, err), err
        assert digest(out) == kept  # nothing already written is lost or changed

    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    err = one_error_line(
        capsys, "extract", "--data", str(images), "--out", str(a_file / "sub"), *tiny
    )
    assert "Cannot write to the output directory" in err
    assert "--out" in err
    assert a_file.read_text() == "keep me"

    assert (
        main(["extract", "--data", str(images), "--out", str(out), "--on-error", "skip", *tiny])
        == 0
    )
    features = featwrap.load_features(out)
    assert features.ids == ["a.png", "b.png", "d.png"]
    assert [s["id"] for s in features.manifest["skipped"]] == ["c.png"]


def test_cached_timm_weights_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    from featwrap.hub import load_model_cached

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    model, note = load_model_cached("timm:resnet18")
    assert model.pretrained is False
    assert note is not None
    assert "timm/resnet18.a1_in1k" in note
    assert "random weights (seed 0" in note

    torch.manual_seed(5)
    trained = timm.create_model("resnet18", pretrained=False)
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(trained.state_dict(), str(snapshot / "model.safetensors"))
    model, note = load_model_cached("timm:resnet18")
    assert note is None
    assert model.pretrained is True
    assert model.weights.startswith("pretrained (")
    assert "model.safetensors" in model.weights
    for key, value in trained.state_dict().items():
        assert torch.equal(model.model.state_dict()[key], value), key
    assert not model.model.training

"""hf: model names: a save_pretrained folder and a fake Hugging Face cache (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import huggingface_hub.constants
import transformers as T

from featwrap import stages
from featwrap.cli import main as cli_main
from featwrap.errors import FeatwrapValueError
from featwrap.hub import (
    UnknownModelError,
    WeightsUnavailableError,
    load_model,
    load_model_noted,
)
from tests.hf_models import VIT


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny ViT classifier saved with save_pretrained, and the model itself."""
    torch.manual_seed(1)
    model = T.ViTForImageClassification(T.ViTConfig(**VIT, num_labels=5)).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    model.save_pretrained(folder)
    return folder, model


def test_folder_pretrained(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, model = saved
    loaded = load_model(f"hf:{folder}", weights="pretrained")
    assert type(loaded.model) is T.ViTForImageClassification  # the config's architecture
    assert loaded.pretrained
    assert not loaded.model.training
    assert loaded.name == f"hf:{folder}"
    assert _same_weights(loaded.model, model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, model(x).logits)


def test_folder_random_weights_are_seeded(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, model = saved
    first, again = load_model(f"hf:{folder}"), load_model(f"hf:{folder}", weights=None)
    assert not first.pretrained
    assert "seed 0" in first.weights
    assert _same_weights(first.model, again.model)
    assert not _same_weights(first.model, model)


def test_auto_weights_and_checkpoint_file(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, model = saved
    loaded, note = load_model_noted(f"hf:{folder}", "auto")
    assert note is None
    assert _same_weights(loaded.model, model)
    config_only = tmp_path / "config-only"
    model.config.save_pretrained(config_only)
    loaded, note = load_model_noted(f"hf:{config_only}", "auto")
    assert not loaded.pretrained
    assert note is not None
    assert "config-only" in note
    assert "random weights (seed 0" in note
    with pytest.raises(WeightsUnavailableError, match=r"no weights in .*config-only.*'none'"):
        load_model(f"hf:{config_only}", weights="pretrained")
    checkpoint = tmp_path / "weights.pt"
    torch.save(model.state_dict(), checkpoint)
    loaded = load_model(f"hf:{config_only}", weights=str(checkpoint))
    assert loaded.pretrained
    assert _same_weights(loaded.model, model)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(FeatwrapValueError, match=r"has no config.json.*save_pretrained"):
        load_model(f"hf:{tmp_path}")
    with pytest.raises(FeatwrapValueError, match="pretrained"):
        load_model("hf:", weights="none")


def _fake_cache(root: Path, repo: str, model: torch.nn.Module, weights: bool = True) -> None:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/...}."""
    entry = root / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)
    snapshot = entry / "snapshots" / revision
    if weights:
        model.save_pretrained(snapshot)
    else:
        model.config.save_pretrained(snapshot)


def test_cached_model(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = saved
    _fake_cache(tmp_path, "someone/tiny-vit", model)
    _fake_cache(tmp_path, "someone/config-only", model, weights=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = load_model("hf:someone/tiny-vit", weights="pretrained")
    assert loaded.pretrained
    assert _same_weights(loaded.model, model)
    assert str(tmp_path) in loaded.weights
    loaded, note = load_model_noted("hf:someone/config-only", "auto")
    assert not loaded.pretrained
    assert note is not None
    assert type(loaded.model) is T.ViTForImageClassification
    with pytest.raises(UnknownModelError, match=r"'someone/absent'.*never downloads"):
        load_model("hf:someone/absent")


def test_cli_layers_and_stages_of_an_hf_folder(
    saved: tuple[Path, torch.nn.Module], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, model = saved
    assert cli_main(["layers", f"hf:{folder}", "--stages"]) == 0
    table = capsys.readouterr().out
    paths = [s.path for s in stages(model)]  # type: ignore[union-attr]
    rows = [line.split()[0] for line in table.splitlines()[2:] if line.strip()]
    assert rows[: len(paths)] == paths
    assert "(17, 32)" in table  # measured at the config's image size, 32 x 32


def test_cli_extract_with_an_hf_folder(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sample images through a ViT block: the stored rows equal the block's output on the
    same preprocessed batch."""
    from featwrap import load_features

    folder, model = saved
    block = stages(model)[-1].path  # type: ignore[union-attr]
    out = tmp_path / "features"
    args = ["extract", "--model", f"hf:{folder}", "--layers", block, "--out", str(out)]
    assert cli_main([*args, "--quiet", "--num-workers", "0"]) == 0  # 32 px: the config's size
    features = load_features(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == f"hf:{folder}"
    assert "pretrained" in manifest["weights"]
    assert tuple(features[block].shape[1:]) == (17, 32)
    import torchvision.transforms as tv
    from PIL import Image

    from featwrap.assets import sample_dir

    by_hand = tv.Compose(  # resize the short side to 32 * 256 / 224, crop 32, ImageNet stats
        [
            tv.Resize(37),
            tv.CenterCrop(32),
            tv.ToTensor(),
            tv.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    batch = torch.stack(
        [by_hand(Image.open(sample_dir() / i).convert("RGB")) for i in features.ids]
    )
    with torch.no_grad():
        want = model(batch, output_hidden_states=True).hidden_states[-1]  # the last block
    torch.testing.assert_close(features[block], want, atol=1e-5, rtol=1e-5)

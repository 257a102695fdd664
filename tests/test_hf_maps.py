"""FeatureModel(model, stages(model), output_fmt="NCHW") on transformers models: maps equal to
HF's hidden states laid on the grid by hand, and to Swin's reshaped_hidden_states."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from featwrap import FeatureModel, FeatwrapError, stages
from featwrap.hf_stages import token_layouts
from tests.hf_models import BLOCK_MODELS, STAGE_MODELS, TEXT_MODELS, built, text_inputs


def _by_hand(tokens: torch.Tensor, prefix: int, rows: int, cols: int) -> torch.Tensor:
    return tokens[:, prefix:].reshape(tokens.shape[0], rows, cols, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(BLOCK_MODELS))
def test_vit_like_maps_and_prefix_tokens(name: str) -> None:
    build, prefix, patch = BLOCK_MODELS[name]
    model = built(build)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
        fm = FeatureModel(model, stages(model), output_fmt="NCHW", prefix_tokens=True)
        ours = fm(pixel_values=x)
    rows = cols = 32 // patch
    for key, want in zip(fm.layers, theirs, strict=True):
        assert torch.equal(ours[key], _by_hand(want, prefix, rows, cols)), key
        if prefix:
            assert torch.equal(ours[key + ":prefix"], want[:, :prefix])
        else:
            assert key + ":prefix" not in ours
    info = fm.feature_info((3, 32, 32))
    assert info[next(iter(fm.layers))].shape == (32, rows, cols)


@pytest.mark.parametrize("name", ["swin", "swinv2"])
def test_swin_maps_equal_reshaped_hidden_states(name: str) -> None:
    model = built(STAGE_MODELS[name])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        embedded, dims = model.embeddings(x)[:2]
        theirs = model.encoder(
            embedded,
            dims,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
        ).reshaped_hidden_states[1:]
        ours = FeatureModel(model, stages(model), output_key=None, output_fmt="NCHW")(x)
    assert len(ours) == len(theirs)
    for (key, got), want in zip(ours.items(), theirs, strict=True):
        assert torch.equal(got, want), key


@pytest.mark.parametrize("name", ["convnext", "convnextv2"])
def test_convnext_maps_stay_maps(name: str) -> None:
    model = built(STAGE_MODELS[name])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        theirs = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
        ours = FeatureModel(model, stages(model), output_key=None, output_fmt="NCHW")(x)
        nlc = FeatureModel(model, stages(model), output_key=None, output_fmt="NLC")(x)
    for (key, got), want in zip(ours.items(), theirs, strict=True):
        assert torch.equal(got, want), key
        assert torch.equal(nlc[key], want.flatten(2).transpose(1, 2))
    assert {t.reduction for t in token_layouts(model).values()} == {4, 8, 16, 32}


def test_text_tokens_have_no_map() -> None:
    model = built(TEXT_MODELS["bert"])
    with pytest.raises(FeatwrapError, match="no image size"):
        FeatureModel(model, stages(model), output_fmt="NCHW")(**text_inputs())

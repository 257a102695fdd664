"""stages() presets of Hugging Face transformers models, against HF's own output_hidden_states.

Maps are made by hand here (prefix tokens dropped, tokens laid on the grid of token_layouts) and
compared with HF's hidden states laid out the same way, or with its reshaped_hidden_states (Swin).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from featwrap import Capture, FeatureModel, FeatwrapError, stages
from featwrap.hf_stages import TokenLayout, hidden_state, token_layouts
from tests.hf_models import BLOCK_MODELS, STAGE_MODELS, TEXT_MODELS, built, text_inputs


def _map(tokens: torch.Tensor, layout: TokenLayout, height: int, width: int) -> torch.Tensor:
    """Tokens (B, prefix + h*w, C) as a map (B, C, h, w), written out by hand."""
    rows, cols = layout.grid(height, width)
    patches = tokens[:, layout.prefix_tokens :]
    assert patches.shape[1] == rows * cols, (tokens.shape, layout, rows, cols)
    return patches.reshape(tokens.shape[0], rows, cols, -1).permute(0, 3, 1, 2)


def _features(model: torch.nn.Module, layers: object, **inputs: torch.Tensor) -> dict:
    with torch.no_grad():
        return FeatureModel(model, layers, output_key=None)(**inputs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(BLOCK_MODELS))
def test_vit_like_blocks_equal_hidden_states(name: str) -> None:
    build, prefix, patch = BLOCK_MODELS[name]
    model = built(build)
    found = stages(model)
    assert all(isinstance(s, Capture) and s.select is hidden_state for s in found)
    assert len(found) == model.config.num_hidden_layers
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
    ours = _features(model, found, pixel_values=x)
    layouts = token_layouts(model)
    assert list(layouts) == list(ours)
    for (key, got), want in zip(ours.items(), theirs, strict=True):
        assert torch.equal(got, want), key
        assert layouts[key] == TokenLayout("NLC", prefix_tokens=prefix, reduction=patch)
        assert got.shape[1] == prefix + (32 // patch) ** 2
        assert torch.equal(_map(got, layouts[key], 32, 32), _map(want, layouts[key], 32, 32))


def test_vit_prefix_tokens_are_the_class_token_and_registers() -> None:
    """Independent of featwrap's table: the first prefix_tokens tokens of the embeddings are the
    learned class and register tokens (no patch content), the rest are the patch projection."""
    build, prefix, _ = BLOCK_MODELS["dinov2_with_registers"]
    model = built(build)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embedded = model(pixel_values=x, output_hidden_states=True).hidden_states[0]
        other = model(pixel_values=x + 1, output_hidden_states=True).hidden_states[0]
    layout = token_layouts(model)[stages(model)[0].path]  # type: ignore[union-attr]
    assert layout.prefix_tokens == prefix == 5
    assert torch.equal(embedded[:, :prefix], other[:, :prefix])  # independent of the image
    assert not torch.equal(embedded[:, prefix], other[:, prefix])  # the first patch token


@pytest.mark.parametrize("name", ["swin", "swinv2"])
@pytest.mark.parametrize("size", [(64, 64), (60, 50)])  # 60 x 50: padded to whole patches
def test_swin_stages_equal_reshaped_hidden_states(name: str, size: tuple[int, int]) -> None:
    model = built(STAGE_MODELS[name])
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        if name == "swin":
            out = model(
                pixel_values=x,
                output_hidden_states=True,
                output_hidden_states_before_downsampling=True,
            )
        else:  # Swinv2Model does not pass the flag on to its encoder: call the encoder
            embedded, dims = model.embeddings(x)[:2]
            out = model.encoder(
                embedded,
                dims,
                output_hidden_states=True,
                output_hidden_states_before_downsampling=True,
            )
    theirs = out.reshaped_hidden_states[1:]  # [0] is the patch embedding
    found = stages(model)
    ours = _features(model, found, pixel_values=x)
    layouts = token_layouts(model)
    assert [m.reduction for m in layouts.values()] == [4, 8, 16]
    assert len(ours) == len(theirs) == 3
    for (key, got), want in zip(ours.items(), theirs, strict=True):
        assert got.dim() == 3  # tokens (B, h*w, C)
        assert torch.equal(_map(got, layouts[key], *size), want), key


@pytest.mark.parametrize("name", ["convnext", "convnextv2"])
def test_convnext_stages_equal_hidden_states(name: str) -> None:
    model = built(STAGE_MODELS[name])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        theirs = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
    ours = _features(model, stages(model), pixel_values=x)
    layouts = token_layouts(model)
    for (key, got), want in zip(ours.items(), theirs, strict=True):
        assert torch.equal(got, want), key
        assert got.shape[-2:] == layouts[key].grid(64, 64)
    assert [m.reduction for m in layouts.values()] == [4, 8, 16, 32]
    assert {m.layout for m in layouts.values()} == {"NCHW"}


@pytest.mark.parametrize("name", list(TEXT_MODELS))
def test_text_stacks_equal_hidden_states(name: str) -> None:
    """Every layer of BERT, RoBERTa, GPT-2: hidden_states[1:] (GPT-2's last one has ln_f on)."""
    model = built(TEXT_MODELS[name])
    inputs = text_inputs()
    with torch.no_grad():
        theirs = list(model(**inputs, output_hidden_states=True).hidden_states[1:])
    layers: list[str | Capture] = stages(model)
    if name == "gpt2":
        layers.append("ln_f")  # hidden_states[-1] is ln_f of the last block
        theirs.insert(-1, None)  # type: ignore[arg-type]
    ours = _features(model, layers, **inputs)
    assert len(ours) == len(theirs)
    for (key, got), want in zip(ours.items(), theirs, strict=True):
        if want is not None:
            assert torch.equal(got, want), key
    assert set(token_layouts(model).values()) == {TokenLayout("NLC", 0, None)}


def test_text_paths_are_the_usual_ones() -> None:
    assert [s.path for s in stages(built(TEXT_MODELS["gpt2"]))] == ["h.0", "h.1", "h.2"]  # type: ignore[union-attr]
    bert = built(TEXT_MODELS["bert"])
    assert [s.path for s in stages(bert, out_indices=(0, -1))] == [  # type: ignore[union-attr]
        "encoder.layer.0",
        "encoder.layer.2",
    ]


def test_hidden_state_selector_takes_tuples_and_tensors() -> None:
    """Blocks return (hidden, ...) tuples in some transformers versions, tensors in others."""
    x = torch.randn(2, 3)
    assert hidden_state(x) is x
    assert hidden_state((x,)) is x
    assert hidden_state((x, torch.zeros(1))) is x


def test_grid_of_text_tokens_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"text tokens .* 7 x 1 pixels .*as they are"):
        TokenLayout("NLC", 0, None).grid(7, 1)


def test_model_type_without_preset() -> None:
    import transformers as T

    model = T.CLIPModel(
        T.CLIPConfig(
            text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
            vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        )
    )
    with pytest.raises(FeatwrapError, match=r"model_type 'clip'.*pass model.vision_model"):
        stages(model)
    with pytest.raises(ValueError, match="no preset"):
        token_layouts(model)
    assert [s.path for s in stages(model.vision_model)]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["vit", "dinov2"])
def test_other_input_sizes_follow_the_grid(name: str) -> None:
    """48 x 40 images (position embeddings interpolated): the grid of token_layouts fits."""
    build, prefix, patch = BLOCK_MODELS[name]
    model = built(build)
    x = torch.randn(1, 3, 48, 40)
    extra = {"interpolate_pos_encoding": True} if name == "vit" else {}
    with torch.no_grad():
        theirs = model(pixel_values=x, output_hidden_states=True, **extra).hidden_states[-1]
    last = stages(model)[-1]
    got = _features(model, [last], pixel_values=x, **extra)[last.path]  # type: ignore[union-attr]
    layout = token_layouts(model)[last.path]  # type: ignore[union-attr]
    assert layout.grid(48, 40) == (48 // patch, 40 // patch)
    assert got.shape[1] == prefix + (48 // patch) * (40 // patch)
    assert torch.equal(_map(got, layout, 48, 40), _map(theirs, layout, 48, 40))

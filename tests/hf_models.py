"""Small Hugging Face ``transformers`` models built from configs (no download), for tests/test_hf*.

Import only from test modules that have checked ``pytest.importorskip("transformers")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as T
from torch import nn

VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
SWIN = {"embed_dim": 16, "depths": [1, 2, 1], "num_heads": [1, 2, 4], "window_size": 4}


#: name -> (builder, prefix tokens, patch size); every vision model takes 32 x 32 images
BLOCK_MODELS: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    "vit": (lambda: T.ViTModel(T.ViTConfig(**VIT)), 1, 8),
    "deit": (lambda: T.DeiTModel(T.DeiTConfig(**VIT)), 2, 8),
    "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(**VIT)), 1, 8),
    "dinov2_with_registers": (
        lambda: T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(**VIT, num_register_tokens=4)
        ),
        5,
        8,
    ),
    "clip_vision": (lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**VIT)), 1, 8),
    "siglip_vision": (lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**VIT)), 0, 8),
}

#: name -> builder of a hierarchical model (stride 4 first stage on 32 x 32 images)
STAGE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "swin": lambda: T.SwinModel(T.SwinConfig(**SWIN, image_size=64, patch_size=4)),
    "swinv2": lambda: T.Swinv2Model(T.Swinv2Config(**SWIN, image_size=64, patch_size=4)),
    "convnext": lambda: T.ConvNextModel(
        T.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 2, 1, 1])
    ),
    "convnextv2": lambda: T.ConvNextV2Model(
        T.ConvNextV2Config(hidden_sizes=[8, 16, 32, 64], depths=[1, 2, 1, 1])
    ),
}


def bert() -> nn.Module:
    return T.BertModel(
        T.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    )


def roberta() -> nn.Module:
    return T.RobertaModel(
        T.RobertaConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=40,
            pad_token_id=1,
        )
    )


def gpt2() -> nn.Module:
    return T.GPT2Model(
        T.GPT2Config(
            vocab_size=100,
            n_embd=32,
            n_layer=3,
            n_head=2,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


TEXT_MODELS: dict[str, Callable[[], nn.Module]] = {"bert": bert, "roberta": roberta, "gpt2": gpt2}


def built(build: Callable[[], nn.Module]) -> Any:
    """The model in eval mode, with seeded weights."""
    torch.manual_seed(0)
    return build().eval()


def text_inputs(batch: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    """Token ids (from 2: RoBERTa's padding id is 1) and an attention mask with padding."""
    ids = torch.randint(2, 100, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}

"""Activation patching and a steering vector on a small GPT-2-style model.

Activation patching (causal tracing): run a corrupted prompt, but put back
the clean run's residual stream at one layer and one position; how much of
the clean answer comes back says where the model carries the information.
A steering vector (activation addition): the difference of the residual
stream between two prompts, added at one layer to every position of a run,
shifts what the model says next.

Both write activations with ``fm.edit``: a function of the value (patch one
position, add a vector), applied in this thread for the forwards inside the
``with`` block; the rest of the model runs on the edited value.

Run it: ``uv run python examples/patching_and_steering.py`` (a randomly
initialized model from a config: the numbers mean nothing, the code is what
you run on a trained GPT-2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from featwrap import FeatureModel


@dataclass
class GPTConfig:
    vocab_size: int = 64
    n_positions: int = 32
    d_model: int = 32
    n_head: int = 4
    n_layer: int = 3


class Attention(nn.Module):
    """Causal multi-head self-attention."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (
            z.view(b, t, self.n_head, -1).transpose(1, 2) for z in (q, k, v)
        )
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Token and position embeddings, blocks ``h.0`` ... ``h.{n-1}``,
    final LayerNorm, LM head: GPT-2's layout, built from a config."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1])
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def residual_model(model: TinyGPT) -> FeatureModel:
    """A FeatureModel of the residual stream after each block."""
    blocks = [f"h.{i}" for i in range(len(model.h))]
    return FeatureModel(model, blocks, repeats="error")


def patching_effects(
    fm: FeatureModel,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    answer: int,
    wrong: int,
) -> torch.Tensor:
    """Logit difference ``answer - wrong`` at the last position of the
    corrupted run, with the clean residual stream patched in at each
    (layer, position): a tensor (layers, positions)."""
    with torch.no_grad():
        saved = fm(clean)
        effects = torch.zeros(len(fm.layers), clean.shape[1])
        for i, layer in enumerate(fm.layers):
            for pos in range(clean.shape[1]):
                mask = torch.zeros(1, clean.shape[1], 1, dtype=torch.bool)
                mask[:, pos] = True
                patch = _patch(mask, saved[layer])
                with fm.edit({layer: patch}):
                    logits = fm(corrupt)["logits"][0, -1]
                effects[i, pos] = logits[answer] - logits[wrong]
    return effects


def _patch(
    mask: torch.Tensor, value: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function putting ``value`` where ``mask`` is set."""
    return lambda x: torch.where(mask, value, x)


def steering_vector(
    fm: FeatureModel, layer: str, plus: torch.Tensor, minus: torch.Tensor
) -> torch.Tensor:
    """The residual stream at ``layer`` for ``plus`` minus that for
    ``minus``, at the last position (a vector of size d_model)."""
    with torch.no_grad():
        return fm(plus)[layer][0, -1] - fm(minus)[layer][0, -1]


def generate(
    fm: FeatureModel,
    tokens: torch.Tensor,
    steps: int,
    steer: tuple[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Greedy continuation of ``tokens`` (1, t) by ``steps`` tokens; with
    ``steer=(layer, vector)`` the vector is added at every position."""
    edits = {}
    if steer is not None:
        layer, vector = steer
        edits[layer] = lambda x: x + vector
    with torch.no_grad(), fm.edit(edits):
        for _ in range(steps):
            logits = fm(tokens)["logits"][:, -1]
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], 1)
    return tokens


def main(steps: int = 8) -> torch.Tensor:
    """Patch a corrupted prompt, then steer a generation."""
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig()).eval()
    fm = residual_model(model)
    clean = torch.randint(0, 64, (1, 8))
    corrupt = clean.clone()
    corrupt[0, -1] = (clean[0, -1] + 1) % 64  # the last token changed
    answer = int(fm(clean)["logits"][0, -1].argmax())
    wrong = int(fm(corrupt)["logits"][0, -1].argmax())
    effects = patching_effects(fm, clean, corrupt, answer, wrong)
    print("logit difference with the clean stream patched in")
    print("(rows: layers, columns: positions):")
    print(effects.numpy().round(2))
    vector = steering_vector(fm, "h.1", clean, corrupt)
    plain = generate(fm, clean, steps)
    steered = generate(fm, clean, steps, ("h.1", 4 * vector))
    print("plain:  ", plain[0, 8:].tolist())
    print("steered:", steered[0, 8:].tolist())
    return effects


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    main(parser.parse_args().steps)

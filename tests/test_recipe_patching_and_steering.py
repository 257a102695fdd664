"""Recipe: activation patching and a steering vector (examples/patching_and_steering.py), each
equal to a hand-written computation that runs the model's blocks one by one (no hooks)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tests.examples import load_example

recipe = load_example("patching_and_steering")
Edit = Callable[[torch.Tensor], torch.Tensor]


def by_hand(
    model: torch.nn.Module, tokens: torch.Tensor, after: dict[int, Edit] | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model's forward written out, with ``after[i]`` applied to the residual stream after
    block i; the logits and every block's (edited) residual stream."""
    after = after or {}
    x = model.wte(tokens) + model.wpe(torch.arange(tokens.shape[1]))
    stream = []
    for i, block in enumerate(model.h):
        x = block(x)
        if i in after:
            x = after[i](x)
        stream.append(x)
    return model.lm_head(model.ln_f(x)), stream


def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = recipe.TinyGPT(recipe.GPTConfig(n_layer=3)).eval()
    clean = torch.randint(0, 64, (1, 6))
    corrupt = clean.clone()
    corrupt[0, 1] = (clean[0, 1] + 7) % 64
    return model, clean, corrupt


def test_residual_stream_is_each_block_output() -> None:
    model, clean, _ = setup()
    out = recipe.residual_model(model)(clean)
    with torch.no_grad():
        logits, stream = by_hand(model, clean)
    assert torch.equal(out["logits"], logits)
    for i, value in enumerate(stream):
        assert torch.equal(out[f"h.{i}"], value)


def test_patching_effects_equal_hand_written_patching() -> None:
    model, clean, corrupt = setup()
    answer, wrong = 5, 9
    fm = recipe.residual_model(model)
    effects = recipe.patching_effects(fm, clean, corrupt, answer, wrong)
    expected = torch.zeros(3, clean.shape[1])
    with torch.no_grad():
        _, saved = by_hand(model, clean)
        for i in range(3):
            for pos in range(clean.shape[1]):

                def put_back(x: torch.Tensor, i: int = i, pos: int = pos) -> torch.Tensor:
                    x = x.clone()
                    x[:, pos] = saved[i][:, pos]
                    return x

                logits, _ = by_hand(model, corrupt, {i: put_back})
                expected[i, pos] = logits[0, -1, answer] - logits[0, -1, wrong]
    torch.testing.assert_close(effects, expected, rtol=0, atol=1e-6)
    # the last block's stream at the last position decides the last logits: the clean answer
    clean_logits, _ = by_hand(model, clean)
    clean_diff = clean_logits[0, -1, answer] - clean_logits[0, -1, wrong]
    torch.testing.assert_close(effects[-1, -1], clean_diff.detach())
    assert not torch.allclose(effects[0, 0], effects[0, 1])  # the corrupted position matters


def test_steering_equals_hand_written_addition() -> None:
    model, clean, corrupt = setup()
    fm = recipe.residual_model(model)
    vector = recipe.steering_vector(fm, "h.1", clean, corrupt)
    with torch.no_grad():
        _, plus = by_hand(model, clean)
        _, minus = by_hand(model, corrupt)
        expected_vector = plus[1][0, -1] - minus[1][0, -1]
        torch.testing.assert_close(vector, expected_vector, rtol=0, atol=0)
        tokens = clean
        for _ in range(6):
            logits, _ = by_hand(model, tokens, {1: lambda x: x + 3 * expected_vector})
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
    steered = recipe.generate(fm, clean, 6, ("h.1", 3 * vector))
    assert torch.equal(steered, tokens)
    plain = recipe.generate(fm, clean, 6)  # no edit outside the steered generation
    with torch.no_grad():
        tokens = clean
        for _ in range(6):
            logits, _ = by_hand(model, tokens)
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(plain, tokens)
    assert not torch.equal(plain, steered)


def test_main_runs() -> None:
    effects = recipe.main(steps=2)
    assert effects.shape == (3, 8)

"""Keyword inputs (input_ids=, attention_mask=, pixel_values=) with every FeatureModel option, on
transformers models built from configs; references: HF's output_hidden_states and hand-written
cloning hooks (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import transformers as T

from featwrap import (
    Capture,
    FeatureModel,
    MissingFeatureError,
    RepeatedCallError,
    feature_info,
    stages,
    summary,
)
from featwrap.hf_stages import hidden_state
from tests.hf_models import BLOCK_MODELS, TEXT_MODELS, built, text_inputs
from tests.reference import reference


@pytest.mark.parametrize("detach", [False, True])
def test_keyword_inputs_with_detach(detach: bool) -> None:
    model = built(TEXT_MODELS["bert"])
    inputs = text_inputs()
    theirs = model(**inputs, output_hidden_states=True).hidden_states[1:]
    fm = FeatureModel(model, stages(model), detach=detach)
    ours = fm(**inputs)
    assert torch.equal(ours["logits"].last_hidden_state, model(**inputs).last_hidden_state)
    for key, want in zip(fm.layers, theirs, strict=True):
        assert torch.equal(ours[key], want)
        assert ours[key].requires_grad is not detach
    if not detach:
        ours[next(iter(fm.layers))].sum().backward()
        assert model.embeddings.word_embeddings.weight.grad is not None


def test_positional_and_keyword_pixel_values_agree() -> None:
    model = built(BLOCK_MODELS["vit"][0])
    x = torch.randn(2, 3, 32, 32)
    fm = FeatureModel(model, stages(model), output_key=None)
    with torch.no_grad():
        by_name, by_position = fm(pixel_values=x), fm(x)
        theirs = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
    for got, again, want in zip(by_name.values(), by_position.values(), theirs, strict=True):
        assert torch.equal(got, want)
        assert torch.equal(again, want)


def _tied_gpt2() -> torch.nn.Module:
    """GPT-2 whose 3 layers are one shared block (ALBERT-style): h.0 runs three times."""
    model = built(TEXT_MODELS["gpt2"])
    model.h[1] = model.h[2] = model.h[0]
    return model


@pytest.mark.parametrize("repeats", ["all", "first", "last"])
def test_repeats_on_a_shared_block(repeats: str) -> None:
    model = _tied_gpt2()
    inputs = {**text_inputs(), "use_cache": False}
    with torch.no_grad():
        theirs = model(**inputs, output_hidden_states=True).hidden_states
        ours = FeatureModel(model, Capture("h.0", select=hidden_state), repeats=repeats)(**inputs)
    calls = list(theirs[1:3])  # the third call's output is followed by ln_f in hidden_states
    with torch.no_grad():
        _, ref = reference(model, ["h.0"], **inputs)
    calls.append(hidden_state(ref["h.0"][2]))
    want = {"all": calls, "first": calls[0], "last": calls[-1]}[repeats]
    if repeats == "all":
        assert len(ours["h.0"]) == 3
        for got, expected in zip(ours["h.0"], want, strict=True):
            assert torch.equal(got, expected)
    else:
        assert torch.equal(ours["h.0"], want)


def test_repeats_error_names_the_shared_block() -> None:
    model = _tied_gpt2()
    fm = FeatureModel(model, "h.0", repeats="error")
    with pytest.raises(RepeatedCallError, match=r"'h.0' ran 2 times.*repeats='last'"):
        fm(**text_inputs(), use_cache=False)


def _bert_decoder() -> torch.nn.Module:
    config = T.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        is_decoder=True,
        add_cross_attention=True,
    )
    torch.manual_seed(0)
    return T.BertModel(config).eval()


@pytest.mark.parametrize("missing", ["error", "skip", "none"])
def test_missing_cross_attention_without_encoder_states(missing: str) -> None:
    """A BERT decoder runs its cross-attention only when given encoder_hidden_states."""
    model = _bert_decoder()
    layers = [Capture("encoder.layer.0.crossattention", key="cross", select=0), "encoder.layer.1"]
    fm = FeatureModel(model, layers, missing=missing)
    inputs = text_inputs()
    encoder_states = torch.randn(2, 5, 32)
    with torch.no_grad():
        _, ref = reference(
            model,
            ["encoder.layer.0.crossattention"],
            **inputs,
            encoder_hidden_states=encoder_states,
        )
        full = fm(**inputs, encoder_hidden_states=encoder_states)
    assert torch.equal(full["cross"], ref["encoder.layer.0.crossattention"][0][0])
    if missing == "error":
        with pytest.raises(MissingFeatureError, match=r"'cross' did not run.*missing='skip'"):
            fm(**inputs)
        return
    with torch.no_grad():
        out = fm(**inputs)
    assert ("cross" in out) is (missing == "none")
    assert out.get("cross") is None
    assert torch.equal(out["encoder.layer.1"], model(**inputs).last_hidden_state)


def test_early_stop_with_keyword_inputs() -> None:
    """output_key=None with keyword inputs: the embeddings' dropout (a module without weights
    at the root, which a model may call again) is final at the forward's end by default, and at
    its first call with repeats="first": then the blocks never run. Values are the reference's."""
    model = built(TEXT_MODELS["gpt2"])
    inputs = text_inputs()
    with torch.no_grad():
        _, ref = reference(model, ["drop", "h.0"], **inputs)
    for repeats, blocks_run in (("last", [1]), ("first", [])):
        ran: list[int] = []
        handle = model.h[0].register_forward_hook(lambda *args, ran=ran: ran.append(1))
        try:
            with torch.no_grad():
                fm = FeatureModel(model, ["drop"], output_key=None, repeats=repeats)
                out = fm(**inputs)
        finally:
            handle.remove()
        assert list(out) == ["drop"]
        assert torch.equal(out["drop"], ref["drop"][0])
        assert ran == blocks_run


@pytest.mark.parametrize("name", ["vit", "dinov2"])
def test_early_stop_in_the_block_stack_keeps_values(name: str) -> None:
    """A block inside the encoder's ModuleList with output_key=None: the value is the block's
    (how early the forward ends there is issue 9, item 1)."""
    model = built(BLOCK_MODELS[name][0])
    x = torch.randn(2, 3, 32, 32)
    block = stages(model)[1]
    with torch.no_grad():
        theirs = model(pixel_values=x, output_hidden_states=True).hidden_states[2]
        out = FeatureModel(model, [block], output_key=None)(pixel_values=x)
    assert torch.equal(next(iter(out.values())), theirs)


def test_selectors_on_tuple_outputs_and_keyword_arguments() -> None:
    model = built(TEXT_MODELS["gpt2"])
    inputs = text_inputs()
    layers = [
        Capture("h.0.attn", key="attn", select=0),  # (attn_output, weights[, ...])
        Capture("h.0.attn", key="attn_in", input=True),  # its first positional argument
        Capture("h.1", key="position_ids", input=True, select="position_ids"),  # a keyword one
        Capture("h.1", key="hidden", select=hidden_state),
    ]
    with torch.no_grad():
        ours = FeatureModel(model, layers, output_key=None)(**inputs)
        calls: dict[str, torch.Tensor] = {}

        def note(key: str, pick: object) -> object:
            def hook(module: object, args: tuple, kwargs: dict) -> None:
                calls.setdefault(key, pick(args, kwargs).clone())  # type: ignore[operator]

            return hook

        handles = [
            model.h[0].attn.register_forward_pre_hook(
                note("attn_in", lambda a, k: a[0]), with_kwargs=True
            ),
            model.h[1].register_forward_pre_hook(
                note("position_ids", lambda a, k: k["position_ids"]), with_kwargs=True
            ),
        ]
        try:
            _, ref = reference(model, ["h.0.attn", "h.1"], **inputs)
        finally:
            for h in handles:
                h.remove()
    assert torch.equal(ours["attn"], ref["h.0.attn"][0][0])
    assert torch.equal(ours["attn_in"], calls["attn_in"])
    assert torch.equal(ours["position_ids"], calls["position_ids"])
    assert torch.equal(ours["hidden"], hidden_state(ref["h.1"][0]))


def test_feature_info_and_summary_with_keyword_inputs() -> None:
    """Shapes from a dry run on keyword inputs equal a real forward's (channels of token
    features of token-id inputs are issue 9, item 4)."""
    model = built(TEXT_MODELS["bert"])
    inputs = text_inputs(batch=3, length=9)
    fm = FeatureModel(model, stages(model))
    info = fm.feature_info(inputs=inputs)
    with torch.no_grad():
        real = fm(**inputs)
    for key in fm.layers:
        assert info[key].shape == tuple(real[key].shape[1:]) == (9, 32)
    assert feature_info(model, layers=["encoder.layer.0"], inputs=inputs)[
        "encoder.layer.0"
    ].shape == (9, 32)
    rows = {row.path: row for row in summary(model, inputs=inputs, pattern="encoder.layer.?")}
    for key in fm.layers:  # a tensor, or a (hidden_states, ...) tuple in older transformers
        shapes = rows[key].shapes
        assert (shapes if isinstance(shapes[0], int) else shapes[0]) == (9, 32)
    vit = built(BLOCK_MODELS["vit"][0])
    vit_info = FeatureModel(vit, stages(vit)).feature_info(
        inputs={"pixel_values": torch.randn(1, 3, 32, 32)}
    )
    assert vit_info.channels() == [32, 32, 32]
    assert vit_info.reduction() == [8, 8, 8]


def test_gradient_checkpointing_in_training() -> None:
    """HF's gradient checkpointing (train mode, dropout off): features and their gradients
    equal those of output_hidden_states."""
    model = built(TEXT_MODELS["bert"])
    enable = getattr(model, "activation_checkpointing_enable", None)  # the newer name
    (enable or model.gradient_checkpointing_enable)()
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = text_inputs()
    weight = model.embeddings.word_embeddings.weight
    theirs = model(**inputs, output_hidden_states=True).hidden_states[1:]
    sum((h**2).sum() for h in theirs).backward()
    want = weight.grad.clone()
    weight.grad = None
    fm = FeatureModel(model, stages(model))
    ours = fm(**inputs)
    for key, h in zip(fm.layers, theirs, strict=True):
        assert torch.equal(ours[key], h)
    sum((ours[k] ** 2).sum() for k in fm.layers).backward()
    torch.testing.assert_close(weight.grad, want)
    assert model.training

"""Dict samples and token features: padded batches against each sample run alone, unpadded.

The reference for every row is a separate forward of that one sample, without padding or mask,
recorded by hand-written cloning hooks (tests/reference.py) or by HuggingFace's own
``output_hidden_states``; pooling is computed on it by hand (plain mean/max/index over its tokens).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import featwrap
from featwrap import DataError, extract
from featwrap.errors import FeatwrapError
from tests.reference import reference
from tests.text_models import TextEncoder, Texts, sequences, tiny_bert, tiny_gpt2

SEQS = sequences(11)
BY_HAND = {
    "avg": lambda t: t.mean(0),
    "max": lambda t: t.amax(0),
    "first": lambda t: t[0],
    "last": lambda t: t[-1],
}


@pytest.fixture
def encoder() -> TextEncoder:
    torch.manual_seed(2)
    return TextEncoder().eval()


def alone(model: nn.Module, paths: list[str]) -> list[dict[str, torch.Tensor]]:
    """Each sample's features from its own forward: no padding, no mask."""
    rows = []
    with torch.no_grad():
        for seq in SEQS:
            logits, calls = reference(model, paths, input_ids=seq[None])
            rows.append({"logits": logits[0], **{p: calls[p][-1][0] for p in paths}})
    return rows


def test_lengths_differ_in_every_batch() -> None:
    lengths = [len(s) for s in SEQS]
    assert len(set(lengths)) > 3
    assert all(len(set(lengths[i : i + 4])) > 1 for i in range(0, 8, 4))  # padding happens


@pytest.mark.parametrize("pool", ["avg", "max", "first", "last"])
def test_masked_pooling_against_each_sample_alone(encoder: TextEncoder, pool: str) -> None:
    paths = ["embed", "encoder.layers.0", "encoder.layers.1"]
    features = extract(encoder, Texts(SEQS), [*paths, "logits"], pool=pool, batch_size=4)
    expected = alone(encoder, paths)
    for p in paths:
        assert features[p].shape == (len(SEQS), 16)  # pooled over tokens, not hidden dims
        for i, row in enumerate(expected):
            torch.testing.assert_close(features[p][i], BY_HAND[pool](row[p]), msg=f"{p} {i}")
    for i, row in enumerate(expected):  # the model's own output too: padding changed nothing
        torch.testing.assert_close(features["logits"][i], row["logits"])
    assert features.ids == [str(i) for i in range(len(SEQS))]


@pytest.mark.parametrize("pool", ["avg", "none"])
def test_transformer_fast_path_nested_outputs(pool: str) -> None:
    torch.manual_seed(2)
    fast = TextEncoder(nested=True).eval()
    features = extract(fast, Texts(SEQS), ["encoder.layers.0"], pool=pool, batch_size=4)
    for i, row in enumerate(alone(fast, ["encoder.layers.0"])):
        expected = row["encoder.layers.0"]
        expected = expected if pool == "none" else expected.mean(0)
        torch.testing.assert_close(features["encoder.layers.0"][i], expected)


def test_per_token_rows_in_memory_and_on_disk(encoder: TextEncoder, tmp_path: Path) -> None:
    paths = ["embed", "encoder.layers.1"]
    expected = alone(encoder, paths)
    in_memory = extract(encoder, Texts(SEQS), paths, batch_size=4, shard_size=3)  # same batches
    on_disk = extract(encoder, Texts(SEQS), paths, out=tmp_path, batch_size=4, shard_size=3)
    loaded = featwrap.load_features(tmp_path)
    total = sum(len(s) for s in SEQS)
    for features in (in_memory, on_disk, loaded):
        for p in paths:
            assert features[p].is_nested
            assert len(features[p].unbind()) == len(SEQS)
            assert features[p].values().shape == (total, 16)
            for i, row in enumerate(expected):
                torch.testing.assert_close(features[p][i], row[p])  # (length_i, 16)
    for p in paths:
        assert torch.equal(loaded[p].values(), in_memory[p].values())
    entry = loaded.manifest["layers"]["embed"]
    assert entry["shape"] == [len(SEQS), None, 16]
    assert entry["tokens"] == total
    from safetensors.torch import load_file  # any safetensors reader: tokens and offsets

    plain = load_file(str(tmp_path / "features.safetensors"))
    lengths = plain["embed/offsets"].diff()
    assert lengths.tolist() == [len(s) for s in SEQS]
    assert "pool=" not in loaded.summary()


@pytest.mark.parametrize("pool", ["avg", "last", "none"])
def test_hf_bert_against_hidden_states(pool: str) -> None:
    torch.manual_seed(0)
    bert = tiny_bert()
    layers = ["embeddings", "encoder.layer.0.output", "encoder.layer.1.output"]
    features = extract(bert, Texts(SEQS), layers, pool=pool, batch_size=4)
    with torch.no_grad():
        for i, seq in enumerate(SEQS):
            hidden = bert(input_ids=seq[None], output_hidden_states=True).hidden_states
            for k, layer in enumerate(layers):
                expected = hidden[k][0] if pool == "none" else BY_HAND[pool](hidden[k][0])
                torch.testing.assert_close(features[layer][i], expected, msg=f"{layer} {i}")


@pytest.mark.parametrize("pool", ["avg", "max", "none"])
def test_hf_gpt2_against_hidden_states(pool: str) -> None:
    torch.manual_seed(0)
    gpt2 = tiny_gpt2()
    features = extract(gpt2, Texts(SEQS), ["ln_f"], pool=pool, batch_size=5)
    with torch.no_grad():
        for i, seq in enumerate(SEQS):
            last = gpt2(input_ids=seq[None], output_hidden_states=True).hidden_states[-1][0]
            expected = last if pool == "none" else BY_HAND[pool](last)
            torch.testing.assert_close(features["ln_f"][i], expected)


class Pairs(Dataset[tuple[dict[str, torch.Tensor], int]]):
    """``(dict, target)`` samples, and an explicit attention mask."""

    def __len__(self) -> int:
        return len(SEQS)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        seq = SEQS[i]
        return {"input_ids": seq, "attention_mask": torch.ones_like(seq)}, i % 3


def test_dict_and_target_tuples_and_a_user_collate(encoder: TextEncoder) -> None:
    expected = alone(encoder, ["embed"])
    features = extract(encoder, Pairs(), ["embed"], pool="avg", batch_size=3)
    assert features.manifest["targets"] == [i % 3 for i in range(len(SEQS))]
    for i, row in enumerate(expected):
        torch.testing.assert_close(features["embed"][i], row["embed"].mean(0))

    def left_padded(samples: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
        longest = max(len(s["input_ids"]) for s, _ in samples)
        ids = torch.zeros(len(samples), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (s, _) in enumerate(samples):
            ids[row, longest - len(s["input_ids"]) :] = s["input_ids"]
            mask[row, longest - len(s["input_ids"]) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    loader = DataLoader(Pairs(), batch_size=4, collate_fn=left_padded)
    features = extract(encoder, loader, ["embed"], pool="first")  # left padding: first real token
    for i, seq in enumerate(SEQS):
        torch.testing.assert_close(features["embed"][i], encoder.embed.weight[seq[0]].detach())


class Wrong(Dataset[dict[str, torch.Tensor]]):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": SEQS[i]}


def test_errors_name_the_keys_and_the_way_out(encoder: TextEncoder, tmp_path: Path) -> None:
    message = r"keys \['tokens', 'attention_mask'\] but lacks \['input_ids'\].*TextEncoder"
    with pytest.raises(DataError, match=message):
        extract(encoder, Wrong(), ["embed"])
    with pytest.raises(FeatwrapError, match=r"'flatten' for layer 'embed'.*per token.*'none'"):
        extract(encoder, Texts(SEQS), ["embed"], pool="flatten", out=tmp_path / "out")
    with pytest.raises(ValueError, match=r"pool 'lats' .* Did you mean 'last'"):
        extract(encoder, Texts(SEQS), ["embed"], pool="lats")


def test_vit_style_first_token_without_a_mask() -> None:
    tokens = torch.randn(5, 7, 4)
    features = extract(nn.Identity(), tokens, ["logits"], pool="first", batch_size=2)
    assert torch.equal(features["logits"], tokens[:, 0])

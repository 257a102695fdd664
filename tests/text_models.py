"""Small text data and models for the token extraction tests: a text encoder of our own
(nn.Embedding + nn.TransformerEncoder) and HuggingFace BERT/GPT-2 built from tiny configs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

VOCAB = 40


class TextEncoder(nn.Module):
    """Token ids -> embeddings -> 2 transformer layers (padding masked) -> a class head.

    With ``nested=True``, PyTorch's fast path runs the layers on nested tensors of the real
    tokens (in eval, without grad): the inner layers' outputs are nested tensors."""

    def __init__(self, dim: int = 16, nested: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)
        self.head = nn.Linear(dim, 3)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        padding = None if attention_mask is None else attention_mask == 0
        hidden = self.encoder(self.embed(input_ids), src_key_padding_mask=padding)
        return self.head(hidden[:, 0])


def sequences(n: int, seed: int = 0, low: int = 2, high: int = 9) -> list[torch.Tensor]:
    """``n`` token id sequences of random lengths in ``[low, high)``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=g).tolist()
    return [torch.randint(1, VOCAB, (length,), generator=g) for length in lengths]


class Texts(Dataset[dict[str, Any]]):
    """Samples as a tokenizer gives them: ``{"input_ids", "label"}``, of different lengths."""

    def __init__(self, seqs: list[torch.Tensor]) -> None:
        self.seqs = seqs

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.seqs[i], "label": i % 2}


class TextStream(IterableDataset[dict[str, Any]]):
    """The same samples as a stream, with webdataset-style ``__key__``s."""

    def __init__(
        self,
        seqs: list[torch.Tensor],
        stop: int | None = None,
        name: str = "text",
        length: int | None = None,
    ) -> None:
        self.seqs, self.stop, self.name, self.length = seqs, stop, name, length

    def __iter__(self) -> Any:
        for i, seq in enumerate(self.seqs[: self.stop]):
            yield {"__key__": f"{self.name}{i:03d}", "input_ids": seq}

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("a stream without a length (pass length=)")
        return self.length


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, pad_token_id=0,
    )  # fmt: skip
    return BertModel(config).eval()


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32,
        bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    return GPT2Model(config).eval()


#: the indices :func:`decode` turned into samples in this process, in order
DECODED: list[int] = []


def decode(item: tuple[int, torch.Tensor]) -> dict[str, Any]:
    """A sample of :func:`text_pipe`, noted in :data:`DECODED` (the costly step of a pipeline)."""
    index, seq = item
    DECODED.append(index)
    return {"__key__": f"text{index:03d}", "input_ids": seq}


def text_pipe(seqs: list[torch.Tensor]) -> Any:
    """The samples of :class:`TextStream` as a DataPipe that splits itself between ranks: the
    ``sharding_filter()`` comes before the decoding, so each rank decodes only its part."""
    from torch.utils.data.datapipes.iter import IterableWrapper

    return IterableWrapper(list(enumerate(seqs))).sharding_filter().map(decode)

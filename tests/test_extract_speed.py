"""The speed options (autocast, channels_last, pinned memory, torch.compile) give what the same
settings give in a hand-written loop: the reference runs the model itself, under the same
autocast, with cloning hooks (tests/reference.py). CUDA tests are marked ``cuda`` and skipped
without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from featwrap import ResumeMismatchError, extract
from tests.reference import reference
from tests.text_models import TextEncoder, Texts, sequences

no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
N, BATCH = 10, 4


def make_net() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(N, 3, 14, 14, generator=torch.Generator().manual_seed(1))


def by_hand(
    net: nn.Module,
    images: torch.Tensor,
    autocast: torch.dtype | None = None,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """The same batches through the model, in a plain loop with the same settings."""
    rows: dict[str, list[torch.Tensor]] = {"1": [], "3": [], "logits": []}
    with torch.no_grad():
        for a in range(0, N, BATCH):
            x = images[a : a + BATCH].to(device)
            with torch.autocast(device, dtype=autocast or torch.float32, enabled=bool(autocast)):
                out, calls = reference(net, ["1", "3"], x)
            rows["1"].append(calls["1"][-1].cpu())
            rows["3"].append(calls["3"][-1].cpu())
            rows["logits"].append(out.cpu())
    return {k: torch.cat(v) for k, v in rows.items()}


@pytest.mark.parametrize("autocast", ["bfloat16", "float16"])
def test_autocast_on_cpu(images: torch.Tensor, autocast: str, tmp_path: Path) -> None:
    net, dtype = make_net(), getattr(torch, autocast)
    expected = by_hand(net, images, dtype)
    assert expected["3"].dtype == dtype  # the convolution ran in the low precision
    for out in (None, tmp_path / "out"):
        features = extract(
            net, TensorDataset(images), ["1", "3", "logits"], out=out, batch_size=BATCH,
            autocast=autocast, num_workers=0,
        )  # fmt: skip
        for key, value in expected.items():
            assert torch.equal(features[key], value), key
    assert features.manifest["run"]["autocast"] == autocast
    with pytest.raises(ResumeMismatchError, match=r"autocast: '.*' -> None"):
        extract(net, TensorDataset(images), ["1", "3", "logits"], out=tmp_path / "out")


def test_autocast_on_tokens() -> None:
    torch.manual_seed(2)
    encoder, seqs = TextEncoder().eval(), sequences(6)
    features = extract(encoder, Texts(seqs), ["embed", "logits"], pool="avg", autocast="bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i, seq in enumerate(seqs):
            logits, calls = reference(encoder, ["embed"], input_ids=seq[None])
            torch.testing.assert_close(features["embed"][i], calls["embed"][0][0].mean(0))
            assert features["logits"].dtype == torch.bfloat16
            torch.testing.assert_close(features["logits"][i], logits[0], atol=0.05, rtol=0.05)


def test_channels_last_and_pinned_memory_on_cpu(images: torch.Tensor) -> None:
    net = make_net()
    expected = by_hand(net, images)
    net[0].weight.data = net[0].weight.data.contiguous(memory_format=torch.channels_last)
    formats: list[bool] = []
    hook = net[3].register_forward_pre_hook(
        lambda m, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    features = extract(
        net, TensorDataset(images), ["1", "3", "logits"], batch_size=BATCH, channels_last=True,
        pin_memory=True, num_workers=0,
    )  # fmt: skip
    hook.remove()
    assert formats
    assert all(formats)
    for key, value in expected.items():
        torch.testing.assert_close(features[key], value)
    assert not net[0].weight.is_contiguous()  # left as found: this one was channels_last
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    for p in net[1:].parameters():  # and these were not
        assert p.is_contiguous()


def test_option_errors(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"autocast='int8' is not an autocast dtype.*'bfloat16'"):
        extract(make_net(), TensorDataset(images), ["1"], autocast="int8")


@pytest.mark.slow
def test_compile(images: torch.Tensor) -> None:
    net = make_net()
    expected = by_hand(net, images)
    features = extract(
        net, TensorDataset(images), ["1", "3", "logits"], batch_size=BATCH, compile=True,
        num_workers=0,
    )  # fmt: skip
    for key, value in expected.items():
        torch.testing.assert_close(features[key], value)


@pytest.mark.cuda
@no_gpu
def test_cuda_autocast_channels_last_pinned(images: torch.Tensor, tmp_path: Path) -> None:
    net = make_net().cuda()
    expected = by_hand(net, images, torch.bfloat16, device="cuda")
    options: dict[str, Any] = {"autocast": "bfloat16", "channels_last": True, "num_workers": 2}
    for out in (None, tmp_path / "out"):
        features = extract(
            net, TensorDataset(images), ["1", "3", "logits"], out=out, batch_size=BATCH, **options
        )
        for key, value in expected.items():
            torch.testing.assert_close(features[key], value, atol=0.02, rtol=0.02)
    assert next(net.parameters()).is_cuda  # left on its device


@pytest.mark.cuda
@no_gpu
def test_cuda_tokens_per_token_rows() -> None:
    torch.manual_seed(2)
    encoder, seqs = TextEncoder().eval().cuda(), sequences(9)
    features = extract(encoder, Texts(seqs), ["embed"], batch_size=4, pin_memory=True)
    with torch.no_grad():
        for i, seq in enumerate(seqs):
            torch.testing.assert_close(features["embed"][i], encoder.embed(seq.cuda()).cpu())

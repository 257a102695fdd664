"""On a GPU (every test here is marked ``cuda`` and skipped without one): extract's device paths
against hand-written loops on the same device (tests/reference.py's cloning hooks), rows copied
back through pinned memory, copy-on-write snapshots on CUDA (benchmarks/cow.py), and the CUDA
path of the throughput benchmark's bare loop.

    benchmarks/gpu_check.sh runs them (pytest -m cuda) with the GPU benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import cow
from benchmarks import throughput as tp
from featwrap import extract
from featwrap.extraction.pool import resolve_pools
from featwrap.extraction.rows import compute_rows, feature_forward
from featwrap.extraction.speed import HostRows
from tests.reference import reference
from tests.test_extract_speed import BATCH, N, by_hand, make_net

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]
LAYERS = ["1", "3", "logits"]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(N, 3, 14, 14, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("autocast", [None, "float16"])
def test_cuda_extract_equals_the_same_loop(
    images: torch.Tensor, autocast: str | None, tmp_path: Path
) -> None:
    net = make_net().cuda()
    dtype = getattr(torch, autocast) if autocast else None
    expected = by_hand(net, images, dtype, device="cuda")
    tol = 1e-2 if autocast else 1e-4
    for out in (None, tmp_path / "out"):
        features = extract(
            net, TensorDataset(images), LAYERS, out=out, batch_size=BATCH, autocast=autocast,
            num_workers=2,
        )  # fmt: skip
        for key, value in expected.items():
            assert features[key].dtype == value.dtype
            torch.testing.assert_close(features[key], value, atol=tol, rtol=tol)


def test_cuda_model_given_on_the_cpu_is_moved_back(images: torch.Tensor) -> None:
    net = make_net()
    expected = by_hand(net.cuda(), images, device="cuda")
    net.cpu()
    features = extract(net, TensorDataset(images), LAYERS, batch_size=BATCH, device="cuda")
    for key, value in expected.items():
        torch.testing.assert_close(features[key], value, atol=1e-4, rtol=1e-4)
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_cuda_rows_come_back_through_pinned_memory(images: torch.Tensor) -> None:
    net = make_net().cuda()
    forward, paths = feature_forward(net, LAYERS)
    x = images[:BATCH].cuda()
    rows = compute_rows(forward, x, BATCH, resolve_pools(None, list(paths)), None, x.device)
    assert isinstance(rows, HostRows)
    assert rows.event is not None  # the copies may still be in flight
    rows.wait()
    with torch.no_grad():
        logits, calls = reference(net, ["1", "3"], x)
    expected = {"1": calls["1"][0], "3": calls["3"][0], "logits": logits}
    for key, value in expected.items():
        assert rows[key].device.type == "cpu"
        assert rows[key].is_pinned()
        assert torch.equal(rows[key], value.cpu())


def test_cuda_overlapped_copies_keep_every_batch(tmp_path: Path) -> None:
    """Many batches, each copied back while the next one's forward runs: none is overwritten."""
    net = make_net().cuda()
    images = torch.randn(96, 3, 14, 14, generator=torch.Generator().manual_seed(3))
    features = extract(
        net, TensorDataset(images), LAYERS, out=tmp_path / "out", batch_size=8, num_workers=2,
        shard_size=32,
    )  # fmt: skip
    with torch.no_grad():
        for a in range(0, len(images), 8):
            logits, calls = reference(net, ["1", "3"], images[a : a + 8].cuda())
            torch.testing.assert_close(features["logits"][a : a + 8], logits.cpu())
            torch.testing.assert_close(features["3"][a : a + 8], calls["3"][0].cpu())


@pytest.mark.slow
def test_cuda_compile(images: torch.Tensor) -> None:
    net = make_net().cuda()
    expected = by_hand(net, images, device="cuda")
    features = extract(
        net, TensorDataset(images), LAYERS, batch_size=BATCH, compile=True, num_workers=0
    )
    for key, value in expected.items():
        torch.testing.assert_close(features[key], value, atol=1e-3, rtol=1e-3)


def test_cuda_copy_on_write_snapshots() -> None:
    result = cow.check("cuda", mib=8, rounds=2)
    assert result["values"]["wrong"] == []  # features overwritten in place later are exact
    reads = result["reads"]
    assert reads["cow_after_capture_and_reads"] is True
    assert reads["device_bytes_of_capture"] == 0  # a capture copies nothing
    assert reads["device_bytes_kept_after_reads"] == 0  # nor does reading it
    write = result["write"]
    assert write["snapshot_exact_after_write"] is True
    assert write["bytes"] <= write["device_bytes_allocated_by_the_write"] <= 2 * write["bytes"]


@pytest.mark.parametrize(("name", "setting"), [("resnet18", "bf16+cl"), ("vit_ti16", "bf16")])
def test_cuda_bare_loop_of_the_benchmark(name: str, setting: str, tmp_path: Path) -> None:
    size, n = 32, 8
    model = tp.build_model(name, size).cuda()
    options = tp.SETTINGS[setting]
    loader = DataLoader(tp.Images(n, size), batch_size=4, pin_memory=True)
    bare = tp.BareLoop(model, tp.MODELS[name], options, torch.device("cuda"))
    got = bare.run(loader, None)
    assert got is not None
    features = extract(model, loader, tp.MODELS[name], **options.options())
    for key, value in got.items():
        assert torch.equal(features[key], value), key
    result = tp.measure(name, options, device="cuda", n=n, size=size, batch_size=4, workers=0,
                        rounds=1, folder=tmp_path)  # fmt: skip
    assert result.images_per_s["extract to disk"] > 0

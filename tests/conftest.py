from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def resnet18():  # type: ignore[no-untyped-def]
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).eval()

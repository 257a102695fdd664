"""Small webdataset-style tar shards of images, written with tarfile as webdataset lays them out."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def image(i: int, size: int = 12) -> Image.Image:
    g = np.random.default_rng(i)
    return Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8))


def to_tensor(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255


def write_shards(root: Path, sizes: list[int], name: str = "shard") -> list[str]:
    """Shards ``root/name-00.tar``...; sample ``s00007`` is ``image(7)``, class ``7 % 3``.
    Returns the keys in order."""
    root.mkdir(parents=True, exist_ok=True)
    keys, i = [], 0
    for k, size in enumerate(sizes):
        with tarfile.open(root / f"{name}-{k:02d}.tar", "w") as tar:
            for _ in range(size):
                key = f"s{i:05d}"
                png = io.BytesIO()
                image(i).save(png, format="PNG")
                for ext, data in (("png", png.getvalue()), ("cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                keys.append(key)
                i += 1
    return keys


def make_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()

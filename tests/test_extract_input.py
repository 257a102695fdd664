"""Image folders read as users expect: symlinks without loops, 16-bit range, EXIF orientation,
and classes as torchvision's ``ImageFolder`` has them (empty class folders included).

The expected rows come from the pixels the test wrote itself (numpy), or from torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featwrap import extract

IDENTITY = nn.Identity()


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def pixels(seed: int, shape: tuple[int, ...] = (6, 9, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def rows(root: Path, **kwargs: object) -> tuple[list[str], torch.Tensor]:
    features = extract(IDENTITY, root, ["logits"], transform=to_tensor, num_workers=0, **kwargs)  # type: ignore[arg-type]
    return features.ids, features["logits"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this system")
def test_symlinks_are_followed_without_loops(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    for name, seed in [("a.png", 1), ("b.png", 2), ("sub/c.png", 3)]:
        Image.fromarray(pixels(seed)).save(root / name)
    Image.fromarray(pixels(4)).save(elsewhere / "d.png")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # images/sub/loop -> images
    (root / "more").symlink_to(elsewhere, target_is_directory=True)  # a folder kept elsewhere
    (root / "also").symlink_to(elsewhere, target_is_directory=True)  # the same, a second time
    (root / "alias").symlink_to(root / "sub", target_is_directory=True)  # a folder inside
    ids, x = rows(root)
    assert ids == ["a.png", "b.png", "also/d.png", "sub/c.png"]  # each file once, loop cut
    expected = [pixels(1), pixels(2), pixels(4), pixels(3)]
    for row, want in zip(x, expected, strict=True):
        assert torch.equal(row, torch.from_numpy(want).permute(2, 0, 1).float() / 255)


def test_16_bit_png_keeps_its_range(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    gray = pixels(5, (6, 9))
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "deep.png")  # 16-bit: 0..65535
    with Image.open(root / "deep.png") as check:
        assert check.mode.startswith("I")  # a real 16-bit image
    _, x = rows(root)
    expected = torch.from_numpy(gray).float().div(255).expand(3, 6, 9)
    assert torch.equal(x[0], expected)  # not clipped at 255 (all white)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    upright = pixels(6, (6, 9, 3))  # 6 rows, 9 columns, as the camera's user saw it
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # the sensor's pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(root / "photo.png", exif=exif)
    _, x = rows(root)
    assert torch.equal(x[0], torch.from_numpy(upright).permute(2, 0, 1).float() / 255)


def test_classes_as_torchvision_image_folder(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = tmp_path / "images"
    for name, seed in [("cat/1.png", 1), ("cat/2.png", 2), ("zebra/3.png", 3)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels(seed)).save(root / name)
    (root / "dog").mkdir()  # no images (yet)
    reference = ImageFolder(str(root), allow_empty=True)
    features = extract(IDENTITY, root, ["logits"], transform=to_tensor, num_workers=0)
    assert features.classes == reference.classes == ["cat", "dog", "zebra"]
    assert features.targets == reference.targets == [0, 0, 2]
    assert features.ids == [Path(p).relative_to(root).as_posix() for p, _ in reference.samples]

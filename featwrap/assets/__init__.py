"""Small sample images shipped with featwrap (drawn by ``make_samples.py``): the default data of
``featwrap extract`` and ``featwrap show``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_dir", "sample_image"]


def sample_dir() -> Path:
    """The folder of the shipped sample images."""
    return Path(__file__).parent / "samples"


def sample_image(name: str = "cat.jpg") -> Path:
    """One shipped sample image (``cat.jpg``, ``checkerboard.png``, ``gradient.jpg``...)."""
    return sample_dir() / name

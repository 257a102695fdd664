"""Draw the sample images shipped in ``featwrap/assets/samples`` (``featwrap extract``'s default data).

Generated, so there is no licence to worry about; rerun ``python -m featwrap.assets.make_samples``
to draw them again (deterministic: a seeded generator, fixed shapes).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent / "samples"


def cat(size: tuple[int, int] = (320, 256)) -> Image.Image:
    """A cartoon cat's face on a sky-blue background (the seed's ``cat.jpg``)."""
    w, h = size
    image = Image.new("RGB", size, (150, 200, 235))
    d = ImageDraw.Draw(image)
    cx, cy, r = w // 2, h // 2 + 20, 90
    fur, dark = (230, 140, 50), (120, 60, 20)
    d.polygon([(cx - 85, cy - 40), (cx - 70, cy - 140), (cx - 15, cy - 80)], fill=fur, outline=dark)
    d.polygon([(cx + 85, cy - 40), (cx + 70, cy - 140), (cx + 15, cy - 80)], fill=fur, outline=dark)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fur, outline=dark, width=3)
    for dx in (-35, 35):
        d.ellipse([cx + dx - 16, cy - 40, cx + dx + 16, cy - 8], fill=(250, 250, 210))
        d.ellipse([cx + dx - 5, cy - 38, cx + dx + 5, cy - 10], fill=(20, 20, 20))
    d.polygon([(cx - 10, cy + 8), (cx + 10, cy + 8), (cx, cy + 20)], fill=(240, 120, 140))
    for side in (-1, 1):
        for k in (-1, 0, 1):
            d.line([(cx + side * 25, cy + 22), (cx + side * 110, cy + 14 + 16 * k)], fill=dark)
    d.arc([cx - 22, cy + 12, cx, cy + 38], 0, 180, fill=dark, width=2)
    d.arc([cx, cy + 12, cx + 22, cy + 38], 0, 180, fill=dark, width=2)
    return image


def checkerboard(size: tuple[int, int] = (256, 256), cell: int = 32) -> Image.Image:
    image = Image.new("RGB", size, (245, 245, 245))
    d = ImageDraw.Draw(image)
    for y in range(0, size[1], cell):
        for x in range(0, size[0], cell):
            if (x // cell + y // cell) % 2:
                d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(30, 30, 30))
    return image


def gradient(size: tuple[int, int] = (300, 200)) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size)
    image.putdata(
        [(255 * x // w, 255 * y // h, 255 - 255 * x // w) for y in range(h) for x in range(w)]
    )
    return image


def shapes(size: tuple[int, int] = (256, 256), seed: int = 5) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size, (255, 255, 240))
    d = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randrange(12, 50)
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            d.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            d.rectangle([x - r, y - r, x + r, y + r], fill=color)
    return image


def waves(size: tuple[int, int] = (240, 240)) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            (
                int(127 + 127 * math.sin(x / 9 + math.sin(y / 23))),
                int(127 + 127 * math.sin(y / 7)),
                160,
            )
            for y in range(h)
            for x in range(w)
        ]
    )
    return image


def blur(size: tuple[int, int] = (224, 224), seed: int = 3) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size[0] // 8, size[1] // 8))
    image.putdata(
        [tuple(rng.randrange(256) for _ in range(3)) for _ in range(image.width * image.height)]
    )
    return image.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))


def main() -> None:
    HERE.mkdir(exist_ok=True)
    cat().save(HERE / "cat.jpg", quality=90)
    checkerboard().save(HERE / "checkerboard.png", optimize=True)
    gradient().save(HERE / "gradient.jpg", quality=90)
    shapes().save(HERE / "shapes.jpg", quality=90)
    waves().save(HERE / "waves.jpg", quality=90)
    blur().save(HERE / "blur.jpg", quality=90)


if __name__ == "__main__":
    main()

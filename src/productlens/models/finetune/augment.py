"""Random training views of a product photo (PIL only, no torchvision).

Shopper photos differ from each other and from seller photos in framing,
viewpoint, light and sharpness; each view draws a random crop (30-100% of the
area, aspect 3:4..4:3), a horizontal flip, a small rotation, brightness,
contrast and saturation changes and a little blur.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageEnhance, ImageFilter


def random_crop(img: Image.Image, rng: random.Random, scale: tuple[float, float] = (0.3, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """A crop covering a random fraction ``scale`` of the area with aspect ratio in ``ratio``."""
    w, h = img.size
    for _ in range(10):
        area = rng.uniform(*scale) * w * h
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.crop((x, y, x + cw, y + ch))
    return img


def random_view(img: Image.Image, rng: random.Random) -> Image.Image:
    """One random training view of ``img`` (RGB); the caller resizes it for the model."""
    img = random_crop(img, rng)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        img = img.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return img

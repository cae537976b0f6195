"""Copy-paste detection data: product cut-outs pasted onto background photos, written as COCO.

Seller photos show one product on a white background, so the product cuts out
cleanly (:func:`cutout`). :func:`synthesize_coco` pastes such cut-outs onto
background photos - one product or a pile of copies of it, at random scales,
positions, small rotations and brightness - and records the visible part of
each as a box. It writes the composite photos and a COCO json, so the result
trains a detector like any other annotation file (``productlens detector train``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from productlens.data.images import load_image
from productlens.fileio import atomic_path
from productlens.types import ImageError, ProductLensError


def cutout(img: Image.Image, *, white: int = 235, min_fraction: float = 0.02) -> Image.Image | None:
    """An RGBA crop of the product in a white-background photo (None when there is none).

    Foreground = pixels darker than ``white`` on some channel, holes filled,
    small specks dropped (the largest connected parts kept), cropped to its box.
    """
    from scipy import ndimage

    rgb = np.asarray(img.convert("RGB"))
    fg = (rgb < white).any(-1)
    fg = ndimage.binary_opening(fg, iterations=1)
    fg = ndimage.binary_fill_holes(ndimage.binary_closing(fg, iterations=2))
    lab, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = ndimage.sum(fg, lab, range(1, n + 1))
    keep = np.isin(lab, 1 + np.nonzero(sizes >= 0.1 * sizes.max())[0])
    if keep.sum() < min_fraction * keep.size:
        return None
    ys, xs = np.nonzero(keep)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.dstack([rgb, (keep * 255).astype(np.uint8)])[y0:y1, x0:x1]
    return Image.fromarray(rgba, "RGBA")


def _place(canvas: Image.Image, obj: Image.Image, rng: random.Random, scale: float) -> tuple[int, int, Image.Image]:
    W, H = canvas.size
    f = scale * max(W, H) / max(obj.size)
    obj = obj.resize((max(4, round(obj.size[0] * f)), max(4, round(obj.size[1] * f))), Image.BILINEAR)
    if rng.random() < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    obj = obj.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, expand=True)
    rgb = ImageEnhance.Brightness(obj.convert("RGB")).enhance(rng.uniform(0.7, 1.15))
    obj = Image.merge("RGBA", (*rgb.split(), obj.split()[3]))
    x = rng.randint(-obj.size[0] // 4, max(-obj.size[0] // 4, W - obj.size[0] * 3 // 4))
    y = rng.randint(-obj.size[1] // 4, max(-obj.size[1] // 4, H - obj.size[1] * 3 // 4))
    return x, y, obj


def compose(background: Image.Image, objects: Sequence[Image.Image], rng: random.Random, *,
            size: int = 384, min_visible: float = 0.4) -> tuple[Image.Image, list[list[float]]]:
    """Paste ``objects`` (RGBA) onto ``background`` (resized so its longer side is ``size``).

    Returns the composite and the boxes (x, y, w, h) of the objects at least
    ``min_visible`` of which stays visible after later pastes.
    """
    bg = background.convert("RGB")
    f = size / max(bg.size)
    canvas = bg.resize((max(1, round(bg.size[0] * f)), max(1, round(bg.size[1] * f))), Image.BILINEAR)
    W, H = canvas.size
    owner = np.full((H, W), -1, np.int32)
    areas = []
    pile = len(objects) > 2
    for k, obj in enumerate(objects):
        scale = rng.uniform(0.15, 0.35) if pile else rng.uniform(0.25, 0.8)
        x, y, obj = _place(canvas, obj, rng, scale)
        canvas.paste(obj, (x, y), obj)
        alpha = np.asarray(obj.split()[3]) > 127
        ys, xs = np.nonzero(alpha)
        ys, xs = ys + y, xs + x
        ok = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
        owner[ys[ok], xs[ok]] = k
        areas.append(int(alpha.sum()))
    boxes = []
    for k, area in enumerate(areas):
        ys, xs = np.nonzero(owner == k)
        if len(xs) < max(16, min_visible * area):
            continue
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)])
    return canvas, boxes


def synthesize_coco(products: Sequence[str | Path], backgrounds: Sequence[str | Path], out_dir: str | Path, *,
                    n_images: int = 600, tag: str = "product", size: int = 384, seed: int = 0,
                    progress: bool = True) -> Path:
    """Write ``n_images`` composites and ``out_dir/annotations.json`` (one category, ``tag``).

    ``products``: white-background product photos; ``backgrounds``: photos to
    paste onto (they should show no products of the kind to detect). Half of the
    composites hold 1-2 different products, half a pile of 3-8 copies of one.
    Unreadable inputs are skipped; ProductLensError when none is left.
    """
    from tqdm import tqdm

    rng = random.Random(seed)
    cuts = []
    for p in products:
        try:
            c = cutout(load_image(p))
        except ImageError:
            continue
        if c is not None:
            cuts.append(c)
    bgs = [b for b in backgrounds if Path(b).is_file()]
    if not cuts:
        raise ProductLensError("no product photo gave a cut-out (white-background photos are needed)")
    if not bgs:
        raise ProductLensError("no background photo found")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in tqdm(range(n_images), desc="composites", unit="image", disable=not progress):
        try:
            bg = load_image(rng.choice(bgs))
        except ImageError:
            continue
        objs = [rng.choice(cuts)] * rng.randint(3, 8) if i % 2 else rng.sample(cuts, min(len(cuts), rng.randint(1, 2)))
        img, boxes = compose(bg, objs, rng, size=size)
        name = f"images/{i:05d}.jpg"
        img.save(out / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": img.size[0], "height": img.size[1]})
        anns += [{"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                  "iscrowd": 0} for b in boxes]
    with atomic_path(out / "annotations.json") as tmp:
        tmp.write_text(json.dumps({"images": images, "annotations": anns,
                                   "categories": [{"id": 1, "name": tag}]}))
    return out / "annotations.json"

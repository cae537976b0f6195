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
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from productlens.data.images import load_image
from productlens.fileio import atomic_dir, check_replaceable
from productlens.progress import bar_disable
from productlens.types import ImageError, ProductLensError

log = logging.getLogger(__name__)


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


@dataclass
class Composites:
    """What :func:`write_composites` wrote: ``written`` of the ``asked`` composites, and the
    input photos it ``skipped`` (each as ``"<file>: <why>"``)."""

    annotations: Path
    asked: int
    written: int
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many composites were written of how many asked, and what was skipped."""
        line = f"wrote {self.written} of the {self.asked} composites asked"
        if self.skipped:
            line += (f"; skipped {len(self.skipped)} input photo(s) that could not be used (see the warnings); "
                     "the composites use the others")
        return line


def synthesize_coco(products: Sequence[str | Path], backgrounds: Sequence[str | Path], out_dir: str | Path, *,
                    n_images: int = 600, tag: str = "product", size: int = 384, seed: int = 0,
                    progress: bool = True) -> Path:
    """:func:`write_composites`, with each skipped photo logged as a warning; returns the annotations' path."""
    return write_composites(products, backgrounds, out_dir, n_images=n_images, tag=tag, size=size, seed=seed,
                            progress=progress).annotations


def write_composites(products: Sequence[str | Path], backgrounds: Sequence[str | Path], out_dir: str | Path, *,
                     n_images: int = 600, tag: str = "product", size: int = 384, seed: int = 0,
                     progress: bool = True, warn: Callable[[str], None] | None = None) -> Composites:
    """Write the folder ``out_dir``: ``n_images`` composites in ``images/`` and ``annotations.json``
    (COCO, one category, ``tag``), atomically (see :func:`productlens.fileio.atomic_dir`).

    ``products``: white-background product photos; ``backgrounds``: photos to
    paste onto (they should show no products of the kind to detect). Half of the
    composites hold 1-2 different products, half a pile of 3-8 copies of one.
    Each input photo that cannot be used is skipped and reported to ``warn``
    (default: a logged warning); a background that cannot be read is replaced by
    another. ProductLensError when no product or no background is left, and,
    before any work, when ``out_dir`` is a file or a folder productlens did not write.
    """
    report = warn or (lambda msg: log.warning("%s", msg))
    check_replaceable(out_dir)
    skipped: list[str] = []

    def skip(path: str | Path, why: str) -> None:
        skipped.append(f"{path}: {why}")
        report(f"skipped {skipped[-1]}")

    cuts = _cutouts(products, skip)
    bgs = _existing(backgrounds, skip)
    if not cuts:
        raise ProductLensError("no product photo gave a cut-out (white-background photos are needed)")
    if not bgs:
        raise ProductLensError("no background photo found")
    with atomic_dir(out_dir) as tmp:
        written = _write_images(cuts, bgs, tmp, n_images, tag, size, random.Random(seed), progress, skip)
    return Composites(Path(out_dir) / "annotations.json", n_images, written, skipped)


def _cutouts(products: Sequence[str | Path], skip: Callable[[str | Path, str], None]) -> list[Image.Image]:
    """The cut-outs of the product photos; each one that gives none is passed to ``skip``."""
    cuts = []
    for p in products:
        try:
            c = cutout(load_image(p))
        except ImageError as e:
            skip(p, f"unreadable product photo ({_reason(e, p)})")
            continue
        if c is None:
            skip(p, "no product to cut out (a product on a white background is needed)")
        else:
            cuts.append(c)
    return cuts


def _existing(backgrounds: Sequence[str | Path], skip: Callable[[str | Path, str], None]) -> list[str | Path]:
    """The background photos that are files; each other one is passed to ``skip``."""
    found = []
    for b in backgrounds:
        if Path(b).is_file():
            found.append(b)
        else:
            skip(b, "no such background photo")
    return found


def _write_images(cuts: list[Image.Image], bgs: list[str | Path], out: Path, n_images: int, tag: str, size: int,
                  rng: random.Random, progress: bool, skip: Callable[[str | Path, str], None]) -> int:
    """Write the composites and ``annotations.json`` into ``out``; returns how many were written.

    A background that cannot be read is passed to ``skip`` and dropped, and another one
    is drawn; ProductLensError when none of them can be read."""
    from tqdm import tqdm

    (out / "images").mkdir()
    bgs = list(bgs)
    images, anns = [], []
    for i in tqdm(range(n_images), desc="composites", unit="image", disable=bar_disable(progress)):
        bg = _draw_background(bgs, rng, skip)
        objs = [rng.choice(cuts)] * rng.randint(3, 8) if i % 2 else rng.sample(cuts, min(len(cuts), rng.randint(1, 2)))
        img, boxes = compose(bg, objs, rng, size=size)
        name = f"images/{i:05d}.jpg"
        img.save(out / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": img.size[0], "height": img.size[1]})
        anns += [{"id": len(anns) + j + 1, "image_id": i + 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                  "iscrowd": 0} for j, b in enumerate(boxes)]  # each box its own id (pycocotools indexes by it)
    (out / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                      "categories": [{"id": 1, "name": tag}]}))
    return len(images)


def _draw_background(bgs: list[str | Path], rng: random.Random, skip: Callable[[str | Path, str], None]) -> Image.Image:
    """A random readable photo of ``bgs``; those that cannot be read are removed from it (and skipped)."""
    count = len(bgs)
    while bgs:
        path = rng.choice(bgs)
        try:
            return load_image(path)
        except ImageError as e:
            bgs.remove(path)
            skip(path, f"unreadable background photo ({_reason(e, path)})")
    raise ProductLensError(f"none of the {count} background photos could be read")


def _reason(exc: Exception, path: str | Path) -> str:
    """The message of ``exc`` without the file name it starts with (the warning names the file already)."""
    msg = str(exc)
    return msg[len(f"{path}: "):] if msg.startswith(f"{path}: ") else msg

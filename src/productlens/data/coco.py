"""COCO-format box annotations: read, check, and report what had to be skipped.

``read_coco(path)`` returns a :class:`CocoSet`: the categories (in file order),
one :class:`DetImage` per image (its file resolved relative to the json's
folder, boxes as x0, y0, x1, y1 in pixels) and the problems found. Boxes are
clipped to their image; boxes of zero size, fully outside the image, or with a
category id not in the category list are skipped and reported (naming the file
and the first annotation ids); images with no boxes are kept (they teach the
detector what background looks like) and reported. Two image records with the
same id are an error: which photo their boxes belong to cannot be known.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from productlens.types import ProductLensError


@dataclass
class DetImage:
    id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # N x 4, x0 y0 x1 y1, pixels, float32
    labels: np.ndarray  # N, index into CocoSet.categories


@dataclass
class CocoSet:
    path: Path
    categories: list[dict]  # {"id", "name"} in file order; label i = categories[i]
    images: list[DetImage]
    problems: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [str(c["name"]) for c in self.categories]

    @property
    def n_boxes(self) -> int:
        return int(sum(len(im.boxes) for im in self.images))

    def summary(self) -> str:
        return (f"{self.path}: {len(self.images)} images, {self.n_boxes} boxes, "
                f"{len(self.categories)} categories, {len(self.problems)} problems")


def read_coco(path: str | Path, *, categories: list[dict] | None = None) -> CocoSet:
    """Read and check a COCO json (``file_name`` relative to the json's folder).

    ``categories``: use this category list (a trained detector's) instead of the
    file's; annotations of other categories are then reported and skipped.
    Raises ProductLensError for a file that cannot be used at all (missing,
    not json, no ``images``/``categories``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProductLensError(f"annotation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProductLensError(f"cannot read annotation file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ProductLensError(f"{path}: a COCO file is a json object with 'images', 'annotations', 'categories'")
    cats = categories if categories is not None else data.get("categories")
    if not cats or not isinstance(cats, list):
        raise ProductLensError(f"{path}: no 'categories' list")
    if not data.get("images"):
        raise ProductLensError(f"{path}: no 'images' (an empty annotation file)")
    try:
        label_of = {int(c["id"]): i for i, c in enumerate(cats)}
    except (KeyError, TypeError, ValueError):
        raise ProductLensError(f"{path}: every category needs an integer 'id' and a 'name'") from None
    problems: list[str] = []
    images: dict[int, DetImage] = {}
    for rec in data["images"]:
        try:
            iid, name = int(rec["id"]), str(rec["file_name"])
            w, h = int(rec.get("width", 0)), int(rec.get("height", 0))
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: image record {rec!r}: needs 'id' and 'file_name'")
            continue
        if iid in images:
            first = images[iid].path.relative_to(path.parent)
            raise ProductLensError(f"{path}: image id {iid} is used by both {first} and {name}; "
                                   "image ids must be unique (their boxes could land on the wrong photo)")
        images[iid] = DetImage(iid, path.parent / name, w, h, np.zeros((0, 4), np.float32),
                               np.zeros(0, np.int64))
    boxes: dict[int, list] = {}
    why: Counter = Counter()
    which: dict[str, list] = {}  # reason -> the first annotation ids (or positions) skipped for it

    def skip(reason: str, ann: Any, n: int) -> None:
        why[reason] += 1
        if len(which.setdefault(reason, [])) < 5:
            which[reason].append(ann.get("id", f"#{n}") if isinstance(ann, dict) else f"#{n}")

    for n, ann in enumerate(data.get("annotations") or []):
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            skip("malformed annotation (needs image_id, category_id, bbox)", ann, n)
            continue
        if ann.get("iscrowd"):
            continue
        im = images.get(iid)
        if im is None:
            skip("image_id not in images", ann, n)
            continue
        if cid not in label_of:
            skip(f"category id {cid} not in the category list", ann, n)
            continue
        if not (w > 0 and h > 0):
            skip("zero-size box", ann, n)
            continue
        x0, y0, x1, y1 = x, y, x + w, y + h
        if im.width and im.height:
            x0, y0 = max(0.0, x0), max(0.0, y0)
            x1, y1 = min(float(im.width), x1), min(float(im.height), y1)
            if x1 - x0 < 1 or y1 - y0 < 1:
                skip("box outside its image", ann, n)
                continue
        boxes.setdefault(iid, []).append((x0, y0, x1, y1, label_of[cid]))
    for reason, n in sorted(why.items()):
        ids = ", ".join(str(i) for i in which[reason]) + (", ..." if n > len(which[reason]) else "")
        problems.append(f"{path}: {n} annotation(s) skipped: {reason} (annotation {ids})")
    for iid, rows in boxes.items():
        arr = np.asarray(rows, np.float32)
        images[iid].boxes = arr[:, :4]
        images[iid].labels = arr[:, 4].astype(np.int64)
    empty = [im.path.name for im in images.values() if not len(im.boxes)]
    if empty:
        problems.append(f"{path}: {len(empty)} image(s) with no boxes, kept as background: "
                        + ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""))
    return CocoSet(path, [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in cats],
                   list(images.values()), problems)


def load_det_image(rec: DetImage):
    """Decode ``rec``'s photo (EXIF applied); ImageError when it cannot be read or its size
    differs from the annotation file's width/height (the boxes would not fit it)."""
    from productlens.data.images import load_image
    from productlens.types import ImageError

    img = load_image(rec.path)
    if rec.width and rec.height and img.size != (rec.width, rec.height):
        raise ImageError(f"{rec.path}: the photo is {img.size[0]}x{img.size[1]} but the annotation file says "
                         f"{rec.width}x{rec.height}; its boxes would not fit")
    return img

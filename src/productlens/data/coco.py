"""COCO-format box annotations: read, check, and report what had to be skipped.

``read_coco(path)`` returns a :class:`CocoSet`: the categories (in file order),
one :class:`DetImage` per image (its file resolved relative to the json's
folder, boxes as x0, y0, x1, y1 in pixels) and the problems found. Boxes are
clipped to their image; boxes of zero size, fully outside the image, with NaN or
infinite values, with a category id not in the category list, or that are not
four numbers are skipped and reported (naming the file and the first annotation
ids). Crowd annotations (``iscrowd: 1``) are not boxes to learn: they are
reported and kept apart in ``DetImage.crowd`` / ``DetImage.crowd_labels`` (the
regions COCO scoring ignores). Image records whose ``file_name`` is absolute or
leaves the json's folder (``..``), or whose ``width``/``height`` are not whole
numbers, are skipped and reported, and so are their annotations. Images with no
boxes (and no crowd regions) are kept (they teach the detector what background
looks like) and reported. Two image records with the same id, two categories
with the same id or the same name, and ``images``/``annotations``/``categories``
that are not lists are errors.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from productlens.data.readers import _parse_int as _int  # 3, "3", 3.0; ValueError for bools, NaN, 1.5
from productlens.data.readers import local_file
from productlens.types import ProductLensError


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def _no_labels() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass
class DetImage:
    id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # N x 4, x0 y0 x1 y1, pixels, float32
    labels: np.ndarray  # N, index into CocoSet.categories
    # crowd regions (iscrowd=1): same layout as boxes/labels; never trained on, ignored regions when scoring
    crowd: np.ndarray = field(default_factory=_no_boxes)
    crowd_labels: np.ndarray = field(default_factory=_no_labels)


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


def _list(data: dict, key: str, path: Path) -> list:
    value = data[key]
    if not isinstance(value, list):
        raise ProductLensError(f"{path}: '{key}' must be a list of objects, not {type(value).__name__} "
                               f"({json.dumps(value)[:60]})")
    return value


def _categories(cats: list, path: Path) -> list[dict]:
    """``{"id", "name"}`` of each category; ids and names must be unique."""
    out: list[dict] = []
    by_id: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for c in cats:
        try:
            cid = _int(c["id"])
            name = str(c.get("name", cid))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProductLensError(f"{path}: every category needs an integer 'id' and a 'name' "
                                   f"(not {json.dumps(c)[:60]})") from None
        if not name.strip():  # a detector's tags must be named: its spec would not load
            raise ProductLensError(f"{path}: category id {cid} has an empty name; every category needs one")
        if cid in by_id:
            raise ProductLensError(f"{path}: category id {cid} is used by both {by_id[cid]!r} and {name!r}; "
                                   "category ids must be unique (their boxes would get the wrong label)")
        if name in by_name:
            raise ProductLensError(f"{path}: category name {name!r} is used by both category ids {by_name[name]} "
                                   f"and {cid}; category names must be unique (they would share one tag and one "
                                   "per-class result)")
        by_id[cid], by_name[name] = name, cid
        out.append({"id": cid, "name": name})
    return out


def _inside(name: str) -> bool:
    """Whether ``name`` is relative and stays in the json's folder (checked on the text, links are not followed)."""
    if os.path.isabs(name) or name.startswith("\\"):
        return False
    norm = os.path.normpath(name.replace("\\", "/"))
    return norm != ".." and not norm.startswith("../") and norm != "."


def _box(bbox: Any) -> tuple[float, float, float, float]:
    """x, y, w, h of a COCO bbox: a list of 4 numbers (ValueError otherwise; NaN and infinities are numbers here)."""
    if not isinstance(bbox, list) or len(bbox) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise ValueError("bbox")
    x, y, w, h = (float(v) for v in bbox)
    return x, y, w, h


def read_coco(path: str | Path, *, categories: list[dict] | None = None) -> CocoSet:
    """Read and check a COCO json (``file_name`` relative to the json's folder).

    ``categories``: use this category list (a trained detector's) instead of the
    file's; annotations of other categories are then reported and skipped.
    Raises ProductLensError for a file that cannot be used at all (missing,
    not json, no ``images``/``categories``, keys that are not lists, duplicate
    image ids, duplicate category ids or names).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ProductLensError(f"annotation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProductLensError(f"cannot read annotation file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ProductLensError(f"{path}: a COCO file is a json object with 'images', 'annotations', 'categories'")
    if categories is None:
        if data.get("categories") is None:
            raise ProductLensError(f"{path}: no 'categories' list")
        if data.get("categories") == []:
            raise ProductLensError(f"{path}: the 'categories' list is empty: name the tags the boxes carry")
        categories = _list(data, "categories", path)
    elif not categories:
        raise ProductLensError(f"{path}: no 'categories' list")
    cats = _categories(categories, path)
    if data.get("images") is None or data.get("images") == []:
        raise ProductLensError(f"{path}: no 'images' (an empty annotation file)")
    records = _list(data, "images", path)
    annotations = [] if data.get("annotations") is None else _list(data, "annotations", path)
    label_of = {c["id"]: i for i, c in enumerate(cats)}

    problems: list[str] = []
    why: Counter = Counter()
    which: dict[str, list] = {}  # reason -> the first annotation ids (or positions) skipped for it

    def skip(reason: str, ann: Any, n: int) -> None:
        why[reason] += 1
        if len(which.setdefault(reason, [])) < 5:
            which[reason].append(ann.get("id", f"#{n}") if isinstance(ann, dict) else f"#{n}")

    images: dict[int, DetImage] = {}
    named: dict[int, str] = {}  # image id -> file_name, of every record with an id (skipped ones too)
    skipped: set[int] = set()  # ids of image records skipped: their annotations are skipped with them
    bad_images: Counter = Counter()
    bad_which: dict[str, list] = {}

    def skip_image(reason: str, label: str) -> None:
        bad_images[reason] += 1
        if len(bad_which.setdefault(reason, [])) < 5:
            bad_which[reason].append(label)

    for n, rec in enumerate(records):
        try:
            iid = _int(rec["id"])
        except (KeyError, TypeError, ValueError):
            skip_image("needs an integer 'id' and a 'file_name'", f"#{n} {json.dumps(rec)[:60]}")
            continue
        name = rec.get("file_name")
        if iid in named:
            raise ProductLensError(f"{path}: image id {iid} is used by both {named[iid]} and {name}; "
                                   "image ids must be unique (their boxes could land on the wrong photo)")
        named[iid] = str(name)
        if not isinstance(name, str) or not name.strip():
            skip_image("needs an integer 'id' and a 'file_name'", f"{iid} {json.dumps(rec)[:60]}")
            skipped.add(iid)
            continue
        try:
            w, h = (0 if rec.get(k) is None else _int(rec.get(k)) for k in ("width", "height"))
            if w < 0 or h < 0:
                raise ValueError("negative")
        except ValueError:
            skip_image("'width' and 'height' must be whole numbers of pixels",
                       f"{iid} {name}: {json.dumps(rec.get('width'))} x {json.dumps(rec.get('height'))}")
            skipped.add(iid)
            continue
        if not _inside(name):
            skip_image("'file_name' must be relative to the json's folder (absolute, or it leaves it with '..')",
                       f"{iid} {name}")
            skipped.add(iid)
            continue
        images[iid] = DetImage(iid, local_file(path.parent, name), w, h, _no_boxes(), _no_labels())
    for reason, k in sorted(bad_images.items()):
        named_ = ", ".join(bad_which[reason]) + (", ..." if k > len(bad_which[reason]) else "")
        problems.append(f"{path}: {k} image record(s) skipped: {reason} (image {named_})")

    boxes: dict[int, list] = {}
    crowd: dict[int, list] = {}
    for n, ann in enumerate(annotations):
        try:
            iid, cid = _int(ann["image_id"]), _int(ann["category_id"])
            bbox = ann["bbox"]
            iscrowd = ann.get("iscrowd") or 0
        except (KeyError, TypeError, ValueError, AttributeError):
            skip("malformed annotation (needs image_id, category_id, bbox)", ann, n)
            continue
        try:
            x, y, w, h = _box(bbox)
        except ValueError:
            skip("bbox is not a list of 4 numbers [x, y, width, height]", ann, n)
            continue
        if iscrowd not in (0, 1):
            skip("iscrowd is not 0 or 1", ann, n)
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            skip("bbox with NaN or infinite values", ann, n)
            continue
        if iid in skipped:
            skip("its image record was skipped", ann, n)
            continue
        im = images.get(iid)
        if im is None:
            skip("image_id not in images", ann, n)
            continue
        if cid not in label_of:
            skip(f"category id {cid} not in the category list", ann, n)
            continue
        if w < 0 or h < 0:
            skip("negative box width or height (bbox is x, y, width, height)", ann, n)
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
        if iscrowd:
            skip("crowd region (iscrowd=1): not trained on, kept as an ignored region for scoring", ann, n)
            crowd.setdefault(iid, []).append((x0, y0, x1, y1, label_of[cid]))
            continue
        boxes.setdefault(iid, []).append((x0, y0, x1, y1, label_of[cid]))
    for reason, k in sorted(why.items()):
        ids = ", ".join(str(i) for i in which[reason]) + (", ..." if k > len(which[reason]) else "")
        problems.append(f"{path}: {k} annotation(s) skipped: {reason} (annotation {ids})")
    for rows_of, box_attr, label_attr in ((boxes, "boxes", "labels"), (crowd, "crowd", "crowd_labels")):
        for iid, rows in rows_of.items():
            arr = np.asarray(rows, np.float32)
            setattr(images[iid], box_attr, arr[:, :4])
            setattr(images[iid], label_attr, arr[:, 4].astype(np.int64))
    empty = [im.path.name for im in images.values() if not len(im.boxes) and not len(im.crowd)]
    if empty:
        problems.append(f"{path}: {len(empty)} image(s) with no boxes, kept as background: "
                        + ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""))
    only_crowd = [im.path.name for im in images.values() if not len(im.boxes) and len(im.crowd)]
    if only_crowd:
        problems.append(f"{path}: {len(only_crowd)} image(s) with only crowd regions, not used as background "
                        "in training: " + ", ".join(only_crowd[:5]) + (", ..." if len(only_crowd) > 5 else ""))
    return CocoSet(path, cats, list(images.values()), problems)


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

"""Core value types and errors shared by every part of productlens."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any


class ProductLensError(Exception):
    """Base class of the errors productlens raises on bad input."""


class ImageError(ProductLensError):
    """An image could not be read or decoded; the message names the file."""


class BoxError(ProductLensError):
    """A box has zero area or lies fully outside its image."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: top-left corner (x, y), width w, height h."""

    x: float
    y: float
    w: float
    h: float

    def clip(self, width: int, height: int) -> "Box":
        """Return the box clipped to a ``width`` x ``height`` image.

        Raises BoxError when the box is not 4 finite numbers, has zero (or
        negative) area, or covers less than a pixel of the image.
        """
        if not all(math.isfinite(v) for v in self.as_tuple()):
            raise BoxError(f"box {self.as_tuple()} is not 4 finite numbers")
        if not (self.w > 0 and self.h > 0):
            raise BoxError(f"box {self.as_tuple()} has zero area")
        x0, y0 = max(0.0, self.x), max(0.0, self.y)
        x1, y1 = min(float(width), self.x + self.w), min(float(height), self.y + self.h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            where = "lies outside" if x1 <= x0 or y1 <= y0 else "covers less than one pixel of"
            raise BoxError(f"box {self.as_tuple()} {where} the {width}x{height} image")
        return Box(x0, y0, x1 - x0, y1 - y0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)

    @classmethod
    def parse(cls, values: Any) -> "Box | None":
        """Build a box from 4 numbers (or a 'x,y,w,h' string); empty values mean no box."""
        if values is None:
            return None
        if isinstance(values, str):
            values = [v for v in values.replace(" ", "").split(",")] if values.strip() else []
        vals = list(values)
        if not vals or all(v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v)
                           for v in vals):
            return None  # empty cells (or cells of spaces): the whole image
        if len(vals) != 4:
            raise BoxError(f"a box needs 4 numbers x,y,w,h, got {vals!r}")
        try:
            if any(isinstance(v, str) and "_" in v for v in vals):  # float() reads "1_0" as 10
                raise ValueError
            x, y, w, h = (float(v) for v in vals)
        except (TypeError, ValueError):
            raise BoxError(f"a box needs 4 numbers x,y,w,h, got {vals!r}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise BoxError(f"a box needs 4 finite numbers x,y,w,h, got {vals!r}")
        if w < 0 or h < 0:
            raise BoxError(f"a box's width and height cannot be negative, got w={w:g}, h={h:g}")
        return cls(x, y, w, h)


@dataclass(frozen=True)
class InvalidBox(Box):
    """A box that could not be read, kept in its row: a batch reports that query and goes on."""

    reason: str = ""

    def clip(self, width: int, height: int) -> Box:
        raise BoxError(self.reason)

    @classmethod
    def because(cls, reason: str) -> "InvalidBox":
        nan = float("nan")
        return cls(nan, nan, nan, nan, reason)


@dataclass
class Item:
    """One catalog or query photo.

    ``id`` is unique within its catalog; ``image`` is a path (or URL) to the photo;
    ``product_id`` is the product the photo shows (None when unknown, -1 for
    distractors); ``title``/``category`` describe the product; ``extra`` keeps any
    other metadata columns.
    """

    id: int
    image: str
    product_id: int | None = None
    title: str = ""
    category: str = ""
    box: Box | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result: the catalog item, its score (higher is better) and product."""

    id: int
    score: float
    product_id: int | None = None
    title: str = ""
    image: str = ""


def product_key(item_id: int, product_id: object) -> int:
    """The product an item counts for: its product_id, or (none, or a -1 distractor) a product of its
    own, numbered ``-1 - item_id`` so that it never collides with a real product id."""
    if product_id is not None and int(product_id) >= 0:  # type: ignore[call-overload]
        return int(product_id)  # type: ignore[call-overload]
    return -1 - int(item_id)


def result_name(title: str | None, item_id: int, product_id: object) -> str:
    """What a ranked photo is called where people read it (a plot, the page, its history): its title,
    else ``product P``, else (no product, or a -1 distractor) ``item N``. The page's app.js mirrors this."""
    if title:
        return str(title)
    if product_id is not None and int(product_id) >= 0:  # type: ignore[call-overload]
        return f"product {product_id}"
    return f"item {item_id}"


def key_owner(key: int) -> tuple[int | None, int | None]:
    """The inverse of :func:`product_key`, for output: ``(product_id, None)`` for a product,
    ``(None, item_id)`` for an item that counts as a product of its own."""
    return (key, None) if key >= 0 else (None, -1 - key)


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as an int if it is a whole number of at least 1 (not a bool or a float), else ProductLensError:
    every ``k`` of the public API is checked alike (a negative one would slice off the last results)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ProductLensError(f"{name} must be a whole number of at least 1, got {k!r}")
    return int(k)


def check_list(values: Any, what: str) -> list:
    """``values`` as a list if it is a sequence of several things; ProductLensError for one path or text
    passed where a list is expected (a str would be taken apart character by character)."""
    if isinstance(values, (str, bytes, os.PathLike)) or not hasattr(values, "__iter__"):  # a PIL image: no __iter__
        raise ProductLensError(f"{what} must be a list, got one {type(values).__name__} {values!r:.40}: "
                               "put it in a list")
    return list(values)

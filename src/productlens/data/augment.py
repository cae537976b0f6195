"""Views of an image for feature augmentation: crops and flips applied before the model.

A :class:`View` is a crop (fractions of the decoded image, EXIF-oriented) plus an
optional horizontal flip, of the image itself or of a mosaic of copies of it
(``tile``: k x k copies, as a shelf or a bin shows one product many times).
Training embeds every photo under several views (the frozen-backbone form of
data augmentation); prediction averages the class
probabilities over a few views (test-time augmentation).

:class:`ViewEmbedder` wraps an embedder so that the robust batch pipeline
(:func:`productlens.pipeline.embed.embed_items`) embeds a view instead of the
whole image: decoding, error reporting and batching stay the same.
:class:`StackedViewEmbedder` gives every view of a set from one decode of each
image (one vector per view); :class:`PooledViewEmbedder` pools them into one.

>>> views = view_set("train")                        # doctest: +SKIP
>>> ViewEmbedder(embedder, views[1]).preprocess(img)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from productlens.data.images import reduce_for
from productlens.types import ProductLensError


@dataclass(frozen=True)
class View:
    """A crop ``(x0, y0, x1, y1)`` in fractions of the image, then an optional flip.

    ``tile`` > 1: the crop is taken of a mosaic of ``tile`` x ``tile`` copies of the image,
    each shrunk by ``tile`` (so the mosaic is about the image's size, :func:`tiled`)."""

    x0: float = 0.0
    y0: float = 0.0
    x1: float = 1.0
    y1: float = 1.0
    flip: bool = False
    tile: int = 1

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1"):  # keys round-trip: coordinates are kept to 3 decimals
            object.__setattr__(self, name, round(float(getattr(self, name)), 3))
        if not (0.0 <= self.x0 < self.x1 <= 1.0 and 0.0 <= self.y0 < self.y1 <= 1.0):
            raise ProductLensError(f"bad view crop {self.key}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or not 1 <= self.tile <= MAX_TILE:
            raise ProductLensError(f"a view's tile must be an integer from 1 to {MAX_TILE}, got {self.tile!r}")

    @property
    def key(self) -> str:
        """A stable text key (used by the feature cache and in model configs)."""
        crop = f"{self.x0:.3f},{self.y0:.3f},{self.x1:.3f},{self.y1:.3f}"
        return crop + (",flip" if self.flip else "") + (f",tile{self.tile}" if self.tile > 1 else "")

    @classmethod
    def parse(cls, key: str) -> "View":
        """The inverse of :attr:`key`."""
        m = re.fullmatch(r"([^,]+),([^,]+),([^,]+),([^,]+)(,flip)?(?:,tile([0-9]+))?", str(key), re.ASCII)
        try:
            if m is None:
                raise ValueError(key)
            x0, y0, x1, y1 = (float(v) for v in m.groups()[:4])
        except ValueError:
            raise ProductLensError(f"bad view key {key!r}; expected 'x0,y0,x1,y1[,flip][,tileK]'") from None
        return cls(x0, y0, x1, y1, m.group(5) is not None, int(m.group(6) or 1))

    @property
    def is_identity(self) -> bool:
        return self == View()

    @property
    def zoom(self) -> float:
        """How much the crop enlarges the image (1 for the whole image)."""
        return 1.0 / min(self.x1 - self.x0, self.y1 - self.y0)

    def crop(self, img: Image.Image) -> Image.Image:
        """The crop of a decoded image, or of its mosaic (the flip is applied later, on the resized pixels)."""
        img = tiled(img, self.tile)
        if (self.x0, self.y0, self.x1, self.y1) == (0.0, 0.0, 1.0, 1.0):
            return img
        w, h = img.size
        box = (round(self.x0 * w), round(self.y0 * h), round(self.x1 * w), round(self.y1 * h))
        box = (min(box[0], w - 1), min(box[1], h - 1), max(box[2], box[0] + 1), max(box[3], box[1] + 1))
        return img.crop(box)


#: the most copies a side of a mosaic view holds
MAX_TILE = 8


def tiled(img: Image.Image, k: int) -> Image.Image:
    """A mosaic of ``k`` x ``k`` copies of ``img``, each shrunk by ``k`` to whole pixels (at least one), so
    the mosaic is about the image's size (``img`` itself for k = 1). Palette images are made RGB first."""
    if k <= 1:
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    w, h = img.size
    tw, th = max(1, round(w / k)), max(1, round(h / k))
    small = img.resize((tw, th), Image.Resampling.BILINEAR)
    out = Image.new(img.mode, (tw * k, th * k))
    for i in range(k):
        for j in range(k):
            out.paste(small, (i * tw, j * th))
    return out


def _crops(scale: float, flip: bool = False) -> list[View]:
    """The centre and four corner crops of side ``scale``."""
    m = (1.0 - scale) / 2
    spots = [(m, m), (0.0, 0.0), (1 - scale, 0.0), (0.0, 1 - scale), (1 - scale, 1 - scale)]
    return [View(x, y, x + scale, y + scale, flip) for x, y in spots]


#: the names :func:`view_set` knows
VIEW_SETS = ("none", "flip", "tta", "train", "regions", "shelf")
#: copies a side of the ``shelf`` view set's mosaic holds
SHELF_TILE = 2


def view_set(name: str) -> list[View]:
    """Named sets of views; the first view of every set is the whole image.

    ``none``: the whole image. ``flip``: plus its mirror. ``tta``: whole, mirror,
    centre crop 0.8 and its mirror. ``train``: whole and mirror, the centre and four
    corner crops of side 0.8 and mirrors of the corner crops (12 views).
    ``regions``: whole, centre crops 0.75 and 0.5 and the four corner crops 0.6
    (7 views; pooled by :class:`PooledViewEmbedder` into one multi-region descriptor).
    ``shelf``: the ``regions`` views of the image, then the same views of a 2 x 2 mosaic of
    it (14 views in two groups, :func:`view_groups`): a seller's photo of one item is also
    described as the shelf or bin of them that a shopper photographs.
    """
    whole = View()
    if name == "shelf":
        return [v for group in view_groups(name) for v in group]
    if name == "none":
        return [whole]
    if name == "regions":
        c75, c50 = (1 - 0.75) / 2, (1 - 0.5) / 2
        return [whole, View(c75, c75, 1 - c75, 1 - c75), *_crops(0.6)[1:], View(c50, c50, 1 - c50, 1 - c50)]
    if name == "flip":
        return [whole, View(flip=True)]
    c = (1 - 0.8) / 2
    if name == "tta":
        return [whole, View(flip=True), View(c, c, 1 - c, 1 - c), View(c, c, 1 - c, 1 - c, True)]
    if name == "train":
        return [whole, View(flip=True), *_crops(0.8), *_crops(0.8, flip=True)]
    raise ProductLensError(f"unknown view set {name!r}; known: {', '.join(VIEW_SETS)}")


def view_groups(name: str) -> list[list[View]]:
    """The view set ``name`` in the groups that :class:`PooledViewEmbedder` pools apart: ``shelf`` is
    ``regions`` and ``regions`` of the 2 x 2 mosaic; every other set is one group."""
    if name == "shelf":
        regions = view_set("regions")
        return [regions, [dataclasses.replace(v, tile=SHELF_TILE) for v in regions]]
    return [view_set(name)]


class ViewPreprocess:
    """An embedder's :class:`~productlens.models.embedders.base.Preprocess` applied to a view.

    Looks like the base preprocessing to the batch pipeline (``shape``, ``dtype``;
    ``size`` is enlarged by the view's zoom so that JPEG draft decoding keeps
    enough pixels for the crop). An image of twice ``size`` or more is first reduced
    (:func:`~productlens.data.images.reduce_for`), as the base preprocessing does for the
    whole image, so the identity view gives the base preprocessing's pixels.
    """

    def __init__(self, base, view: View) -> None:
        self.base = base
        self.view = view
        self.size = int(math.ceil(base.size * view.zoom))
        self.shape = base.shape
        self.dtype = base.dtype

    def __call__(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        pixels = self.base.pixels(self.view.crop(reduce_for(img, self.size)))
        if self.view.flip:
            pixels = np.ascontiguousarray(pixels[:, ::-1])
        return self.base.to_array(pixels, out)


class ViewEmbedder:
    """An embedder whose images are first cropped/flipped by ``view``."""

    def __init__(self, embedder, view: View) -> None:
        self.base = embedder
        self.view = view
        self.name = embedder.name
        self.dim = embedder.dim
        self.preprocess = ViewPreprocess(embedder.preprocess, view)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.base.embed(batch)


class PooledViewPreprocess:
    """Every view of ``views`` preprocessed, stacked: one row of a batch is ``(len(views), *base.shape)``."""

    def __init__(self, base, views: list[View]) -> None:
        if not views:
            raise ProductLensError("a pooled view set needs at least one view")
        self.base = base
        self.views = [ViewPreprocess(base, v) for v in views]
        self.size = max(v.size for v in self.views)
        self.shape = (len(views), *base.shape)
        self.dtype = base.dtype

    def __call__(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty(self.shape, self.dtype)
        # once for all views (a decoded upload may be a 12 MP photo); each view then reduces it to its own need
        img = reduce_for(img, self.size)
        for j, v in enumerate(self.views):
            v(img, out[j])
        return out


class StackedViewEmbedder:
    """An embedder whose vector of an image is the vectors of its views side by side.

    Each image is decoded once for all of ``views`` (at the size the closest crop
    needs), and all views of a batch go to the model together (``embed`` passes it at most
    :data:`~productlens.models.embedders.base.MODEL_BATCH` images a call). The output
    is ``len(views) * embedder.dim`` wide: block ``v`` is view ``v``'s L2-normalised
    vector, the one :class:`ViewEmbedder` gives from the same pixels.
    """

    def __init__(self, embedder, views: list[View]) -> None:
        self.base = embedder
        self.views = list(views)
        self.name = embedder.name
        self.dim = embedder.dim * len(self.views)
        self.preprocess = PooledViewPreprocess(embedder.preprocess, self.views)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        n, v = batch.shape[0], len(self.views)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.base.embed(batch.reshape(n * v, *batch.shape[2:])).reshape(n, self.dim)


class PooledViewEmbedder:
    """An embedder whose vector of an image is the L2-normalised sum of its views' vectors.

    With ``view_set("regions")`` this is a multi-region descriptor: a product
    that fills only part of a shopper's photo also counts through the crops
    that frame it. All views of a batch go to the model together (in calls of at most
    :data:`~productlens.models.embedders.base.MODEL_BATCH` images).
    Around a :class:`~productlens.models.embedders.joined.JoinedEmbedder`, only
    its main backbone sees every view; its companions see the whole image.

    ``groups``: the sizes of consecutive groups of ``views`` (default: one group). Each
    group is pooled into a unit vector and the vector is the L2-normalised sum of those,
    so each group weighs the same however many views it has (:func:`view_groups`).
    """

    def __init__(self, embedder, views: list[View], groups: Sequence[int] | None = None) -> None:
        self.base = embedder
        self.views = list(views)
        self.groups = [len(self.views)] if groups is None else [int(g) for g in groups]
        if sum(self.groups) != len(self.views) or min(self.groups, default=0) < 1:
            raise ProductLensError(f"view groups {self.groups} do not split {len(self.views)} views")
        self.name = embedder.name
        self.dim = embedder.dim
        self.preprocess = PooledViewPreprocess(embedder.preprocess, self.views)
        if hasattr(embedder, "companion") and not self.views[0].is_identity:
            raise ProductLensError("a joined embedder's companions see the first view, which must be the whole image")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        from productlens.models.embedders.base import l2_normalize

        n, v = batch.shape[0], len(self.views)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        main = getattr(self.base, "main", self.base)  # a joined embedder pools through its main backbone
        per_view = main.embed(batch.reshape(n * v, *batch.shape[2:])).reshape(n, v, -1)
        ends = np.cumsum(self.groups)
        pooled = [l2_normalize(per_view[:, e - g:e].sum(axis=1)) for g, e in zip(self.groups, ends)]
        vecs = pooled[0] if len(pooled) == 1 else l2_normalize(np.sum(pooled, axis=0))
        if main is self.base:
            return vecs
        return self.base.join(vecs, self.base.companion.embed(batch[:, 0]))  # companions: the whole image

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """PIL images -> L2-normalised pooled vectors (N x dim); see
        :func:`~productlens.models.embedders.base.embed_decoded`."""
        from productlens.models.embedders.base import embed_decoded

        return embed_decoded(self, images)


__all__ = ["VIEW_SETS", "PooledViewEmbedder", "PooledViewPreprocess", "StackedViewEmbedder", "View", "ViewEmbedder",
           "ViewPreprocess", "tiled", "view_groups", "view_set"]

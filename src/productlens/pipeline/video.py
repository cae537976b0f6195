"""Identify the product shown in a short video clip (live-stream style).

Steps, each bounded so that an hours-long file costs no more than a short one:

1. :func:`~productlens.data.video.sample_frames` reads at most ``max_frames``
   frames spread evenly over the clip (OpenCV's decoder; seeking, so the length
   does not matter; see :mod:`productlens.data.video`).
2. Blank frames (one flat colour: a black screen, a white flash; each colour
   channel's standard deviation under ``BLANK_STD``) are dropped, and a clip of
   nothing else is an error rather than a ranking of nothing. Blurred frames are
   dropped: a frame whose sharpness (variance of the Laplacian) is under
   ``BLUR_RATIO`` of the upper quartile of its ``BLUR_WINDOW`` nearest sampled
   frames is motion-blurred relative to its own scene (against the whole clip's
   median, a plain product shown after a busy one lost every frame; now the two
   frames next to the change at most). Near-duplicate frames (cosine of their
   vectors above ``DUPLICATE_COS`` with the last kept frame) are dropped too.
   Frames are timed by their own timestamps.
3. Each kept frame is searched in the catalog: the best detected product box
   when a detector is given, else the whole frame. With a catalog that reads
   print (built with ``--ocr``), the sharpest frames are OCR'd; their words and
   any ``text`` given (a title, a transcript) are fused as for photos (at
   ``config.GIVEN_TEXT_WEIGHT`` where the catalog has no weight of its own).
4. Aggregation over time: a product's clip score is the mean over frames of
   its score in each frame (its best item's cosine; a frame that did not
   retrieve it counts its lowest retrieved score). Each product lists the
   timestamps of the frames whose best product it was by the picture alone
   (text, the same for every frame, ranks the clip's products but does not
   say where each is seen).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from productlens.data.video import MAX_FRAMES, Frame, check_max_frames, sample_frames
from productlens.pipeline.catalog import Catalog
from productlens.types import ProductLensError, key_owner, product_key

log = logging.getLogger(__name__)

BLUR_RATIO = 0.35
BLUR_WINDOW = 9  # sampled frames: the frame itself and four on each side
BLUR_QUANTILE = 0.75  # of the window's sharpness: the sharp level of the scene while up to 2/3 of it is blurred
BLANK_STD = 2.0  # levels of 255 in every colour channel: a frame this flat shows nothing (noise on black is under 1)
DUPLICATE_COS = 0.985
OCR_FRAMES = 4
FRAME_K = 20  # products retrieved per frame


@dataclass
class ProductMatch:
    product_id: int | None  # None: a catalog item with no product (``id`` names it)
    title: str
    score: float
    times: list[float] = field(default_factory=list)  # frames whose best product this is
    id: int | None = None  # the item, when it has no product


@dataclass
class VideoResult:
    products: list[ProductMatch]
    frames_sampled: int
    frames_used: int
    dropped_blurred: int
    dropped_duplicates: int
    duration: float
    frame_top: list[tuple[float, int | None, int | None]]  # (time, best product, its item if none) a frame
    dropped_blank: int = 0
    dropped_unusable: int = 0  # frames the embedder refused (too small, for one)


def is_blank(img: Image.Image) -> bool:
    """Whether a frame is one flat colour: each of its red, green and blue levels has a standard
    deviation under ``BLANK_STD`` (a red product on a green ground of the same brightness is not)."""
    g = img.convert("RGB")
    if g.width > 256:
        g = g.resize((256, max(1, round(g.height * 256 / g.width))))
    return float(np.asarray(g, np.float32).reshape(-1, 3).std(axis=0).max()) < BLANK_STD


def sharpness(img: Image.Image) -> float:
    """Variance of the Laplacian of the grey image (low for blurred frames), at most 256 px wide."""
    import cv2

    g = np.asarray(img.convert("L"), np.float32)
    if g.shape[1] > 256:
        f = 256 / g.shape[1]
        g = cv2.resize(g, (256, max(1, round(g.shape[0] * f))), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


def identify_video(catalog: Catalog, path: str | os.PathLike, *, detector: Any = None, text: str | None = None,
                   k: int = 5, max_frames: int = MAX_FRAMES, text_weight: float | None = None) -> VideoResult:
    """Rank the catalog's products for a clip (see the module docstring for the steps).

    ``text`` (a title or transcript given with the clip) is fused at the catalog's
    text weight; ``text_weight`` overrides it. A catalog that has none (built
    without ``--ocr --train``, e.g. from a products.jsonl) fuses a given text at
    ``config.GIVEN_TEXT_WEIGHT``.
    """
    if k < 1:
        raise ProductLensError(f"k must be at least 1, got {k}")
    check_max_frames(max_frames)  # before the catalog or the clip is read
    if text_weight is not None and not 0 <= text_weight < float("inf"):  # inf gave NaN scores
        raise ProductLensError(f"the text weight must be >= 0 and finite, got {text_weight}")
    catalog.check_not_empty()  # before the clip is decoded
    frames, duration = sample_frames(path, max_frames)
    sampled = len(frames)
    frames = [f for f in frames if not is_blank(f.image)]
    if not frames:
        raise ProductLensError(f"{path}: no usable frame: all {sampled} sampled frames are blank (one flat colour)")
    sharp = np.array([sharpness(f.image) for f in frames])
    keep = ~blurred_frames(sharp)
    blurred = int((~keep).sum())
    frames = [f for f, kf in zip(frames, keep) if kf]
    boxes = [None] * len(frames)
    if detector is not None:
        from productlens.pipeline.detect import best_boxes

        boxes = best_boxes(detector, [f.image for f in frames], boxes, progress=False)
    res = catalog.embed_queries([f.image for f in frames], boxes)
    if not len(res.ok):
        raise ProductLensError(f"{path}: no usable frame: {res.errors[0][2] if res.errors else 'none embedded'}")
    vecs = res.vectors
    unusable = len(frames) - len(res.ok)
    frames = [frames[i] for i in res.ok]
    boxes = [boxes[i] for i in res.ok]
    kept: list[int] = []
    for i in range(len(frames)):
        if not kept or float(vecs[i] @ vecs[kept[-1]]) < DUPLICATE_COS:
            kept.append(i)
    duplicates = len(frames) - len(kept)
    frames, vecs, boxes = [frames[i] for i in kept], vecs[kept], [boxes[i] for i in kept]
    weight = catalog.text_weight_for(bool(text)) if text_weight is None else text_weight
    texts = _frame_texts(catalog, frames, boxes, text) if weight > 0 else None
    n_items = len(catalog.store)
    scores, ids = catalog.search_vectors(vecs, min(n_items, FRAME_K * 5), texts=texts, text_weight=weight)
    per_frame, titles = _product_scores(catalog, scores, ids)
    if not any(per_frame):  # every hit removed by another process since the search
        raise ProductLensError(f"{path}: no catalog item matched a frame (was the catalog emptied meanwhile?)")
    products = sorted({p for d in per_frame for p in d})
    table = np.array([[d.get(p, min(d.values())) for p in products] for d in per_frame if d])
    clip = table.mean(0)
    order = np.argsort(-clip, kind="stable")[:k]
    if texts is not None:  # where a product is seen is the picture's say: one text for every frame would put
        # the product it names on frames that show another
        per_frame = _product_scores(catalog, *catalog.search_vectors(vecs, min(n_items, FRAME_K * 5)))[0]
    top = [max(d, key=d.get) if d else None for d in per_frame]  # None: its hits were removed meanwhile
    matches = []
    for j in order:
        pid, item = key_owner(products[j])
        matches.append(ProductMatch(pid, titles.get(products[j], ""), float(clip[j]),
                                    [round(f.time, 2) for f, t in zip(frames, top) if t == products[j]], id=item))
    return VideoResult(matches, sampled, len(frames), blurred, duplicates, round(duration, 2),
                       [(round(f.time, 2), *key_owner(t)) for f, t in zip(frames, top) if t is not None],
                       sampled - len(sharp), unusable)


def blurred_frames(sharp: np.ndarray) -> np.ndarray:
    """Which frames are blurred, given their sharpness in order: under ``BLUR_RATIO`` of the ``BLUR_QUANTILE``
    of the ``BLUR_WINDOW`` frames around each (itself included; fewer at the clip's ends)."""
    sharp = np.asarray(sharp, np.float64)
    half = BLUR_WINDOW // 2
    local = np.array([np.quantile(sharp[max(0, i - half):i + half + 1], BLUR_QUANTILE) for i in range(len(sharp))])
    return sharp < BLUR_RATIO * local


def _frame_texts(catalog: Catalog, frames: list[Frame], boxes: list, text: str | None) -> list[str] | None:
    """One text for all frames: OCR of the sharpest few (when the catalog reads print) plus ``text``."""
    words = ""
    if catalog.uses_ocr:
        from productlens.pipeline.fusion import ocr_texts

        best = np.argsort([-sharpness(f.image) for f in frames])[:OCR_FRAMES]
        words = " ".join(ocr_texts([frames[i].image for i in best], [boxes[i] for i in best]))
    joined = " ".join(s for s in (words, text or "") if s)
    return [joined] * len(frames) if joined else None


def _product_scores(catalog: Catalog, scores: np.ndarray, ids: np.ndarray) -> tuple[list[dict], dict[int, str]]:
    """Per frame: {product: best item score}; items without a product count as products of their own."""
    valid = np.unique(ids[ids >= 0])
    meta = dict(zip(valid.tolist(), catalog.store.get(valid)))
    titles: dict[int, str] = {}
    out = []
    for srow, irow in zip(scores, ids):
        d: dict[int, float] = {}
        for s, i in zip(srow.tolist(), irow.tolist()):
            md = meta.get(i)
            if i < 0 or md is None:  # md None: removed by another process since the search
                continue
            p = product_key(i, md.get("product_id"))
            titles.setdefault(p, md.get("title") or md.get("image", ""))
            if s > d.get(p, -np.inf):
                d[p] = float(s)
        out.append(d)
    return out, titles

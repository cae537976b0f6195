"""Spatial verification: re-rank the top results by local features that agree on a geometry.

A global embedding confuses two cartons of one brand, or a product it was never
trained on with a trained look-alike. Local features settle many of these: the
query photo and each of its top ``top`` results are described by SIFT keypoints
(RootSIFT descriptors, Lowe's ratio test), and a homography is fitted to the
matches with RANSAC. Printed packages give dozens of inliers with their own
seller photo and a handful with anything else; fruit and vegetables give few
with everything, so their ranking is left as it was. A result's score gains
``weight * clip((inliers - min_inliers) / FULL_AT, 0, 1)``, then the top is re-sorted.

Chosen on the train-only development splits (``benchmarks/dev_verify.py``; no val
photo read): top 10, at least 15 inliers, weight 0.3. On frozen features with the
adapter (mean of 3 draws of 4 queries per product), dev-open (products never trained
on) went 0.633 -> 0.695 (packages 0.706 -> 0.833), dev-session 0.723 -> 0.729 and
dev-closed 0.811 -> 0.819. It costs 3-5 ms per query-result pair on this machine.

Photos are described at most ``LONG_SIDE`` pixels on the long side (the scale the
thresholds were chosen at). Gallery photos are read from the path in each item's
metadata when first needed and their features kept in memory (``cache_size``
items); a gallery photo that cannot be read any more keeps its score (logged once).
Needs OpenCV (``opencv-python``, installed with the ``torch`` extra).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from productlens.data.images import load_image, reduce_for
from productlens.types import ImageError, ProductLensError

log = logging.getLogger(__name__)

TOP = 10            # results re-ranked per query
MIN_INLIERS = 15    # fewer RANSAC inliers than this: no evidence
FULL_AT = 30        # inliers above MIN_INLIERS that give the full weight
WEIGHT = 0.3        # score added at full evidence (scores are cosines of unit vectors)
LONG_SIDE = 224     # photos are described at most this long on their long side
MAX_KEYPOINTS = 1000
RATIO = 0.8         # Lowe's ratio test
RANSAC_PX = 8.0     # reprojection error of a homography inlier, in pixels at LONG_SIDE


@dataclass
class LocalFeatures:
    """Keypoint positions (n x 2, float32) and RootSIFT descriptors (n x 128, float32)."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return int(self.points.shape[0])


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ProductLensError("spatial verification needs OpenCV: pip install 'productlens[torch]' "
                               "(or opencv-python-headless), or turn it off (--no-verify)") from None
    return cv2


def available() -> bool:
    """Whether OpenCV, which verification needs, can be imported."""
    try:
        _cv2()
    except ProductLensError:
        return False
    return True


def resolve(verify: bool | None) -> bool:
    """``verify`` as asked: None means on where OpenCV is installed; True without it is an error."""
    if verify is None:
        return available()
    if verify:
        _cv2()
    return bool(verify)


def local_features(img: Image.Image) -> LocalFeatures:
    """SIFT keypoints of an RGB image scaled to at most ``LONG_SIDE`` pixels, RootSIFT-normalised."""
    cv2 = _cv2()
    gray = reduce_for(img, LONG_SIDE).convert("L")  # a large photo: reduced before anything else
    scale = LONG_SIDE / max(gray.size)
    if scale < 1:
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                           Image.Resampling.BILINEAR)
    sift = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
    kps, desc = sift.detectAndCompute(np.asarray(gray), None)
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32))
    desc = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))
    return LocalFeatures(np.float32([k.pt for k in kps]), desc.astype(np.float32))


def inliers(a: LocalFeatures, b: LocalFeatures) -> int:
    """Matches of ``a`` in ``b`` (ratio test) that fit one homography (RANSAC); 0 if under 8 matches."""
    if len(a) < 8 or len(b) < 8:
        return 0
    cv2 = _cv2()
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 8:
        return 0
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX)
    return 0 if mask is None else int(mask.sum())


def boost(n_inliers: np.ndarray, weight: float = WEIGHT, min_inliers: int = MIN_INLIERS) -> np.ndarray:
    """Score added for ``n_inliers``: 0 up to ``min_inliers``, rising linearly to ``weight``."""
    return weight * np.clip((np.asarray(n_inliers, np.float32) - min_inliers) / FULL_AT, 0.0, 1.0)


class SpatialVerifier:
    """Re-ranks search results with :func:`inliers`; gallery features are cached by item id
    (a catalog has the changed items' features forgotten, and makes a new verifier when another process wrote).

    ``metadata``: returns the metadata dicts of item ids (a store's ``get``); the
    photo is read from ``"image"`` (relative paths are tried against ``root`` too).
    """

    def __init__(self, metadata: Callable[[Sequence[int]], list[dict | None]], *, root: Path | None = None,
                 top: int = TOP, weight: float = WEIGHT, cache_size: int = 20_000) -> None:
        self.metadata = metadata
        self.root = root
        self.top = top
        self.weight = weight
        self.cache_size = cache_size
        self._cache: OrderedDict[int, LocalFeatures | None] = OrderedDict()
        self._warned = False

    def _path(self, md: dict | None) -> Path | None:
        if not md or not md.get("image"):
            return None
        p = Path(md["image"])
        if not p.is_absolute() and not p.exists() and self.root is not None and (self.root / p).exists():
            p = self.root / p
        return p

    def forget(self, ids: Sequence[int]) -> None:
        """Drop the cached features of items ``ids`` (changed or removed): read again when next needed."""
        for i in ids:
            self._cache.pop(int(i), None)

    def gallery_features(self, ids: Sequence[int]) -> list[LocalFeatures | None]:
        """Features of gallery items (None where the photo cannot be read)."""
        missing = sorted({int(i) for i in ids if int(i) not in self._cache})
        for i, md in zip(missing, self.metadata(missing) if missing else []):
            path = self._path(md)
            feats = None
            if path is not None:
                try:
                    feats = local_features(load_image(path, target=LONG_SIDE))
                except (ImageError, OSError) as exc:
                    if not self._warned:
                        log.warning("spatial verification skips gallery photos it cannot read, e.g. %s", exc)
                        self._warned = True
            self._cache[i] = feats
        out = []
        for i in ids:
            self._cache.move_to_end(int(i))
            out.append(self._cache[int(i)])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def rerank(self, scores: np.ndarray, ids: np.ndarray, queries: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Re-sort each row's first ``top`` results by score + :func:`boost` of their inliers.

        ``queries``: one RGB image (or ready :class:`LocalFeatures`, or None to leave
        the row alone) per row of ``scores`` / ``ids`` (best first, -1 = none).
        """
        scores, ids = np.array(scores, np.float32), np.array(ids, np.int64)
        top = min(self.top, ids.shape[1]) if ids.ndim == 2 else 0
        for r, q in enumerate(queries):
            if q is None or top == 0:
                continue
            qf = q if isinstance(q, LocalFeatures) else local_features(q)
            cand = ids[r, :top]
            valid = np.flatnonzero(cand >= 0)
            if valid.size == 0 or len(qf) == 0:
                continue
            gf = self.gallery_features(cand[valid].tolist())
            n = np.array([0 if g is None else inliers(qf, g) for g in gf])
            s = scores[r, :top].copy()
            s[valid] += boost(n, self.weight)
            order = np.argsort(-s, kind="stable")
            scores[r, :top], ids[r, :top] = s[order], cand[order]
        return scores, ids

"""Batch ranking in the AIcrowd Visual Product Recognition 2023 format.

``queries.csv`` (user_img_id, img_path, bbox_x, bbox_y, bbox_w, bbox_h) against a
catalog built from ``gallery.csv`` -> an N x k int32 array of seller_img_id,
best first, one row per query in file order (the challenge's submission .npy).
A query image that cannot be read is reported and its row filled with -1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from productlens.fileio import atomic_path, check_output_file
from productlens.models.detectors.runtime import Detector
from productlens.pipeline.catalog import Catalog
from productlens.types import Item, ProductLensError

log = logging.getLogger(__name__)


def rank_queries(catalog: Catalog, queries: Sequence[Item], k: int = 1000, *, rerank: bool = True,
                 group_by_product: bool = False, progress: bool = True, detector: Detector | None = None,
                 batch: int = 256, verify: bool | None = None) -> tuple[np.ndarray, list]:
    """Rank the catalog for every query; returns (N x k int64 ids padded with -1, errors).

    ``detector``: queries without a box are searched with their best detected box.
    A catalog with a text weight fuses each query's OCR words (and its ``extra["text"]``).
    ``verify``: spatial verification of each query's top results
    (:mod:`productlens.pipeline.verify`; default: on where OpenCV is installed).
    """
    from productlens.pipeline.verify import resolve

    if int(k) < 1:
        raise ProductLensError(f"k must be a positive integer, got {k}")
    catalog.check_not_empty()  # before the queries are embedded
    verify = resolve(verify)
    k_eff = min(k, len(catalog))
    out = np.full((len(queries), k), -1, dtype=np.int64)
    boxes = [q.box for q in queries]
    if detector is not None:
        from productlens.pipeline.detect import best_boxes

        boxes = best_boxes(detector, [q.image for q in queries], boxes, progress=progress)
    res = catalog.embed_queries(queries, boxes, progress=progress)
    ok = [queries[i] for i in res.ok]
    texts = catalog.query_texts([q.image for q in ok], [boxes[i] for i in res.ok],
                                [q.extra.get("text") for q in ok], progress=progress)
    for start in range(0, len(res.ok), batch):
        rows = res.ok[start:start + batch]
        images = [_query_image(queries[i].image, boxes[i]) for i in rows] if verify else None
        _, ids = catalog.search_vectors(res.vectors[start:start + batch], k_eff, rerank=rerank,
                                        group_by_product=group_by_product,
                                        texts=None if texts is None else texts[start:start + batch],
                                        verify=images)
        out[rows, :ids.shape[1]] = ids  # fewer when another process removed items meanwhile
    return out, res.errors


def _query_image(source, box):
    """The query photo (cropped to its box) for spatial verification; None if it cannot be read again."""
    from productlens.data.images import load_image
    from productlens.pipeline.verify import LONG_SIDE
    from productlens.types import ProductLensError

    try:
        return load_image(source, box=box, target=LONG_SIDE)
    except (ProductLensError, OSError) as exc:
        log.warning("query %s: not verified: %s", source, exc)
        return None


INT32_MAX = int(np.iinfo(np.int32).max)


def check_submission_ids(ids: np.ndarray) -> None:
    """ProductLensError when an id does not fit the challenge's int32 array (it would wrap around)."""
    if len(ids) and int(np.max(ids)) > INT32_MAX:
        raise ProductLensError(f"seller_img_id {int(np.max(ids))} does not fit the AIcrowd rankings array "
                               f"(int32, at most {INT32_MAX}); number the gallery's photos below that")


def rankings_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if the rankings array can be written there: a ``.npy`` name (never a photo or csv
    the command reads), a file and not a folder. Checked before the ranking."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise ProductLensError(f"{path}: the rankings array is written as .npy (numpy's format, as the challenge "
                               "takes it)")
    return check_output_file(path)


def save_rankings(rankings: np.ndarray, path: str | os.PathLike) -> Path:
    """Write the rankings .npy (int32, the challenge's submission) atomically (temp file + rename)."""
    rankings_path(path)
    check_submission_ids(rankings)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, rankings.astype(np.int32))
    return Path(path)

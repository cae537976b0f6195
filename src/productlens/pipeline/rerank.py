"""Re-ranking by neighbourhood averaging of unit vectors.

* alpha-QE (query expansion): the query is replaced by itself plus its top-k
  gallery neighbours weighted by similarity**alpha, then searched again.
* DBA (database-side augmentation): each gallery vector is replaced by the
  weighted mean of its own top-k neighbours (itself included).

Measured on train-only development splits: alpha-QE with k=2 helps galleries
with several photos per product and is neutral otherwise, so it is on by
default; DBA hurts galleries with one photo per product, so it is off.
"""

from __future__ import annotations

import numpy as np

from productlens.models.embedders.base import l2_normalize


def _weighted_sum(sims: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """sum_j max(sims[:, j], 0)**alpha * neighbours[:, j]; non-finite sims (padding) weigh 0."""
    w = np.where(np.isfinite(sims), np.maximum(sims, 0.0), 0.0) ** alpha
    return (w.astype(np.float32)[:, :, None] * neighbours).sum(axis=1)


def alpha_qe(queries: np.ndarray, sims: np.ndarray, neighbours: np.ndarray, alpha: float = 3.0) -> np.ndarray:
    """Expanded queries: ``queries`` (N x d) plus their top-k results ``neighbours``
    (N x k x d) weighted by ``sims`` (N x k) to the power ``alpha``."""
    return l2_normalize(queries + _weighted_sum(sims, neighbours, alpha))


def dba(gallery: np.ndarray, k: int = 2, alpha: float = 3.0, block: int = 4096) -> np.ndarray:
    """Database-side augmentation of the gallery (exact neighbours, in blocks)."""
    out = np.empty_like(gallery)
    k = min(k, len(gallery))
    for start in range(0, len(gallery), block):
        s = gallery[start:start + block] @ gallery.T
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        sims = np.take_along_axis(s, idx, 1)
        out[start:start + block] = _weighted_sum(sims, gallery[idx], alpha)
    return l2_normalize(out)


def group_by_product(scores: np.ndarray, ids: np.ndarray, valid: np.ndarray, products: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row of ``(scores, ids)`` (ids -1: padding) by its product's best score, then the item's
    own score; the scores returned are the products'. ``valid``: the sorted item ids, ``products`` their
    product ids (-1: none; such an item is a group of its own)."""
    prod = np.full(ids.shape, -1, np.int64)
    if len(valid):
        pos = np.searchsorted(valid, np.maximum(ids, 0)).clip(max=len(valid) - 1)
        prod = np.where((ids >= 0) & (valid[pos] == ids), products[pos], -1)
    # an item without a product is its own group: a key no product can have
    own = -(np.arange(ids.size, dtype=np.int64).reshape(ids.shape) + 2)
    key = np.where(prod >= 0, prod, own)
    rows = np.repeat(np.arange(len(ids)), ids.shape[1]).reshape(ids.shape)
    _, group = np.unique(np.stack([rows.ravel(), key.ravel()], 1), axis=0, return_inverse=True)
    best = np.full(group.max() + 1 if group.size else 0, -np.inf, np.float32)
    np.maximum.at(best, group.ravel(), scores.ravel().astype(np.float32))
    product_score = np.where(ids >= 0, best[group.reshape(ids.shape)], -np.inf).astype(np.float32)
    own_score = np.where(ids >= 0, scores, -np.inf)
    order = np.lexsort((-own_score, -product_score), axis=-1)
    return np.take_along_axis(product_score, order, 1), np.take_along_axis(ids, order, 1)

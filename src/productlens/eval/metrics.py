"""Retrieval metrics, one implementation shared by tests, benchmarks and the CLI.

``rankings`` are N x K arrays of gallery indices (positions in the gallery's label array, not
ids), best first, -1 for padding; ``relevant`` tells, per query, which of them show the query's
product.
"""

from __future__ import annotations

import numpy as np

from productlens.types import ProductLensError


def relevance(rankings: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Boolean N x K matrix: does ranked gallery item j show query i's product.

    ``rankings`` index into ``gallery_labels``; -1 entries (padding) never match,
    and neither do distractors (label -1).
    """
    rankings = np.asarray(rankings)
    labels = np.asarray(gallery_labels)
    _check_no_repeats(rankings)
    valid = rankings >= 0
    ranked = np.where(valid, labels[np.clip(rankings, 0, None)], -1)
    q = np.asarray(query_labels)[:, None]
    return valid & (ranked == q) & (q != -1)


def _check_no_repeats(rankings: np.ndarray) -> None:
    """A gallery item ranked twice for one query would count as two hits (AP above 1); the AIcrowd
    scorer refuses such rows too ("Repeated images in retrieval results")."""
    if rankings.ndim != 2 or not rankings.size:
        return
    s = np.sort(rankings, axis=1)
    repeat = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    if repeat.any():
        row = int(np.flatnonzero(repeat.any(axis=1))[0])
        item = int(s[row, 1:][repeat[row]][0])
        raise ProductLensError(f"ranking row {row} lists gallery index {item} more than once; each gallery "
                               "photo is ranked once")


def same_product(found: object, truth: object) -> bool:
    """Whether a result of product ``found`` shows a query's product ``truth`` (one item of
    :func:`relevance`): unknown (None) and distractors (-1) match nothing."""
    return truth is not None and found is not None and int(truth) != -1 and int(found) == int(truth)


def average_precision_at_k(rel: np.ndarray, n_positives: np.ndarray, k: int = 1000) -> np.ndarray:
    """AIcrowd VPR AP@k per query: sum of precision@i at hits in the top k,
    divided by min(number of positives, k). Queries with no positive score 0."""
    rel = np.asarray(rel, dtype=bool)[:, :k]
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    prec_sum = (np.where(rel, hits / ranks, 0.0)).sum(axis=1)
    denom = np.minimum(np.asarray(n_positives), k)
    return np.where(denom > 0, prec_sum / np.maximum(denom, 1), 0.0)


def _relevance_and_positives(rankings: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    gallery_labels = np.asarray(gallery_labels)
    query_labels = np.asarray(query_labels)
    rel = relevance(rankings, gallery_labels, query_labels)
    uniq, counts = np.unique(gallery_labels[gallery_labels != -1], return_counts=True)
    pos_of = dict(zip(uniq.tolist(), counts.tolist()))
    n_pos = np.array([pos_of.get(int(q), 0) if q != -1 else 0 for q in query_labels])
    return rel, n_pos


def per_query_ap(rankings: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray,
                 k: int = 1000) -> np.ndarray:
    """AP@k of each query (the values :func:`retrieval_metrics` averages into mAP@k)."""
    return average_precision_at_k(*_relevance_and_positives(rankings, gallery_labels, query_labels), k)


def retrieval_metrics(rankings: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray,
                      k: int = 1000) -> dict[str, float]:
    """mAP@k (AIcrowd definition), top-1, top-5 and recall@10 of ``rankings``.

    top-n: the share of queries with a correct item among the first n.
    recall@10: the positives found in the first 10 over the query's positives capped at 10 (so a
    top 10 of positives is 1.0), averaged. A row that ranks one gallery item twice is refused.
    """
    rel, n_pos = _relevance_and_positives(rankings, gallery_labels, query_labels)
    ap = average_precision_at_k(rel, n_pos, k)
    recall10 = np.where(n_pos > 0, rel[:, :10].sum(1) / np.maximum(np.minimum(n_pos, 10), 1), 0.0)
    # recall@10 as the share of positives (capped at 10, so a perfect top-10 is 1.0)
    return {
        f"map@{k}": float(ap.mean()) if len(ap) else 0.0,
        "top1": float(rel[:, :1].any(1).mean()) if len(rel) else 0.0,
        "top5": float(rel[:, :5].any(1).mean()) if len(rel) else 0.0,
        "recall@10": float(recall10.mean()) if len(rel) else 0.0,
    }

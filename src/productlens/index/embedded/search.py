"""Exact search over a snapshot's memory-mapped segments, candidate re-scoring, top-k merging.

All functions score by inner product and return ``(scores, ids)`` of shape
(nq, k), best first (ties by id), padded with ``-inf`` / ``-1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..base import pad_results
from .segments import BLOCK_ROWS, f32, read_rows
from .snapshot import Snapshot

SCORE_BUDGET = 64 * 1024 * 1024  # float32 entries of a (queries x rows) score block


def topk_merge(
    best_s: np.ndarray | None, best_i: np.ndarray | None, s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidate scores/ids (nq, m) into the running best (nq, <=k)."""
    if best_s is not None:
        s = np.concatenate([best_s, s], axis=1)
        i = np.concatenate([best_i, i], axis=1)
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(s, part, axis=1).min(axis=1, keepdims=True)
        cut = np.flatnonzero((s == kth).sum(axis=1) > (np.take_along_axis(s, part, axis=1) == kth).sum(axis=1))
        for r in cut:  # items tied with the k-th score were left out at random: keep the lowest ids, as finish sorts
            above = np.flatnonzero(s[r] > kth[r, 0])
            tied = np.flatnonzero(s[r] == kth[r, 0])
            part[r] = np.concatenate([above, tied[np.argsort(i[r, tied], kind="stable")][: k - above.size]])
        s = np.take_along_axis(s, part, axis=1)
        i = np.take_along_axis(i, part, axis=1)
    return s, i


def floored(s: np.ndarray) -> np.ndarray:
    """``s`` with -inf (an inner product that overflowed below float32's range) raised to the lowest finite
    score, in place: -inf marks padding and masked rows (:func:`finish`), and such an item was dropped."""
    return np.maximum(s, np.finfo(np.float32).min, out=s)


def finish(s: np.ndarray | None, i: np.ndarray | None, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort (best first, ties by id), mark -inf as id -1 and pad to k columns."""
    out_s, out_i = pad_results(nq, k)
    if s is None or s.shape[1] == 0:
        return out_s, out_i
    s = s.astype(np.float32, copy=False)
    i = i.astype(np.int64, copy=True)
    i[np.isnan(s) | (s == -np.inf)] = -1  # padding; +inf (an inner product that overflowed) is still the best hit
    s = np.where(i < 0, np.float32(-np.inf), s)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s), axis=1)
    s = np.take_along_axis(s, order, axis=1)
    i = np.take_along_axis(i, order, axis=1)
    m = min(k, s.shape[1])
    out_s[:, :m] = s[:, :m]
    out_i[:, :m] = i[:, :m]
    return out_s, out_i


def exact_segments(
    snap: Snapshot, q: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the memory-mapped segments (dead / filtered rows masked).

    Segments that fit in memory are scored through their maps, which stay faulted in between queries; a
    copy of each block read from the file (:func:`read_rows`) had cost 330 ms a query at 100k x 1280
    against 45 ms through the map, warm. Maps advised random (segments larger than half the memory) are
    read block by block with :func:`read_rows`, where faulting them in would cost a fault per 4 KB."""
    nq = q.shape[0]
    qstep = max(1, SCORE_BUDGET // BLOCK_ROWS)
    out_s, out_i = pad_results(nq, k)
    for q0 in range(0, nq, qstep):
        qc = q[q0 : q0 + qstep]
        best_s = best_i = None
        for seg in snap.segs.values():
            for b0 in range(0, seg.row_ids.size, BLOCK_ROWS):
                rid = seg.row_ids[b0 : b0 + BLOCK_ROWS]
                valid = rid >= 0
                if allowed is not None:
                    valid &= np.isin(rid, allowed)
                nvalid = int(np.count_nonzero(valid))
                if nvalid == 0:
                    continue
                x = read_rows(seg.vecs, b0, b0 + rid.size) if snap.random else seg.vecs[b0 : b0 + rid.size]
                if nvalid < rid.size // 2:  # mostly masked: score only the valid rows
                    idx = np.flatnonzero(valid)
                    s, ids_b = floored(qc @ f32(x[idx]).T), rid[idx]
                else:
                    s, ids_b = floored(qc @ f32(x).T), rid
                    if nvalid < rid.size:
                        s[:, ~valid] = -np.inf
                best_s, best_i = topk_merge(best_s, best_i, s, np.broadcast_to(ids_b, s.shape), k)
        out_s[q0 : q0 + qstep], out_i[q0 : q0 + qstep] = finish(best_s, best_i, qc.shape[0], k)
    return out_s, out_i


def exact_subset(snap: Snapshot, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the vectors of ``ids`` (gathered chunk by chunk)."""
    nq = q.shape[0]
    qstep = max(1, SCORE_BUDGET // BLOCK_ROWS)
    best: list[tuple[Any, Any]] = [(None, None)] * len(range(0, nq, qstep))
    for a in range(0, ids.size, BLOCK_ROWS):
        chunk = ids[a : a + BLOCK_ROWS]
        x = snap.gather(chunk)
        for j, q0 in enumerate(range(0, nq, qstep)):
            s = floored(q[q0 : q0 + qstep] @ x.T)
            best[j] = topk_merge(*best[j], s, np.broadcast_to(chunk, s.shape), k)
    out_s, out_i = pad_results(nq, k)
    for j, q0 in enumerate(range(0, nq, qstep)):
        n = min(qstep, nq - q0)
        out_s[q0 : q0 + n], out_i[q0 : q0 + n] = finish(*best[j], n, k)
    return out_s, out_i


def rescore(snap: Snapshot, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for candidate ids (nq, m; -1 = none), top k of them."""
    nq = q.shape[0]
    dim = snap.dim
    out_s, out_i = pad_results(nq, k)
    step = max(1, (16 << 20) // max(1, cand.shape[1] * dim))  # gathered floats per chunk
    for a in range(0, nq, step):
        c = cand[a : a + step]
        valid = c >= 0
        uniq, inv = np.unique(np.where(valid, c, -1), return_inverse=True)
        inv = inv.reshape(c.shape)
        has_pad = uniq.size and uniq[0] < 0
        x = snap.gather(uniq[1:] if has_pad else uniq)
        if has_pad:
            x = np.concatenate([np.zeros((1, dim), np.float32), x])
        s_all = floored(q[a : a + step] @ x.T)
        s = np.take_along_axis(s_all, inv, axis=1)
        s[~valid] = -np.inf
        best_s, best_i = topk_merge(None, None, s, c, k)
        out_s[a : a + step], out_i[a : a + step] = finish(best_s, best_i, c.shape[0], k)
    return out_s, out_i

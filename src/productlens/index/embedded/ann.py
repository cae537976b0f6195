"""The approximate index: a FAISS IVF index with 8-bit scalar-quantised residuals.

``IndexIVFScalarQuantizer`` (inner product, spherical k-means) proposes
``rerank * k`` candidates that are re-scored exactly from the segments.
``nprobe`` is tuned at build time (see :meth:`AnnIndex.tune_nprobe`). After
writes the index is patched (``remove_ids`` + ``add_with_ids`` for the changed
ids) rather than rebuilt, unless the change is large. It is persisted as
``ann-<vgen>.faiss`` (the vector generation it reflects) and loaded from there
by the next process, but is only an optimisation: it can always be rebuilt
from the segments.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from ...types import ProductLensError
from .search import exact_segments, rescore
from .segments import ANN_RE, BLOCK_ROWS, f32, fsync_dir, read_rows, tmp_path
from .snapshot import Snapshot

log = logging.getLogger(__name__)

try:  # faiss is a hard dependency of the project, but keep the exact path usable without it
    import faiss
except ImportError:  # pragma: no cover
    faiss = None


def set_threads(n: int) -> None:
    """Threads faiss may use (a no-op without faiss)."""
    if faiss is not None:
        faiss.omp_set_num_threads(n)


def require_faiss() -> None:
    if faiss is None:  # pragma: no cover
        raise ProductLensError("the approximate index needs faiss (pip install faiss-cpu)")


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc only; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _index_ids(index: Any) -> np.ndarray:
    """Sorted ids held by an IVF index."""
    inv = index.invlists
    parts = []
    for lst in range(index.nlist):
        size = inv.list_size(lst)
        if size:
            parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), size).copy())
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


class AnnIndex:
    """A store's approximate index (``index``, None until needed) and the state it reflects.

    ``vgen`` is the vector generation the index is up to date with, ``ids``
    the sorted ids it holds, ``pending`` the changes patched in memory since
    the file was last written. Options are those of
    :class:`~productlens.index.embedded.EmbeddedStore` (``nlist``, ``nprobe``:
    None = automatic).
    """

    def __init__(
        self, path: Path, dim: int, token: str, *, nlist: int | None, nprobe: int | None,
        target_recall: float, rerank: int,
    ) -> None:
        self.path = path
        self.dim = dim
        self.token = token
        self.nlist = nlist
        self.nprobe = nprobe
        self.target_recall = target_recall
        self.rerank = rerank
        self.index: Any = None
        self.vgen = -1
        self.ids: np.ndarray | None = None
        self.pending = 0

    def clear(self) -> None:
        self.index = None
        self.ids = None

    # ------------------------------------------------------------- building
    def ideal_nlist(self, n: int) -> int:
        if self.nlist is not None:
            return self.nlist
        return int(min(65536, max(16, round(2 * math.sqrt(n)))))

    def usable(self, index: Any, n: int) -> bool:
        """Whether ``index`` suits ``n`` items (dim, and nlist within 4x of the ideal)."""
        if index is None or index.d != self.dim:
            return False
        ideal = self.ideal_nlist(n)
        if self.nlist is not None:
            return index.nlist == self.nlist
        return ideal / 4 <= index.nlist <= ideal * 4

    def ensure(self, snap: Snapshot, db: sqlite3.Connection) -> Any:
        """The index, up to date with ``snap``: kept, loaded from its file, patched or built."""
        require_faiss()
        n = snap.n_live
        if self.index is not None and not self.usable(self.index, n):
            self.index = None
        if self.index is None:
            self._load_file(snap.vgen)
            if self.index is not None and not self.usable(self.index, n):
                self.index = None
        if self.index is not None and self.vgen != snap.vgen:
            if not self._patch(snap, db):
                self.index = None
        if self.index is None:
            self._build(snap)
        if self.nprobe is not None:
            self.index.nprobe = min(self.nprobe, self.index.nlist)
        return self.index

    def _load_file(self, max_vgen: int) -> None:
        files = []
        for entry in os.scandir(self.path):
            m = ANN_RE.match(entry.name)
            if m and int(m.group(1)) <= max_vgen:
                files.append((int(m.group(1)), entry.path))
        for v, p in sorted(files, reverse=True):
            try:
                index = faiss.read_index(p)
            except Exception:  # vanished or unreadable: try an older one, else build
                continue
            # (read_index returns the concrete class; no downcast_index, which would drop ownership)
            if not isinstance(index, faiss.IndexIVF) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
                continue
            self.index, self.vgen, self.pending = index, v, 0
            self.ids = _index_ids(index)
            return

    def _patch(self, snap: Snapshot, db: sqlite3.Connection) -> bool:
        """Apply the changes since the index's generation; False if a rebuild is better."""
        live = snap.live_ids()
        rows = db.execute("SELECT id FROM items WHERE vgen > ?", (self.vgen,)).fetchall()
        changed = np.sort(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        assert self.ids is not None
        removed = np.setdiff1d(self.ids, live, assume_unique=True)
        delta = changed.size + removed.size
        if delta > 0.25 * max(1, self.index.ntotal):
            return False
        drop = np.union1d(changed, removed)
        if drop.size:
            self.index.remove_ids(faiss.IDSelectorBatch(drop))
        for a in range(0, changed.size, BLOCK_ROWS):
            chunk = changed[a : a + BLOCK_ROWS]
            self.index.add_with_ids(snap.gather(chunk), chunk)
        self.ids = np.union1d(np.setdiff1d(self.ids, drop, assume_unique=True), changed)
        self.vgen = snap.vgen
        self.pending += delta
        if self.pending > max(1000, 0.05 * self.index.ntotal):
            self.save()
        return True

    def _build(self, snap: Snapshot) -> None:
        n = snap.n_live
        # said: at the first search past exact_max it had taken 45 s (200k vectors) with no word
        log.info("building the approximate index of %s over %d vectors (a minute or so per 200,000)", self.path, n)
        nlist = min(self.ideal_nlist(n), max(1, n // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.own_fields = True
        quantizer.this.disown()
        index.cp.spherical = True
        index.cp.seed = 1234
        ids = snap.live_ids()
        rng = np.random.default_rng(1234)
        n_train = min(n, max(40 * nlist, 20_000))
        sample = np.sort(rng.choice(ids, size=n_train, replace=False)) if n_train < n else ids
        index.train(snap.gather(sample))
        del sample
        for seg in snap.segs.values():
            for b0 in range(0, seg.row_ids.size, BLOCK_ROWS):
                rid = seg.row_ids[b0 : b0 + BLOCK_ROWS]
                valid = np.flatnonzero(rid >= 0)
                if valid.size:
                    x = read_rows(seg.vecs, b0, b0 + rid.size)
                    x = f32(x[valid] if valid.size < rid.size else x)
                    index.add_with_ids(np.ascontiguousarray(x), rid[valid])
        self.index, self.vgen, self.ids = index, snap.vgen, ids.copy()
        index.nprobe = self.nprobe if self.nprobe is not None else self.tune_nprobe(snap)
        self.save()
        _malloc_trim()  # give the training / encoding buffers back to the OS

    def tune_nprobe(self, snap: Snapshot, queries: np.ndarray | None = None, k: int = 100) -> int:
        """nprobe for ``target_recall`` at k, from a ~sqrt(2) ladder (1, 2, 3, 4, 6, 8, 11, 16, ...).

        With ``queries`` (real ones) it is the smallest nprobe reaching the
        target on them. Without, 200 stored vectors serve as queries (each left
        out of both result lists) and the result is taken two ladder steps (2x)
        higher: real queries lie further from the catalog than its own items,
        and their recall at the same nprobe is lower. Leaves ``index.nprobe``
        at the last value tried: the caller sets it.
        """
        index = self.index
        ids = snap.live_ids()
        stored = queries is None
        k = min(k, ids.size - 1 if stored else ids.size)
        if k < 1:
            return min(index.nlist, 8)
        if stored:
            rng = np.random.default_rng(4321)
            qids = np.sort(rng.choice(ids, size=min(200, ids.size), replace=False))
            q = snap.gather(qids)
        else:
            q, qids = queries, np.full(queries.shape[0], -2, dtype=np.int64)
        _, gt = exact_segments(snap, q, k + 1)
        ladder = sorted(
            {min(index.nlist, int(round(2 ** (e / 2)))) for e in range(0, 2 * int(math.log2(index.nlist)) + 3)}
        )
        for step, nprobe in enumerate(ladder):
            index.nprobe = nprobe
            _, got = self.search(snap, q, k + 1)
            hits = 0
            for qi, g, r in zip(qids.tolist(), gt, got):
                hits += np.intersect1d(g[g != qi][:k], r[r != qi][:k]).size
            if hits / (k * len(qids)) >= self.target_recall:
                break
        return ladder[min(step + 2, len(ladder) - 1)] if stored else nprobe

    def save(self) -> Path | None:
        """Write the index atomically as ``ann-<vgen>.faiss``; returns its path (None on failure)."""
        final = self.path / f"ann-{self.vgen}.faiss"
        tmp = tmp_path(self.path, self.token, final.name)
        try:
            faiss.write_index(self.index, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(self.path)
        except Exception:  # persisting is an optimisation: keep the in-memory index
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        self.pending = 0
        for entry in os.scandir(self.path):
            m = ANN_RE.match(entry.name)
            if m and int(m.group(1)) < self.vgen:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return final

    # ------------------------------------------------------------ searching
    def search(
        self, snap: Snapshot, q: np.ndarray, k: int, sel: Any = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k: ``rerank * k`` candidates from the index, re-scored exactly."""
        index = self.index
        kc = int(min(max(k * self.rerank, k), max(1, index.ntotal)))
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe or index.nprobe)
        if sel is not None:
            params.sel = sel
        _, cand = index.search(q, kc, params=params)
        return rescore(snap, q, cand, k)

    def search_filtered(
        self, snap: Snapshot, q: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among the sorted ids ``allowed`` (more lists probed the fewer are allowed; the store searches
        queries whose probed lists held too few allowed items exactly).

        A share ``f`` of the items allowed puts the k-th allowed neighbour about 1/f deep among all
        neighbours, and the lists that hold a query's neighbours grow faster than their depth, so
        1/f**2 times the lists are probed. On 220k clustered 96-d vectors (nprobe tuned to 91 of 938
        lists, recall@100 0.997 unfiltered), f = 0.5 gave recall@100 0.931 at 91 lists, 0.969 at 182
        (1/f) and 0.993 at 400 (about 1/f**2); the store searches filters that allow half the items
        or fewer exactly (:meth:`EmbeddedStore.search`).
        """
        index = self.index
        frac = allowed.size / max(1, snap.n_live)
        nprobe = int(min(index.nlist, math.ceil(index.nprobe / max(frac, 1e-3) ** 2)))
        return self.search(snap, q, k, sel=faiss.IDSelectorBatch(allowed), nprobe=nprobe)

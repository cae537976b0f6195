"""The :class:`EmbeddedStore` class: public API, transactions, writes and compaction.

How the files and the SQLite database stay consistent is described in the
package docstring (:mod:`productlens.index.embedded`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ...types import ProductLensError
from ..base import (
    CORE_FIELDS,
    Condition,
    Store,
    check_ids,
    check_k,
    check_present,
    check_metadata,
    check_update,
    check_vectors,
    info_text,
    pad_results,
    parse_where,
)
from .ann import AnnIndex, require_faiss, set_threads
from .schema import (
    DB_NAME,
    absent_fields,
    extra_fields,
    VECTOR_DTYPES,
    columns,
    drop_segments,
    get_meta,
    ids_json,
    init_schema,
    row_to_dict,
    set_meta,
    tombstone,
    upsert_items,
    where_sql,
)
from .search import exact_segments, exact_subset
from .segments import (BLOCK_ROWS, SegmentMissing, delete_segments, read_rows, remove_orphans, seg_path, tmp_path,
                       write_npy)
from .snapshot import Snapshot

log = logging.getLogger(__name__)

#: the most scores a search returns (queries x k): 2**28 is 3 GiB of scores and ids
MAX_RESULTS = 2 ** 28


HALF_MAX = float(np.finfo(np.float16).max)


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


class EmbeddedStore(Store):
    """Default store backend: one directory, no server (see :mod:`productlens.index.embedded`).

    Options (all keyword, passed through :func:`productlens.index.open_store`):

    exact_max: search exactly up to this many items (default 200_000), above it
        use the approximate IVF index.
    nlist: IVF lists (default ``2 * sqrt(n)`` clipped to [16, 65536]; trained on 40 vectors a list).
    nprobe: IVF lists probed per query (default: tuned at build for ``target_recall``).
    target_recall: recall@100 the nprobe tuning aims at (default 0.995; see ``build_index``).
    rerank: candidates re-scored exactly per result (default 2, i.e. 2*k; 1 = off).
    subset_exact_max: with a filter, search the allowed items exactly when there
        are at most this many (default 20_000).
    compact_ratio: compact when dead rows exceed this fraction (default 0.3).
    max_segments: merge the smallest segments when there are more (default 32).
    threads: faiss threads (default: the cores this process may use).
    timeout: seconds a writer waits for another writer's lock (default 60).
    vector_dtype: how a new store keeps its vectors on disk: ``"float32"`` (the
        default) or ``"float16"`` (half the disk and page cache; scores change by
        about 1e-3, so near-ties may swap). Fixed at creation: None opens an
        existing store as it is, another value is refused. Queries, search
        scores and :meth:`vectors` are float32 either way.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int | None = None,
        *,
        exact_max: int = 200_000,
        nlist: int | None = None,
        nprobe: int | None = None,
        target_recall: float = 0.995,
        rerank: int = 2,
        subset_exact_max: int = 20_000,
        compact_ratio: float = 0.3,
        max_segments: int = 32,
        threads: int | None = None,
        timeout: float = 60.0,
        vector_dtype: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.exact_max = int(exact_max)
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = None if nprobe is None else int(nprobe)
        self.target_recall = float(target_recall)
        self.rerank = max(1, int(rerank))
        self.subset_exact_max = int(subset_exact_max)
        self.compact_ratio = float(compact_ratio)
        self.max_segments = max(2, int(max_segments))
        self.timeout = float(timeout)
        self.threads = int(threads) if threads else _available_cores()
        set_threads(self.threads)

        self._lock = threading.RLock()
        self._warned: set[str] = set()  # fields named in a filter that no item had (see _warn_absent)
        self._token = secrets.token_hex(4)
        self._db: sqlite3.Connection | None = None
        self._snap: Snapshot | None = None  # what readers see (set once dim is known)
        self._ann: AnnIndex | None = None  # the approximate index (ditto)

        if vector_dtype is not None and vector_dtype not in VECTOR_DTYPES:
            raise ProductLensError(f"vector_dtype must be one of {sorted(VECTOR_DTYPES)}, not {vector_dtype!r}")
        if self.path.exists() and not self.path.is_dir():
            raise ProductLensError(f"store path {self.path} exists and is not a directory")
        db_path = self.path / DB_NAME
        if not db_path.exists() and dim is None:
            raise ProductLensError(f"no store at {self.path}; pass dim to create one")
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                str(db_path), timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self.dim, self.vector_dtype = init_schema(self._db, self.path, dim, vector_dtype)
        except sqlite3.DatabaseError as e:
            self.close()
            raise ProductLensError(f"cannot open store at {self.path}: {e}") from e
        except BaseException:
            self.close()
            raise
        self._snap = Snapshot(self.path, self.dim, self.vector_dtype)
        self._ann = AnnIndex(
            self.path, self.dim, self._token, nlist=self.nlist, nprobe=self.nprobe,
            target_recall=self.target_recall, rerank=self.rerank,
        )
        self._cleanup()

    @classmethod
    def open(cls, path: str | os.PathLike, dim: int | None = None, **options: Any) -> "EmbeddedStore":
        return cls(path, dim, **options)

    # ========================================================== transactions
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ProductLensError("store is closed")
        return self._db

    def _meta(self, key: str) -> int:
        return get_meta(self._conn(), key)

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[sqlite3.Connection]:
        """Hold the store's write lock inside one SQLite transaction."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise ProductLensError(f"store at {self.path} is locked by another writer: {e}") from e
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as e:  # a full disk, an I/O error: nothing of the transaction was kept
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise ProductLensError(f"store at {self.path}: the change could not be saved ({e}); "
                                       "the store is as it was") from e

    @contextlib.contextmanager
    def _read_txn(self, refresh: bool = True) -> Iterator[sqlite3.Connection]:
        """A read transaction on an up-to-date snapshot (retries if files vanish)."""
        with self._lock:
            db = self._conn()
            for attempt in itertools.count():
                db.execute("BEGIN")
                try:
                    if refresh:
                        self._snap.refresh(db)
                except SegmentMissing as e:
                    db.execute("ROLLBACK")
                    if attempt >= 20:
                        raise ProductLensError(
                            f"store at {self.path} is damaged: committed segment file {e.path.name} is missing"
                        ) from None
                    self._snap.invalidate()  # full reload next time
                    time.sleep(0.01 * (attempt + 1))
                    continue
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                break
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def _refresh_in_txn(self) -> None:
        db = self._conn()
        try:
            self._snap.refresh(db)
        except SegmentMissing:
            # inside a write transaction nobody can drop files: retry once from scratch
            self._snap.invalidate()
            try:
                self._snap.refresh(db)
            except SegmentMissing as e:
                raise ProductLensError(
                    f"store at {self.path} is damaged: committed segment file {e.path.name} is missing"
                ) from None

    # ================================================================ writes
    def _write_segment(self, no: int, chunks: Iterator[np.ndarray], rows: int) -> None:
        final = seg_path(self.path, no)
        write_npy(final, tmp_path(self.path, self._token, final.name), chunks, rows, self.dim, self.vector_dtype)

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None:
        ids_a = check_ids(ids, unique=True)
        vecs = check_vectors(vectors, self.dim, n=ids_a.size)
        if self.vector_dtype == "float16" and vecs.size and (top := float(np.abs(vecs).max())) > HALF_MAX:
            raise ProductLensError(
                f"store at {self.path} keeps float16 vectors: components must be within +-{HALF_MAX:g} "
                f"(got {top:g}); normalise them or use a float32 store"
            )
        mds = check_metadata(metadata, ids_a)
        rows = [columns(md) for md in mds] if mds is not None else None
        if ids_a.size == 0:
            return
        dropped: list[int] = []
        seg: int | None = None
        try:
            with self._write_txn() as db:
                gen = self._meta("gen") + 1
                seg = self._meta("next_seg")
                self._write_segment(seg, iter([vecs]), vecs.shape[0])
                old = db.execute(
                    "SELECT id, seg, off FROM items WHERE id IN (SELECT value FROM json_each(?))",
                    (ids_json(ids_a),),
                ).fetchall()
                db.execute("INSERT INTO segments(seg, rows, dead, gen) VALUES (?, ?, 0, ?)", (seg, ids_a.size, gen))
                dropped = tombstone(db, old, gen)
                upsert_items(db, ids_a, seg, gen, rows)
                set_meta(db, gen=gen, vgen=gen, next_seg=seg + 1)
        except BaseException:
            if seg is not None:  # not committed (the body or the COMMIT failed): nothing references the file
                delete_segments(self.path, [seg])
            raise
        self._after_write(dropped)

    def remove(self, ids: Sequence[int]) -> int:
        ids_a = np.unique(check_ids(ids))
        if ids_a.size == 0:
            return 0
        with self._write_txn() as db:
            old = db.execute(
                "SELECT id, seg, off FROM items WHERE id IN (SELECT value FROM json_each(?))", (ids_json(ids_a),)
            ).fetchall()
            if not old:
                return 0
            gen = self._meta("gen") + 1
            db.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))", (ids_json(ids_a),))
            dropped = tombstone(db, old, gen)
            set_meta(db, gen=gen, vgen=gen)
        self._after_write(dropped)
        return len(old)

    def update_metadata(self, ids: Sequence[int], metadata: Sequence[dict]) -> None:
        ids_a, mds = check_update(ids, metadata)
        if ids_a.size == 0:
            return
        with self._write_txn() as db:
            cur = {
                r[0]: row_to_dict(r)
                for r in db.execute(
                    "SELECT id, product_id, image, title, category, extra FROM items "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (ids_json(ids_a),),
                )
            }
            check_present(ids_a.tolist(), cur, "update_metadata: ids")
            params = []
            for i, md in zip(ids_a.tolist(), mds):
                merged = cur[i]
                merged.pop("id")
                merged.update(md)
                params.append(columns(merged) + (i,))
            db.executemany(
                "UPDATE items SET product_id=?, image=?, title=?, category=?, extra=? WHERE id=?", params
            )

    def set_info(self, key: str, value: Any) -> None:
        text = info_text(key, value)
        with self._write_txn() as db:
            db.execute("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", (key, text))

    def get_info(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn().execute("SELECT value FROM info WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def info(self) -> dict[str, Any]:
        """All info key/values."""
        with self._lock:
            return {k: json.loads(v) for k, v in self._conn().execute("SELECT key, value FROM info")}

    # ============================================================ compaction
    def _after_write(self, dropped: Sequence[int]) -> None:
        """Housekeeping once a write has committed: remove the segments it emptied, compact when due.
        A failure here (a full disk) is logged, not raised: the write stands, and a caller that saw an
        error would retry it and add the items twice. A later write or open does the work."""
        try:
            delete_segments(self.path, dropped)
            self._maybe_compact()
        except (OSError, sqlite3.Error, ProductLensError) as e:
            log.warning("store at %s: the change is saved, but tidying up failed (%s); a later write retries",
                        self.path, e)

    def _maybe_compact(self) -> None:
        db = self._conn()
        with self._lock:
            total, dead, nseg = db.execute(
                "SELECT COALESCE(SUM(rows),0), COALESCE(SUM(dead),0), COUNT(*) FROM segments"
            ).fetchone()
        if total and dead > self.compact_ratio * total:
            self.compact()
        elif nseg > self.max_segments:
            self.compact(merge_only=True)

    def compact(self, merge_only: bool = False) -> None:
        """Rewrite live vectors into one new segment, atomically.

        With ``merge_only`` only the smallest segments are merged (until at most
        ``max_segments // 2`` remain), which keeps appends cheap.
        """
        written: list[int] = []  # the new segment, once numbered
        try:
            dropped = self._compact_in_txn(merge_only, written)
        except BaseException:
            delete_segments(self.path, written)  # not committed (the body or the COMMIT failed): unreferenced
            raise
        delete_segments(self.path, dropped)

    def _compact_in_txn(self, merge_only: bool, written: list[int]) -> list[int]:
        """The compaction's transaction; returns the segments it replaced (to delete once committed)."""
        with self._write_txn() as db:
            self._refresh_in_txn()
            segs = self._snap.segs
            stats = db.execute("SELECT seg, rows - dead FROM segments ORDER BY rows - dead, seg").fetchall()
            if merge_only:
                n_merge = len(stats) - self.max_segments // 2 + 1
                if n_merge < 2:
                    return []
                victims = [s for s, _ in stats[:n_merge]]
            else:
                if len(stats) <= 1 and not db.execute("SELECT 1 FROM segments WHERE dead > 0").fetchone():
                    return []
                victims = [s for s, _ in stats]
            victims.sort()
            gen = self._meta("gen") + 1
            seg_no = self._meta("next_seg")
            parts = [(no, np.flatnonzero(segs[no].row_ids >= 0)) for no in victims]
            n_live = int(sum(p.size for _, p in parts))
            if n_live:
                def chunks() -> Iterator[np.ndarray]:
                    for no, live in parts:
                        vecs = segs[no].vecs
                        for a in range(0, live.size, BLOCK_ROWS):
                            part = live[a : a + BLOCK_ROWS]
                            lo = int(part[0])  # read the block's span ahead, then pick its live rows
                            yield read_rows(vecs, lo, int(part[-1]) + 1)[part - lo]

                written.append(seg_no)
                self._write_segment(seg_no, chunks(), n_live)
                new_ids = np.concatenate([segs[no].row_ids[live] for no, live in parts])
                db.execute("INSERT INTO segments(seg, rows, dead, gen) VALUES (?, ?, 0, ?)", (seg_no, n_live, gen))
                db.executemany(
                    "UPDATE items SET seg=?, off=? WHERE id=?",
                    zip(itertools.repeat(seg_no), range(n_live), new_ids.tolist()),
                )
            drop_segments(db, victims)
            set_meta(db, gen=gen, next_seg=seg_no + 1)
        return victims

    def _cleanup(self) -> None:
        """Delete files no committed state references (needs the write lock; skipped if busy)."""
        db = self._conn()
        with self._lock:
            try:
                db.execute("PRAGMA busy_timeout=0")
                try:
                    db.execute("BEGIN IMMEDIATE")
                finally:
                    db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            except sqlite3.OperationalError:
                return  # a writer is active (or the directory is read-only): try another time
            try:
                live = {r[0] for r in db.execute("SELECT seg FROM segments")}
                remove_orphans(self.path, live, self._meta("vgen"))
            finally:
                db.execute("COMMIT")

    # ================================================================= reads
    def version(self) -> int:
        """SQLite's ``data_version``: it changes when another connection commits (this handle's own writes
        leave it as it is)."""
        with self._lock:
            return int(self._conn().execute("PRAGMA data_version").fetchone()[0])

    def __len__(self) -> int:
        with self._read_txn():
            return self._snap.n_live

    def ids(self) -> np.ndarray:
        with self._read_txn():
            return self._snap.live_ids().copy()

    def get(self, ids: Sequence[int]) -> list[dict | None]:
        ids_a = check_ids(ids)
        if ids_a.size == 0:
            return []
        with self._read_txn(refresh=False) as db:
            found = {
                r[0]: row_to_dict(r)
                for r in db.execute(
                    "SELECT id, product_id, image, title, category, extra FROM items "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (ids_json(np.unique(ids_a)),),
                )
            }
        return [dict(found[i]) if i in found else None for i in ids_a.tolist()]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        ids_a = check_ids(ids)
        with self._read_txn():
            return self._snap.gather(ids_a)

    def count(self, where: dict | None = None) -> int:
        """Number of items matching ``where`` (all items without one)."""
        conds = parse_where(where)
        with self._read_txn(refresh=False) as db:
            sql, params = where_sql(conds)
            return int(db.execute(f"SELECT COUNT(*) FROM items WHERE {sql}", params).fetchone()[0])

    def _allowed_ids(self, conds: list[Condition]) -> np.ndarray:
        sql, params = where_sql(conds)
        rows = self._conn().execute(f"SELECT id FROM items WHERE {sql} ORDER BY id", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def _warn_absent(self, db: sqlite3.Connection, conds: list[Condition]) -> None:
        """Say (once per field and handle) that a filter that matched nothing names a field no item has."""
        named = [c.field for c in conds if c.field not in self._warned  # "no such field" matches None: not blamed
                 and not (c.op == "eq" and c.value is None) and not (c.op == "in" and None in c.value)]
        absent = absent_fields(db, named)
        known = ", ".join(("id",) + CORE_FIELDS + tuple(extra_fields(db))) if absent else ""
        for field in absent:
            self._warned.add(field)
            log.warning("where: no item in %s has a field %r, so the filter matched nothing (a typo? fields: %s)",
                        self.path, field, known)

    # ---------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, where: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = check_vectors(queries, self.dim, what="queries")
        k = check_k(k)
        conds = parse_where(where)
        nq = q.shape[0]
        if nq * k > MAX_RESULTS:  # 12 bytes a result (score and id): refused before numpy's MemoryError
            raise ProductLensError(f"k={k} for {nq} queries would make {nq * k * 12 / 2 ** 30:.0f} GiB of results; "
                                   f"the store holds {len(self)} items")
        with self._read_txn() as db:
            snap = self._snap
            allowed = self._allowed_ids(conds) if conds else None
            if nq == 0 or snap.n_live == 0 or (allowed is not None and allowed.size == 0):
                if allowed is not None and allowed.size == 0 and snap.n_live:
                    self._warn_absent(db, conds)
                return pad_results(nq, k)
            if snap.n_live <= self.exact_max:
                if allowed is not None and allowed.size <= max(self.subset_exact_max, snap.n_live // 4):
                    return exact_subset(snap, q, k, allowed)
                return exact_segments(snap, q, k, allowed)
            self._ann.ensure(snap, db)
            if allowed is not None and allowed.size <= max(self.subset_exact_max, snap.n_live // 2):
                # as fast as the lists a share of half or less needs probed (search_filtered), and exact
                return exact_subset(snap, q, k, allowed)
            if allowed is None:
                s, i = self._ann.search(snap, q, k)
            else:
                s, i = self._ann.search_filtered(snap, q, k, allowed)
            # a k near the store's size outgrows the probed lists: those queries are searched exactly, so a
            # result is short only when fewer than k items match, on both paths
            short = np.flatnonzero((i >= 0).sum(axis=1) < min(k, snap.n_live if allowed is None else allowed.size))
            if short.size:
                s[short], i[short] = (exact_segments(snap, q[short], k) if allowed is None
                                      else exact_subset(snap, q[short], k, allowed))
            return s, i

    def build_index(self, force: bool = False, queries: np.ndarray | None = None) -> None:
        """Build (or bring up to date) the approximate index now rather than at the first search.

        A store of at most ``exact_max`` items is searched exactly and builds nothing.

        ``force`` drops the in-memory index first, so it is loaded again from an
        up-to-date ``ann-*.faiss`` file or, if there is none, rebuilt. ``queries`` (a sample of real
        queries, e.g. a validation set) re-tunes ``nprobe`` for
        ``target_recall`` on them instead of on stored vectors.
        """
        require_faiss()
        q = None if queries is None else check_vectors(queries, self.dim, what="queries")
        with self._read_txn() as db:
            if self._snap.n_live < 2 or self._snap.n_live <= self.exact_max:
                return  # searched exactly: no approximate index is used
            if force:
                self._ann.index = None
            index = self._ann.ensure(self._snap, db)
            if q is not None and q.shape[0] and self.nprobe is None:
                index.nprobe = self._ann.tune_nprobe(self._snap, queries=q)
                self._ann.save()

    # ============================================================= lifecycle
    def close(self) -> None:
        with self._lock:
            if self._snap is not None:
                self._snap.clear()
            if self._ann is not None:
                self._ann.clear()
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                self._db.close()
                self._db = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

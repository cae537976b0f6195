"""The embedded store: a directory with SQLite metadata and immutable vector segments.

Layout of a store directory::

    store.sqlite (+ -wal, -shm)   metadata, vector locations, live segments, info
    seg-<n>.npy                   immutable float32 (rows, dim) vector segments
    ann-<vgen>.faiss              approximate index built from vector generation vgen
    .tmp-<pid>-<token>-<name>     a file being written (deleted if its writer died)

Atomicity: a write first creates a new segment file under a temporary name,
fsyncs it and renames it to ``seg-<n>.npy`` (n taken from ``next_seg`` in
SQLite), then one SQLite transaction (WAL, synchronous=FULL) inserts/updates
the item rows with their ``(seg, off)`` locations, tombstones the old
locations, registers the segment and bumps the generation. Until that commit
the new file is unreferenced; after it the file is complete on disk. So a
``kill -9`` at any moment leaves the old or the new state. Files that no
committed state references (interrupted writes, segments dropped by a
compaction whose clean-up was interrupted, stale approximate indexes) are
deleted the next time a store is opened while no writer is active.

Writers are serialised by SQLite's write lock (``BEGIN IMMEDIATE``), held
while the segment file is written. Readers work on an in-memory snapshot
(memory-mapped segments plus a per-segment row -> id table) that is brought up
to date incrementally inside a read transaction whenever the generation
changed, so every search sees one committed state.

Search is exact (blocked matmul over the memory-mapped segments, no copy of
the vectors) up to ``exact_max`` items; above that an IVF index with 8-bit
scalar-quantised residuals (``IndexIVFScalarQuantizer``, inner product,
spherical k-means) proposes ``rerank * k`` candidates that are re-scored
exactly from the segments. ``nprobe`` is tuned at build time: the smallest
value reaching ``target_recall`` at k=100 with stored vectors as queries, then
doubled as a margin for real queries (or tuned on real queries passed to
``build_index``). After writes the index is
patched (``remove_ids`` + ``add_with_ids`` for the changed ids) rather than
rebuilt, unless the change is large.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..types import ProductLensError
from .base import (
    CORE_FIELDS,
    Condition,
    Store,
    check_ids,
    check_metadata,
    check_vectors,
    json_default,
    pad_results,
    parse_where,
)

try:  # faiss is a hard dependency of the project, but keep the exact path usable without it
    import faiss
except ImportError:  # pragma: no cover
    faiss = None

DB_NAME = "store.sqlite"
FORMAT_VERSION = 1
_SEG_RE = re.compile(r"^seg-(\d+)\.npy$")
_ANN_RE = re.compile(r"^ann-(\d+)\.faiss$")
_TMP_RE = re.compile(r"^\.tmp-(\d+)-")

_BLOCK_ROWS = 65536  # rows of a segment scored at once
_SCORE_BUDGET = 64 * 1024 * 1024  # float32 entries of a (queries x rows) score block

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    seg INTEGER PRIMARY KEY, rows INTEGER NOT NULL, dead INTEGER NOT NULL, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, seg INTEGER NOT NULL, off INTEGER NOT NULL, vgen INTEGER NOT NULL,
    product_id INTEGER, image TEXT, title TEXT, category TEXT, extra TEXT);
CREATE INDEX IF NOT EXISTS items_seg ON items(seg);
CREATE INDEX IF NOT EXISTS items_vgen ON items(vgen);
CREATE INDEX IF NOT EXISTS items_product ON items(product_id);
CREATE INDEX IF NOT EXISTS items_category ON items(category);
CREATE TABLE IF NOT EXISTS tombstones (
    seg INTEGER NOT NULL, off INTEGER NOT NULL, gen INTEGER NOT NULL, PRIMARY KEY (seg, off));
CREATE INDEX IF NOT EXISTS tombstones_gen ON tombstones(gen);
"""


class _Retry(Exception):
    """A file of the snapshot vanished (a concurrent compaction): read again."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


@dataclass
class _Segment:
    no: int
    vecs: np.ndarray  # memory-mapped (rows, dim) float32
    row_ids: np.ndarray  # (rows,) int64: id of each row, -1 when dead


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc only; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _ids_json(ids: np.ndarray) -> str:
    return json.dumps(np.asarray(ids, dtype=np.int64).tolist())


def _topk_merge(
    best_s: np.ndarray | None, best_i: np.ndarray | None, s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidate scores/ids (nq, m) into the running best (nq, <=k)."""
    if best_s is not None:
        s = np.concatenate([best_s, s], axis=1)
        i = np.concatenate([best_i, i], axis=1)
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(s, part, axis=1)
        i = np.take_along_axis(i, part, axis=1)
    return s, i


def _finish(s: np.ndarray | None, i: np.ndarray | None, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort (best first, ties by id), mark -inf as id -1 and pad to k columns."""
    out_s, out_i = pad_results(nq, k)
    if s is None or s.shape[1] == 0:
        return out_s, out_i
    s = s.astype(np.float32, copy=False)
    i = i.astype(np.int64, copy=True)
    i[~np.isfinite(s)] = -1
    s = np.where(i < 0, np.float32(-np.inf), s)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s), axis=1)
    s = np.take_along_axis(s, order, axis=1)
    i = np.take_along_axis(i, order, axis=1)
    m = min(k, s.shape[1])
    out_s[:, :m] = s[:, :m]
    out_i[:, :m] = i[:, :m]
    return out_s, out_i


class EmbeddedStore(Store):
    """Default store backend: one directory, no server (see the module docstring).

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
        if faiss is not None:
            faiss.omp_set_num_threads(self.threads)

        self._lock = threading.RLock()
        self._token = secrets.token_hex(4)
        self._db: sqlite3.Connection | None = None
        # snapshot
        self._gen = -1
        self._vgen = -1
        self._segs: dict[int, _Segment] = {}
        self._lookup: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._n_live = 0
        # approximate index
        self._ann: Any = None
        self._ann_vgen = -1
        self._ann_ids: np.ndarray | None = None
        self._ann_pending = 0  # changes applied in memory since the file was written

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
            self._init_schema(dim)
        except sqlite3.DatabaseError as e:
            self.close()
            raise ProductLensError(f"cannot open store at {self.path}: {e}") from e
        except BaseException:
            self.close()
            raise
        self._cleanup(blocking=False)

    @classmethod
    def open(cls, path: str | os.PathLike, dim: int | None = None, **options: Any) -> "EmbeddedStore":
        return cls(path, dim, **options)

    # ================================================================ sqlite
    def _init_schema(self, dim: int | None) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            stored_dim = None
            if has_meta:
                row = db.execute("SELECT value FROM meta WHERE key='dim'").fetchone()
                stored_dim = None if row is None else int(row[0])
            if stored_dim is None:
                if dim is None:
                    raise ProductLensError(f"no store at {self.path}; pass dim to create one")
                # (executescript would COMMIT: run the statements one by one inside our transaction)
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    db.execute(stmt)
                db.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [("dim", int(dim)), ("format", FORMAT_VERSION), ("gen", 0), ("vgen", 0), ("next_seg", 0)],
                )
                stored_dim = int(dim)
            else:
                fmt = db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
                if fmt is None or int(fmt[0]) > FORMAT_VERSION:
                    raise ProductLensError(f"store at {self.path} has an unknown format {fmt and fmt[0]}")
                if dim is not None and int(dim) != stored_dim:
                    raise ProductLensError(
                        f"store at {self.path} holds {stored_dim}-d vectors; refusing to open it with dim={dim}"
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.dim = stored_dim

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ProductLensError("store is closed")
        return self._db

    def _meta(self, key: str) -> int:
        return int(self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def _set_meta(self, **values: int) -> None:
        self._conn().executemany(
            "UPDATE meta SET value=? WHERE key=?", [(int(v), k) for k, v in values.items()]
        )

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
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _read_txn(self, refresh: bool = True) -> Iterator[sqlite3.Connection]:
        """A read transaction on an up-to-date snapshot (retries if files vanish)."""
        with self._lock:
            db = self._conn()
            for attempt in itertools.count():
                db.execute("BEGIN")
                try:
                    if refresh:
                        self._refresh()
                except _Retry as e:
                    db.execute("ROLLBACK")
                    if attempt >= 20:
                        raise ProductLensError(
                            f"store at {self.path} is damaged: committed segment file {e.path.name} is missing"
                        ) from None
                    self._gen = -1  # full reload next time
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

    # ============================================================== snapshot
    def _seg_path(self, no: int) -> Path:
        return self.path / f"seg-{no}.npy"

    def _open_segment(self, no: int, rows: int) -> np.ndarray:
        try:
            arr = np.load(self._seg_path(no), mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise _Retry(self._seg_path(no)) from None
        except (ValueError, OSError) as e:
            raise ProductLensError(f"store at {self.path}: segment {no} is unreadable: {e}") from e
        if arr.dtype != np.float32 or arr.shape != (rows, self.dim):
            raise ProductLensError(
                f"store at {self.path}: segment {no} has {arr.dtype} {arr.shape}, expected float32 ({rows}, {self.dim})"
            )
        return arr

    def _refresh(self) -> None:
        """Bring the in-memory snapshot up to the committed generation (inside a transaction)."""
        db = self._conn()
        gen = self._meta("gen")
        if gen == self._gen:
            return
        vgen = self._meta("vgen")
        seg_rows = dict(db.execute("SELECT seg, rows FROM segments").fetchall())
        full = self._gen < 0
        segs = {} if full else {no: s for no, s in self._segs.items() if no in seg_rows}
        new = sorted(no for no in seg_rows if no not in segs)
        if not full:
            # tombstones written since our generation, in segments we keep
            dead = db.execute("SELECT seg, off FROM tombstones WHERE gen > ?", (self._gen,)).fetchall()
            if dead:
                a = np.array(dead, dtype=np.int64).reshape(-1, 2)
                for no in np.unique(a[:, 0]).tolist():
                    s = segs.get(no)
                    if s is not None:  # copy-on-write: arrays handed out earlier stay valid
                        row_ids = s.row_ids.copy()
                        row_ids[a[a[:, 0] == no, 1]] = -1
                        segs[no] = _Segment(no, s.vecs, row_ids)
        for no in new:
            vecs = self._open_segment(no, int(seg_rows[no]))
            row_ids = np.full(int(seg_rows[no]), -1, dtype=np.int64)
            rows = db.execute("SELECT off, id FROM items WHERE seg=?", (no,)).fetchall()
            if rows:
                a = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=2 * len(rows))
                row_ids[a[0::2]] = a[1::2]
            segs[no] = _Segment(no, vecs, row_ids)
        self._segs = dict(sorted(segs.items()))
        self._n_live = int(sum(int(np.count_nonzero(s.row_ids >= 0)) for s in self._segs.values()))
        self._lookup = None
        self._gen = gen
        self._vgen = vgen

    def _get_lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted live ids, their segment numbers, their row offsets)."""
        if self._lookup is None:
            ids, segno, off = [], [], []
            for no, s in self._segs.items():
                live = np.flatnonzero(s.row_ids >= 0)
                ids.append(s.row_ids[live])
                off.append(live.astype(np.int64))
                segno.append(np.full(live.size, no, dtype=np.int64))
            if ids:
                a_ids, a_seg, a_off = np.concatenate(ids), np.concatenate(segno), np.concatenate(off)
                order = np.argsort(a_ids, kind="stable")
                self._lookup = (a_ids[order], a_seg[order], a_off[order])
            else:
                z = np.zeros(0, dtype=np.int64)
                self._lookup = (z, z, z)
        return self._lookup

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, segment numbers, offsets) of ``ids`` in the snapshot."""
        sid, sseg, soff = self._get_lookup()
        if sid.size == 0:
            z = np.zeros(ids.size, dtype=np.int64)
            return np.zeros(ids.size, dtype=bool), z, z
        pos = np.clip(np.searchsorted(sid, ids), 0, sid.size - 1)
        found = sid[pos] == ids
        return found, sseg[pos], soff[pos]

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of ids known to be live, in order."""
        found, seg, off = self._locate(ids)
        if not np.all(found):
            missing = ids[~found][:5].tolist()
            raise ProductLensError(f"ids not in the store: {missing}")
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        for no in np.unique(seg).tolist():
            m = np.flatnonzero(seg == no)
            o = off[m]
            order = np.argsort(o, kind="stable")  # read the file in order
            out[m[order]] = self._segs[no].vecs[o[order]]
        return out

    # ================================================================ writes
    def _tmp_path(self, name: str) -> Path:
        return self.path / f".tmp-{os.getpid()}-{self._token}{secrets.token_hex(2)}-{name}"

    def _write_npy(self, final: Path, chunks: Iterator[np.ndarray], rows: int) -> None:
        """Write a (rows, dim) float32 .npy atomically: temp file, fsync, rename, fsync dir."""
        tmp = self._tmp_path(final.name)
        try:
            with open(tmp, "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                          "shape": (int(rows), int(self.dim))}
                np.lib.format.write_array_header_1_0(f, header)
                written = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype="<f4")
                    f.write(memoryview(chunk).cast("B"))
                    written += chunk.shape[0]
                if written != rows:
                    raise AssertionError(f"wrote {written} rows, expected {rows}")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.path)

    def _tombstone(self, db: sqlite3.Connection, old: list[tuple[int, int, int]], gen: int) -> list[int]:
        """Mark old (id, seg, off) locations dead; drop segments left empty. Returns dropped segments."""
        if not old:
            return []
        db.executemany("INSERT OR REPLACE INTO tombstones(seg, off, gen) VALUES (?, ?, ?)",
                       [(s, o, gen) for _, s, o in old])
        counts: dict[int, int] = {}
        for _, s, _ in old:
            counts[s] = counts.get(s, 0) + 1
        db.executemany("UPDATE segments SET dead = dead + ? WHERE seg = ?", [(c, s) for s, c in counts.items()])
        empty = [r[0] for r in db.execute("SELECT seg FROM segments WHERE dead >= rows").fetchall()]
        if empty:
            js = json.dumps(empty)
            db.execute("DELETE FROM tombstones WHERE seg IN (SELECT value FROM json_each(?))", (js,))
            db.execute("DELETE FROM segments WHERE seg IN (SELECT value FROM json_each(?))", (js,))
        return empty

    def _delete_segment_files(self, nos: Sequence[int]) -> None:
        for no in nos:
            with contextlib.suppress(OSError):
                self._seg_path(no).unlink()

    @staticmethod
    def _columns(md: dict) -> tuple[Any, Any, Any, Any, str | None]:
        """Split a metadata dict into (product_id, image, title, category, extra json)."""
        md = {k: v for k, v in md.items() if v is not None}
        pid = md.pop("product_id", None)
        if pid is not None:
            if isinstance(pid, np.generic):
                pid = pid.item()
            if isinstance(pid, bool) or not isinstance(pid, int):
                raise ProductLensError(f"product_id must be an int, got {pid!r}")
        cols = [pid]
        for f in ("image", "title", "category"):
            v = md.pop(f, None)
            if v is not None and not isinstance(v, str):
                raise ProductLensError(f"metadata field {f!r} must be a str, got {v!r}")
            cols.append(v)
        extra = json.dumps(md, default=json_default, sort_keys=True) if md else None
        return (cols[0], cols[1], cols[2], cols[3], extra)

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None:
        ids_a = check_ids(ids, unique=True)
        vecs = check_vectors(vectors, self.dim, n=ids_a.size)
        mds = check_metadata(metadata, ids_a)
        rows = [self._columns(md) for md in mds] if mds is not None else None
        if ids_a.size == 0:
            return
        dropped: list[int] = []
        with self._write_txn() as db:
            gen = self._meta("gen") + 1
            seg = self._meta("next_seg")
            self._write_npy(self._seg_path(seg), iter([vecs]), vecs.shape[0])
            committing = False
            try:
                old = db.execute(
                    "SELECT id, seg, off FROM items WHERE id IN (SELECT value FROM json_each(?))",
                    (_ids_json(ids_a),),
                ).fetchall()
                db.execute("INSERT INTO segments(seg, rows, dead, gen) VALUES (?, ?, 0, ?)", (seg, ids_a.size, gen))
                dropped = self._tombstone(db, old, gen)
                locs = zip(ids_a.tolist(), itertools.repeat(seg), range(ids_a.size), itertools.repeat(gen))
                if rows is None:
                    db.executemany(
                        "INSERT INTO items(id, seg, off, vgen) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                        "seg=excluded.seg, off=excluded.off, vgen=excluded.vgen",
                        locs,
                    )
                else:
                    db.executemany(
                        "INSERT INTO items(id, seg, off, vgen, product_id, image, title, category, extra) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                        "seg=excluded.seg, off=excluded.off, vgen=excluded.vgen, product_id=excluded.product_id, "
                        "image=excluded.image, title=excluded.title, category=excluded.category, "
                        "extra=excluded.extra",
                        (loc + r for loc, r in zip(locs, rows)),
                    )
                self._set_meta(gen=gen, vgen=gen, next_seg=seg + 1)
                committing = True
            finally:
                if not committing:  # nothing references the file: remove it now
                    self._delete_segment_files([seg])
        self._delete_segment_files(dropped)
        self._maybe_compact()

    def remove(self, ids: Sequence[int]) -> int:
        ids_a = np.unique(check_ids(ids))
        if ids_a.size == 0:
            return 0
        with self._write_txn() as db:
            old = db.execute(
                "SELECT id, seg, off FROM items WHERE id IN (SELECT value FROM json_each(?))", (_ids_json(ids_a),)
            ).fetchall()
            if not old:
                return 0
            gen = self._meta("gen") + 1
            db.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))", (_ids_json(ids_a),))
            dropped = self._tombstone(db, old, gen)
            self._set_meta(gen=gen, vgen=gen)
        self._delete_segment_files(dropped)
        self._maybe_compact()
        return len(old)

    def update_metadata(self, ids: Sequence[int], metadata: Sequence[dict]) -> None:
        ids_a = check_ids(ids, unique=True)
        if metadata is None:
            raise ProductLensError("update_metadata needs one dict per id")
        mds = check_metadata(metadata, ids_a)
        assert mds is not None
        if ids_a.size == 0:
            return
        with self._write_txn() as db:
            cur = {
                r[0]: self._row_to_dict(r)
                for r in db.execute(
                    "SELECT id, product_id, image, title, category, extra FROM items "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (_ids_json(ids_a),),
                )
            }
            missing = [i for i in ids_a.tolist() if i not in cur]
            if missing:
                raise ProductLensError(f"update_metadata: ids not in the store: {missing[:5]}")
            params = []
            for i, md in zip(ids_a.tolist(), mds):
                merged = cur[i]
                merged.pop("id")
                merged.update(md)
                params.append(self._columns(merged) + (i,))
            db.executemany(
                "UPDATE items SET product_id=?, image=?, title=?, category=?, extra=? WHERE id=?", params
            )

    def set_info(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ProductLensError(f"info key must be a non-empty str, got {key!r}")
        try:
            text = json.dumps(value, default=json_default)
        except (TypeError, ValueError) as e:
            raise ProductLensError(f"info value for {key!r} is not JSON-able: {e}") from None
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
    def _maybe_compact(self) -> None:
        db = self._conn()
        with self._lock:
            total, dead, nseg = db.execute("SELECT COALESCE(SUM(rows),0), COALESCE(SUM(dead),0), COUNT(*) FROM segments").fetchone()
        if total and dead > self.compact_ratio * total:
            self.compact()
        elif nseg > self.max_segments:
            self.compact(merge_only=True)

    def compact(self, merge_only: bool = False) -> None:
        """Rewrite live vectors into one new segment, atomically.

        With ``merge_only`` only the smallest segments are merged (until at most
        ``max_segments // 2`` remain), which keeps appends cheap.
        """
        dropped: list[int] = []
        with self._write_txn() as db:
            self._refresh_in_txn()
            stats = db.execute("SELECT seg, rows - dead FROM segments ORDER BY rows - dead, seg").fetchall()
            if merge_only:
                n_merge = len(stats) - self.max_segments // 2 + 1
                if n_merge < 2:
                    return
                victims = [s for s, _ in stats[:n_merge]]
            else:
                if len(stats) <= 1 and not db.execute("SELECT 1 FROM segments WHERE dead > 0").fetchone():
                    return
                victims = [s for s, _ in stats]
            victims.sort()
            gen = self._meta("gen") + 1
            seg_no = self._meta("next_seg")
            parts = [(no, np.flatnonzero(self._segs[no].row_ids >= 0)) for no in victims]
            n_live = int(sum(p.size for _, p in parts))
            committing = False
            try:
                if n_live:
                    def chunks() -> Iterator[np.ndarray]:
                        for no, live in parts:
                            vecs = self._segs[no].vecs
                            for a in range(0, live.size, _BLOCK_ROWS):
                                sel = live[a : a + _BLOCK_ROWS]
                                yield vecs[sel]

                    self._write_npy(self._seg_path(seg_no), chunks(), n_live)
                    new_ids = np.concatenate([self._segs[no].row_ids[live] for no, live in parts])
                    db.execute("INSERT INTO segments(seg, rows, dead, gen) VALUES (?, ?, 0, ?)", (seg_no, n_live, gen))
                    db.executemany(
                        "UPDATE items SET seg=?, off=? WHERE id=?",
                        zip(itertools.repeat(seg_no), range(n_live), new_ids.tolist()),
                    )
                js = json.dumps(victims)
                db.execute("DELETE FROM tombstones WHERE seg IN (SELECT value FROM json_each(?))", (js,))
                db.execute("DELETE FROM segments WHERE seg IN (SELECT value FROM json_each(?))", (js,))
                self._set_meta(gen=gen, next_seg=seg_no + 1)
                committing = True
                dropped = victims
            finally:
                if not committing:
                    self._delete_segment_files([seg_no])
        self._delete_segment_files(dropped)

    def _refresh_in_txn(self) -> None:
        try:
            self._refresh()
        except _Retry:
            # inside a write transaction nobody can drop files: retry once from scratch
            self._gen = -1
            try:
                self._refresh()
            except _Retry as e:
                raise ProductLensError(
                    f"store at {self.path} is damaged: committed segment file {e.path.name} is missing"
                ) from None

    def _cleanup(self, blocking: bool = False) -> None:
        """Delete files no committed state references (needs the write lock; skipped if busy)."""
        db = self._conn()
        with self._lock:
            try:
                if not blocking:
                    db.execute("PRAGMA busy_timeout=0")
                try:
                    db.execute("BEGIN IMMEDIATE")
                finally:
                    if not blocking:
                        db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            except sqlite3.OperationalError:
                return  # a writer is active (or the directory is read-only): try another time
            try:
                live = {r[0] for r in db.execute("SELECT seg FROM segments")}
                vgen = self._meta("vgen")
                anns = []
                for entry in os.scandir(self.path):
                    name = entry.name
                    if m := _SEG_RE.match(name):
                        if int(m.group(1)) not in live:
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                    elif m := _TMP_RE.match(name):
                        if not _pid_alive(int(m.group(1))):
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                    elif m := _ANN_RE.match(name):
                        anns.append((int(m.group(1)), entry.path))
                anns.sort()
                for v, p in anns[:-1] + [a for a in anns[-1:] if a[0] > vgen]:
                    with contextlib.suppress(OSError):
                        os.unlink(p)
            finally:
                db.execute("COMMIT")

    # ================================================================= reads
    def __len__(self) -> int:
        with self._read_txn():
            return self._n_live

    def ids(self) -> np.ndarray:
        with self._read_txn():
            return self._get_lookup()[0].copy()

    @staticmethod
    def _row_to_dict(row: Sequence[Any]) -> dict:
        i, pid, image, title, category, extra = row
        d: dict[str, Any] = {"id": int(i)}
        for key, v in (("product_id", pid), ("image", image), ("title", title), ("category", category)):
            if v is not None:
                d[key] = v
        if extra:
            d.update(json.loads(extra))
        return d

    def get(self, ids: Sequence[int]) -> list[dict | None]:
        ids_a = check_ids(ids)
        if ids_a.size == 0:
            return []
        with self._read_txn(refresh=False) as db:
            found = {
                r[0]: self._row_to_dict(r)
                for r in db.execute(
                    "SELECT id, product_id, image, title, category, extra FROM items "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (_ids_json(np.unique(ids_a)),),
                )
            }
        return [dict(found[i]) if i in found else None for i in ids_a.tolist()]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        ids_a = check_ids(ids)
        with self._read_txn():
            return self._gather(ids_a)

    def count(self, where: dict | None = None) -> int:
        """Number of items matching ``where`` (all items without one)."""
        conds = parse_where(where)
        with self._read_txn(refresh=False) as db:
            sql, params = _where_sql(conds)
            return int(db.execute(f"SELECT COUNT(*) FROM items WHERE {sql}", params).fetchone()[0])

    def _allowed_ids(self, conds: list[Condition]) -> np.ndarray:
        sql, params = _where_sql(conds)
        rows = self._conn().execute(f"SELECT id FROM items WHERE {sql} ORDER BY id", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    # ---------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, where: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = check_vectors(queries, self.dim, what="queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ProductLensError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        conds = parse_where(where)
        nq = q.shape[0]
        with self._read_txn():
            allowed = self._allowed_ids(conds) if conds else None
            if nq == 0 or self._n_live == 0 or (allowed is not None and allowed.size == 0):
                return pad_results(nq, k)
            if self._n_live <= self.exact_max:
                if allowed is not None and allowed.size <= max(self.subset_exact_max, self._n_live // 4):
                    return self._exact_subset(q, k, allowed)
                return self._exact_segments(q, k, allowed)
            ann = self._ensure_ann()
            if allowed is None:
                return self._ann_search(ann, q, k)
            if allowed.size <= self.subset_exact_max:
                return self._exact_subset(q, k, allowed)
            return self._ann_search_filtered(ann, q, k, allowed)

    def _exact_segments(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the memory-mapped segments (dead / filtered rows masked)."""
        nq = q.shape[0]
        qstep = max(1, _SCORE_BUDGET // _BLOCK_ROWS)
        out_s, out_i = pad_results(nq, k)
        for q0 in range(0, nq, qstep):
            qc = q[q0 : q0 + qstep]
            best_s = best_i = None
            for seg in self._segs.values():
                for b0 in range(0, seg.row_ids.size, _BLOCK_ROWS):
                    rid = seg.row_ids[b0 : b0 + _BLOCK_ROWS]
                    valid = rid >= 0
                    if allowed is not None:
                        valid &= np.isin(rid, allowed)
                    nvalid = int(np.count_nonzero(valid))
                    if nvalid == 0:
                        continue
                    x = seg.vecs[b0 : b0 + rid.size]
                    if nvalid < rid.size // 2:  # mostly masked: score only the valid rows
                        idx = np.flatnonzero(valid)
                        s, ids_b = qc @ x[idx].T, rid[idx]
                    else:
                        s, ids_b = qc @ x.T, rid
                        if nvalid < rid.size:
                            s[:, ~valid] = -np.inf
                    best_s, best_i = _topk_merge(best_s, best_i, s, np.broadcast_to(ids_b, s.shape), k)
            out_s[q0 : q0 + qstep], out_i[q0 : q0 + qstep] = _finish(best_s, best_i, qc.shape[0], k)
        return out_s, out_i

    def _exact_subset(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the vectors of ``ids`` (gathered chunk by chunk)."""
        nq = q.shape[0]
        qstep = max(1, _SCORE_BUDGET // _BLOCK_ROWS)
        best: list[tuple[Any, Any]] = [(None, None)] * len(range(0, nq, qstep))
        for a in range(0, ids.size, _BLOCK_ROWS):
            chunk = ids[a : a + _BLOCK_ROWS]
            x = self._gather(chunk)
            for j, q0 in enumerate(range(0, nq, qstep)):
                s = q[q0 : q0 + qstep] @ x.T
                best[j] = _topk_merge(*best[j], s, np.broadcast_to(chunk, s.shape), k)
        out_s, out_i = pad_results(nq, k)
        for j, q0 in enumerate(range(0, nq, qstep)):
            n = min(qstep, nq - q0)
            out_s[q0 : q0 + n], out_i[q0 : q0 + n] = _finish(*best[j], n, k)
        return out_s, out_i

    # ------------------------------------------------------ approximate index
    def _ideal_nlist(self, n: int) -> int:
        if self.nlist is not None:
            return self.nlist
        return int(min(65536, max(16, round(2 * math.sqrt(n)))))

    def _ann_usable(self, ann: Any, n: int) -> bool:
        if ann is None or ann.d != self.dim:
            return False
        ideal = self._ideal_nlist(n)
        if self.nlist is not None:
            return ann.nlist == self.nlist
        return ideal / 4 <= ann.nlist <= ideal * 4

    def build_index(self, force: bool = False, queries: np.ndarray | None = None) -> None:
        """Build (or bring up to date) the approximate index now rather than at the first search.

        ``force`` rebuilds it from scratch. ``queries`` (a sample of real
        queries, e.g. a validation set) re-tunes ``nprobe`` for
        ``target_recall`` on them instead of on stored vectors.
        """
        if faiss is None:  # pragma: no cover
            raise ProductLensError("the approximate index needs faiss (pip install faiss-cpu)")
        q = None if queries is None else check_vectors(queries, self.dim, what="queries")
        with self._read_txn():
            if self._n_live < 2:
                return
            if force:
                self._ann = None
            ann = self._ensure_ann()
            if q is not None and q.shape[0] and self.nprobe is None:
                ann.nprobe = self._tune_nprobe(ann, queries=q)
                self._save_ann()

    def _ensure_ann(self) -> Any:
        if faiss is None:  # pragma: no cover
            raise ProductLensError("the approximate index needs faiss (pip install faiss-cpu)")
        n = self._n_live
        if self._ann is not None and not self._ann_usable(self._ann, n):
            self._ann = None
        if self._ann is None:
            self._load_ann_file()
            if self._ann is not None and not self._ann_usable(self._ann, n):
                self._ann = None
        if self._ann is not None and self._ann_vgen != self._vgen:
            if not self._patch_ann():
                self._ann = None
        if self._ann is None:
            self._build_ann()
        if self.nprobe is not None:
            self._ann.nprobe = min(self.nprobe, self._ann.nlist)
        return self._ann

    def _load_ann_file(self) -> None:
        files = []
        for entry in os.scandir(self.path):
            m = _ANN_RE.match(entry.name)
            if m and int(m.group(1)) <= self._vgen:
                files.append((int(m.group(1)), entry.path))
        for v, p in sorted(files, reverse=True):
            try:
                ann = faiss.read_index(p)
            except Exception:  # vanished or unreadable: try an older one, else build
                continue
            # (read_index returns the concrete class; no downcast_index, which would drop ownership)
            if not isinstance(ann, faiss.IndexIVF) or ann.metric_type != faiss.METRIC_INNER_PRODUCT:
                continue
            self._ann, self._ann_vgen, self._ann_pending = ann, v, 0
            self._ann_ids = self._index_ids(ann)
            return

    @staticmethod
    def _index_ids(ann: Any) -> np.ndarray:
        inv = ann.invlists
        parts = []
        for lst in range(ann.nlist):
            size = inv.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), size).copy())
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def _patch_ann(self) -> bool:
        """Apply the changes since the index's generation; False if a rebuild is better."""
        db = self._conn()
        live = self._get_lookup()[0]
        rows = db.execute("SELECT id FROM items WHERE vgen > ?", (self._ann_vgen,)).fetchall()
        changed = np.sort(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        assert self._ann_ids is not None
        removed = np.setdiff1d(self._ann_ids, live, assume_unique=True)
        delta = changed.size + removed.size
        if delta > 0.25 * max(1, self._ann.ntotal):
            return False
        drop = np.union1d(changed, removed)
        if drop.size:
            self._ann.remove_ids(faiss.IDSelectorBatch(drop))
        for a in range(0, changed.size, _BLOCK_ROWS):
            chunk = changed[a : a + _BLOCK_ROWS]
            self._ann.add_with_ids(self._gather(chunk), chunk)
        self._ann_ids = np.union1d(np.setdiff1d(self._ann_ids, drop, assume_unique=True), changed)
        self._ann_vgen = self._vgen
        self._ann_pending += delta
        if self._ann_pending > max(1000, 0.05 * self._ann.ntotal):
            self._save_ann()
        return True

    def _build_ann(self) -> None:
        n = self._n_live
        nlist = min(self._ideal_nlist(n), max(1, n // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        ann = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        ann.own_fields = True
        quantizer.this.disown()
        ann.cp.spherical = True
        ann.cp.seed = 1234
        ids = self._get_lookup()[0]
        rng = np.random.default_rng(1234)
        n_train = min(n, max(40 * nlist, 20_000))
        sample = np.sort(rng.choice(ids, size=n_train, replace=False)) if n_train < n else ids
        ann.train(self._gather(sample))
        del sample
        for seg in self._segs.values():
            for b0 in range(0, seg.row_ids.size, _BLOCK_ROWS):
                rid = seg.row_ids[b0 : b0 + _BLOCK_ROWS]
                valid = np.flatnonzero(rid >= 0)
                if valid.size:
                    x = seg.vecs[b0 : b0 + rid.size]
                    ann.add_with_ids(np.ascontiguousarray(x[valid] if valid.size < rid.size else x), rid[valid])
        self._ann, self._ann_vgen, self._ann_ids = ann, self._vgen, ids.copy()
        ann.nprobe = self.nprobe if self.nprobe is not None else self._tune_nprobe(ann)
        self._save_ann()
        _malloc_trim()  # give the training / encoding buffers back to the OS

    def _tune_nprobe(self, ann: Any, queries: np.ndarray | None = None, k: int = 100) -> int:
        """nprobe for ``target_recall`` at k, from a ~sqrt(2) ladder (1, 2, 3, 4, 6, 8, 11, 16, ...).

        With ``queries`` (real ones) it is the smallest nprobe reaching the
        target on them. Without, 200 stored vectors serve as queries (each left
        out of both result lists) and the result is taken two ladder steps (2x)
        higher: real queries lie further from the catalog than its own items,
        and their recall at the same nprobe is lower.
        """
        ids = self._get_lookup()[0]
        stored = queries is None
        k = min(k, ids.size - 1 if stored else ids.size)
        if k < 1:
            return min(ann.nlist, 8)
        if stored:
            rng = np.random.default_rng(4321)
            qids = np.sort(rng.choice(ids, size=min(200, ids.size), replace=False))
            q = self._gather(qids)
        else:
            q, qids = queries, np.full(queries.shape[0], -2, dtype=np.int64)
        _, gt = self._exact_segments(q, k + 1)
        ladder = sorted({min(ann.nlist, int(round(2 ** (e / 2)))) for e in range(0, 2 * int(math.log2(ann.nlist)) + 3)})
        for step, nprobe in enumerate(ladder):
            ann.nprobe = nprobe
            _, got = self._ann_search(ann, q, k + 1)
            hits = 0
            for qi, g, r in zip(qids.tolist(), gt, got):
                hits += np.intersect1d(g[g != qi][:k], r[r != qi][:k]).size
            if hits / (k * len(qids)) >= self.target_recall:
                break
        return ladder[min(step + 2, len(ladder) - 1)] if stored else nprobe

    def _save_ann(self) -> Path | None:
        """Write the index atomically as ``ann-<vgen>.faiss``; returns its path (None on failure)."""
        final = self.path / f"ann-{self._ann_vgen}.faiss"
        tmp = self._tmp_path(final.name)
        try:
            faiss.write_index(self._ann, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.path)
        except Exception:  # persisting is an optimisation: keep the in-memory index
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        self._ann_pending = 0
        for entry in os.scandir(self.path):
            m = _ANN_RE.match(entry.name)
            if m and int(m.group(1)) < self._ann_vgen:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return final

    def _ann_search(
        self, ann: Any, q: np.ndarray, k: int, sel: Any = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        nq = q.shape[0]
        kc = int(min(max(k * self.rerank, k), max(1, ann.ntotal)))
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe or ann.nprobe)
        if sel is not None:
            params.sel = sel
        _, cand = ann.search(q, kc, params=params)
        return self._rescore(q, cand, k)

    def _rescore(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores for candidate ids (nq, m), top k of them."""
        nq = q.shape[0]
        out_s, out_i = pad_results(nq, k)
        step = max(1, (16 << 20) // max(1, cand.shape[1] * self.dim))  # gathered floats per chunk
        for a in range(0, nq, step):
            c = cand[a : a + step]
            valid = c >= 0
            uniq, inv = np.unique(np.where(valid, c, -1), return_inverse=True)
            inv = inv.reshape(c.shape)
            has_pad = uniq.size and uniq[0] < 0
            x = self._gather(uniq[1:] if has_pad else uniq)
            if has_pad:
                x = np.concatenate([np.zeros((1, self.dim), np.float32), x])
            s_all = q[a : a + step] @ x.T
            s = np.take_along_axis(s_all, inv, axis=1)
            s[~valid] = -np.inf
            best_s, best_i = _topk_merge(None, None, s, c, k)
            out_s[a : a + step], out_i[a : a + step] = _finish(best_s, best_i, c.shape[0], k)
        return out_s, out_i

    def _ann_search_filtered(
        self, ann: Any, q: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        frac = allowed.size / max(1, self._n_live)
        nprobe = int(min(ann.nlist, math.ceil(ann.nprobe / math.sqrt(max(frac, 1e-6)))))
        sel = faiss.IDSelectorBatch(allowed)
        s, i = self._ann_search(ann, q, k, sel=sel, nprobe=nprobe)
        short = np.flatnonzero((i < 0).any(axis=1)) if allowed.size >= k else np.zeros(0, dtype=np.int64)
        if short.size:  # the probed lists held too few allowed items: search those queries exactly
            s[short], i[short] = self._exact_subset(q[short], k, allowed)
        return s, i

    # ============================================================= lifecycle
    def close(self) -> None:
        with self._lock:
            self._segs = {}
            self._lookup = None
            self._ann = None
            self._ann_ids = None
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                self._db.close()
                self._db = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()


def _where_sql(conds: list[Condition]) -> tuple[str, list[Any]]:
    """SQL boolean expression (over table ``items``) for parsed where conditions."""
    if not conds:
        return "1", []
    clauses, params = [], []
    for c in conds:
        if c.field == "id" or c.field in CORE_FIELDS:
            col = c.field
        else:
            col = f"json_extract(extra, '$.\"{c.field}\"')"
        if c.op == "eq":
            if c.value is None:
                clauses.append(f"{col} IS NULL")
            else:
                clauses.append(f"{col} = ?")
                params.append(c.value)
        elif c.op == "in":
            values = [v for v in c.value if v is not None]
            parts = []
            if values:
                parts.append(f"{col} IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(values))
            if len(values) < len(c.value):
                parts.append(f"{col} IS NULL")
            clauses.append("(" + " OR ".join(parts) + ")" if parts else "0")
        else:
            sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
            clauses.append(f"{col} {sym} ?")
            params.append(c.value)
    return " AND ".join(clauses), params

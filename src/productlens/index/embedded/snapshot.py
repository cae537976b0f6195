"""A reader's in-memory view of one committed state: memory-mapped segments and id locations."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import numpy as np

from ...types import ProductLensError
from .schema import get_meta
from .segments import Segment, advise, open_segment, random_access


class Snapshot:
    """Memory-mapped segments plus a per-segment row -> id table, at generation ``gen``.

    :meth:`refresh` brings it up to the committed generation incrementally
    (new segments are mapped, tombstones since ``gen`` applied copy-on-write,
    dropped segments forgotten); call it inside a SQLite transaction so that it
    sees one committed state. It raises
    :class:`~productlens.index.embedded.segments.SegmentMissing` when a file
    of that state vanished (a concurrent compaction): :meth:`invalidate` and
    read again.
    """

    def __init__(self, path: Path, dim: int, dtype: str = "float32") -> None:
        self.path = path
        self.dim = dim
        self.dtype = dtype  # of the segment files; everything handed out is float32
        self.gen = -1  # generation of the snapshot (-1: reload everything)
        self.vgen = -1  # vector generation: last commit that changed vectors
        self.segs: dict[int, Segment] = {}
        self.n_live = 0
        self.random = False  # segment maps advised MADV_RANDOM (see segments.random_access)
        self._lookup: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def invalidate(self) -> None:
        """Make the next refresh a full reload."""
        self.gen = -1

    def clear(self) -> None:
        """Drop the memory maps and lookup table."""
        self.segs = {}
        self._lookup = None

    def refresh(self, db: sqlite3.Connection) -> None:
        """Bring the snapshot up to the committed generation (inside a transaction)."""
        gen = get_meta(db, "gen")
        if gen == self.gen:
            return
        vgen = get_meta(db, "vgen")
        seg_rows = dict(db.execute("SELECT seg, rows FROM segments").fetchall())
        full = self.gen < 0
        segs = {} if full else {no: s for no, s in self.segs.items() if no in seg_rows}
        new = sorted(no for no in seg_rows if no not in segs)
        if not full:
            # tombstones written since our generation, in segments we keep
            dead = db.execute("SELECT seg, off FROM tombstones WHERE gen > ?", (self.gen,)).fetchall()
            if dead:
                a = np.array(dead, dtype=np.int64).reshape(-1, 2)
                for no in np.unique(a[:, 0]).tolist():
                    s = segs.get(no)
                    if s is not None:  # copy-on-write: arrays handed out earlier stay valid
                        row_ids = s.row_ids.copy()
                        row_ids[a[a[:, 0] == no, 1]] = -1
                        segs[no] = Segment(no, s.vecs, row_ids)
        for no in new:
            vecs = open_segment(self.path, no, int(seg_rows[no]), self.dim, self.dtype)
            row_ids = np.full(int(seg_rows[no]), -1, dtype=np.int64)
            rows = db.execute("SELECT off, id FROM items WHERE seg=?", (no,)).fetchall()
            if rows:
                a = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=2 * len(rows))
                row_ids[a[0::2]] = a[1::2]
            segs[no] = Segment(no, vecs, row_ids)
        self.segs = dict(sorted(segs.items()))
        random = random_access(sum(s.vecs.nbytes for s in self.segs.values()))
        for no, s in self.segs.items():
            if no in new or random != self.random:
                advise(s.vecs, random)
        self.random = random
        self.n_live = int(sum(int(np.count_nonzero(s.row_ids >= 0)) for s in self.segs.values()))
        self._lookup = None
        self.gen = gen
        self.vgen = vgen

    def lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted live ids, their segment numbers, their row offsets)."""
        if self._lookup is None:
            ids, segno, off = [], [], []
            for no, s in self.segs.items():
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

    def live_ids(self) -> np.ndarray:
        """Sorted live ids (not a copy: do not modify)."""
        return self.lookup()[0]

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, segment numbers, offsets) of ``ids`` in the snapshot."""
        sid, sseg, soff = self.lookup()
        if sid.size == 0:
            z = np.zeros(ids.size, dtype=np.int64)
            return np.zeros(ids.size, dtype=bool), z, z
        pos = np.clip(np.searchsorted(sid, ids), 0, sid.size - 1)
        found = sid[pos] == ids
        return found, sseg[pos], soff[pos]

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of ids known to be live, in order."""
        found, seg, off = self.locate(ids)
        if not np.all(found):
            missing = ids[~found][:5].tolist()
            raise ProductLensError(f"ids not in the store: {missing}")
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        for no in np.unique(seg).tolist():
            m = np.flatnonzero(seg == no)
            o = off[m]
            order = np.argsort(o, kind="stable")  # read the file in order
            out[m[order]] = self.segs[no].vecs[o[order]]
        return out

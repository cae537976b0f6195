"""The embedded store: a directory with SQLite metadata and immutable vector segments.

Layout of a store directory::

    store.sqlite (+ -wal, -shm)   metadata, vector locations, live segments, info
    seg-<n>.npy                   immutable (rows, dim) vector segments (float32, or float16)
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
``build_index``). After writes the index is patched (``remove_ids`` +
``add_with_ids`` for the changed ids) rather than rebuilt, unless the change
is large.

Modules, each with one job:

- :mod:`.store`     :class:`EmbeddedStore`: public API, transactions, writes, compaction
- :mod:`.schema`    SQLite schema, meta counters, metadata columns and filters as SQL
- :mod:`.segments`  segment files: atomic write, memory-mapped open, orphan clean-up
- :mod:`.snapshot`  a reader's view: mapped segments, id -> (segment, row) lookup
- :mod:`.search`    exact search, candidate re-scoring, top-k merging
- :mod:`.ann`       the FAISS IVF index: build, nprobe tuning, patching, persistence
"""

from .store import EmbeddedStore

__all__ = ["EmbeddedStore"]

"""The SQLite side of a store: schema, meta counters, item rows and tombstones, metadata and filters as SQL."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...types import ProductLensError
from ..base import CORE_FIELDS, Condition, clean_metadata, json_default

DB_NAME = "store.sqlite"
FORMAT_VERSION = 2  # 1: float32 segments only; 2: adds float16 segments (meta "vector_bytes")

#: segment dtypes a store can hold, by name -> bytes per component (recorded in meta "vector_bytes")
VECTOR_DTYPES = {"float32": 4, "float16": 2}

SCHEMA = """
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

def init_schema(
    db: sqlite3.Connection, path: Path, dim: int | None, vector_dtype: str | None = None
) -> tuple[int, str]:
    """Create the schema (needs ``dim``) or check the existing one; returns the store's (dim, vector dtype).

    ``vector_dtype`` (``"float32"`` or ``"float16"``) is fixed when the store is
    created; None takes the existing store's (float32 for a new one), and a
    different value for an existing store is refused.
    """
    # an existing store is only read here: a deferred transaction, so that opening does not wait for (or,
    # past the timeout, fail on) a writer of another process; creating one takes the write lock
    db.execute("BEGIN")
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is not None
    if not exists:
        db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
    try:
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        stored_dim = None
        if has_meta:
            row = db.execute("SELECT value FROM meta WHERE key='dim'").fetchone()
            stored_dim = None if row is None else int(row[0])
        if stored_dim is None:
            if dim is None:
                raise ProductLensError(f"no store at {path}; pass dim to create one")
            dtype = vector_dtype or "float32"
            # (executescript would COMMIT: run the statements one by one inside our transaction)
            for stmt in filter(None, (s.strip() for s in SCHEMA.split(";"))):
                db.execute(stmt)
            # float32 stores keep format 1, so that older versions still open them
            meta = [("dim", int(dim)), ("format", 1 if dtype == "float32" else FORMAT_VERSION),
                    ("gen", 0), ("vgen", 0), ("next_seg", 0)]
            if dtype != "float32":
                meta.append(("vector_bytes", VECTOR_DTYPES[dtype]))
            db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta)
            stored_dim = int(dim)
        else:
            fmt = db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if fmt is None or int(fmt[0]) > FORMAT_VERSION:
                raise ProductLensError(f"store at {path} has an unknown format {fmt and fmt[0]}")
            if dim is not None and int(dim) != stored_dim:
                raise ProductLensError(
                    f"store at {path} holds {stored_dim}-d vectors; refusing to open it with dim={dim}"
                )
            row = db.execute("SELECT value FROM meta WHERE key='vector_bytes'").fetchone()
            by_bytes = {b: name for name, b in VECTOR_DTYPES.items()}
            dtype = by_bytes.get(4 if row is None else int(row[0]))
            if dtype is None:
                raise ProductLensError(f"store at {path} has vectors of an unknown width ({row[0]} bytes)")
            if vector_dtype is not None and vector_dtype != dtype:
                raise ProductLensError(
                    f"store at {path} holds {dtype} vectors; refusing to open it with vector_dtype={vector_dtype}"
                )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return stored_dim, dtype


def get_meta(db: sqlite3.Connection, key: str) -> int:
    return int(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])


def set_meta(db: sqlite3.Connection, **values: int) -> None:
    db.executemany("UPDATE meta SET value=? WHERE key=?", [(int(v), k) for k, v in values.items()])


def upsert_items(
    db: sqlite3.Connection, ids: np.ndarray, seg: int, gen: int, rows: list[tuple] | None
) -> None:
    """Point ``ids`` at rows 0.. of segment ``seg`` (vector generation ``gen``).

    ``rows`` (one :func:`columns` tuple per id) replaces their metadata; with
    None the metadata of existing ids is kept.
    """
    locs = zip(ids.tolist(), itertools.repeat(seg), range(ids.size), itertools.repeat(gen))
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


def tombstone(db: sqlite3.Connection, old: list[tuple[int, int, int]], gen: int) -> list[int]:
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
        drop_segments(db, empty)
    return empty


def drop_segments(db: sqlite3.Connection, nos: list[int]) -> None:
    """Unregister segments (and their tombstones); their files are deleted after the commit."""
    js = json.dumps(nos)
    db.execute("DELETE FROM tombstones WHERE seg IN (SELECT value FROM json_each(?))", (js,))
    db.execute("DELETE FROM segments WHERE seg IN (SELECT value FROM json_each(?))", (js,))


def ids_json(ids: np.ndarray) -> str:
    """``ids`` as a JSON list, for ``IN (SELECT value FROM json_each(?))``."""
    return json.dumps(np.asarray(ids, dtype=np.int64).tolist())


def columns(md: dict) -> tuple[Any, Any, Any, Any, str | None]:
    """Split a metadata dict into (product_id, image, title, category, extra json)."""
    md = clean_metadata(md)
    cols = [md.pop(f, None) for f in CORE_FIELDS]
    extra = json.dumps(md, default=json_default, sort_keys=True) if md else None
    return (cols[0], cols[1], cols[2], cols[3], extra)


def row_to_dict(row: Sequence[Any]) -> dict:
    """An ``(id, product_id, image, title, category, extra)`` row as a metadata dict."""
    i, pid, image, title, category, extra = row
    d: dict[str, Any] = {"id": int(i)}
    for key, v in (("product_id", pid), ("image", image), ("title", title), ("category", category)):
        if v is not None:
            d[key] = v
    if extra:
        d.update(json.loads(extra))
    return d


def _extra_path(field: str) -> str:
    """The SQL JSON path of a field kept in an item's ``extra`` (a name parse_where checked)."""
    return f"'$.\"{field}\"'"


def absent_fields(db: sqlite3.Connection, fields: Sequence[str]) -> list[str]:
    """The extra (not core) ``fields`` that no item has: a filter on one matches nothing, which a typo in a
    field's name (``{"colour": ...}`` for ``color``) looks like. One scan per field, stopping at the first
    item that has it."""
    return [f for f in dict.fromkeys(fields) if f != "id" and f not in CORE_FIELDS
            and db.execute(f"SELECT 1 FROM items WHERE json_type(extra, {_extra_path(f)}) IS NOT NULL LIMIT 1")
            .fetchone() is None]


def extra_fields(db: sqlite3.Connection, limit: int = 20) -> list[str]:
    """Up to ``limit`` names of the extra fields items have, sorted (a scan of every item's extra)."""
    rows = db.execute("SELECT DISTINCT j.key FROM items, json_each(items.extra) AS j WHERE items.extra IS NOT NULL "
                      "ORDER BY j.key LIMIT ?", (limit,)).fetchall()
    return [r[0] for r in rows]


def where_sql(conds: list[Condition]) -> tuple[str, list[Any]]:
    """SQL boolean expression (over table ``items``) for parsed where conditions.

    Values compare only with values of their own kind, as in every backend: a string never equals or
    ranges with a number (SQLite's column affinity had matched ``{"id": "1"}`` with id 1, and it orders
    any text above any number, so ``{"size": {"gt": 2}}`` had matched "M"), and a bool equals only a bool
    (JSON's ``true`` is SQLite's 1, so ``{"flag": True}`` had matched ``flag == 1``).
    """
    if not conds:
        return "1", []
    clauses, params = [], []
    for c in conds:
        if c.field == "id" or c.field in CORE_FIELDS:
            col, kind = c.field, f"typeof({c.field})"
        else:
            path = _extra_path(c.field)
            col, kind = f"json_extract(extra, {path})", f"json_type(extra, {path})"
        if c.op == "eq":
            if c.value is None:
                clauses.append(f"{col} IS NULL")
            else:
                clause, ps = _typed_in(col, kind, [c.value])
                clauses.append(clause)
                params += ps
        elif c.op == "in":
            values = [v for v in c.value if v is not None]
            parts = []
            if values:
                clause, ps = _typed_in(col, kind, values)
                parts.append(clause)
                params += ps
            if len(values) < len(c.value):
                parts.append(f"{col} IS NULL")
            clauses.append("(" + " OR ".join(parts) + ")" if parts else "0")
        else:
            sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
            if isinstance(c.value, bool):  # a bool has no order with anything
                clauses.append("0")
                continue
            clauses.append(f"({_kind_is(kind, c.value)} AND {col} {sym} ?)")
            params.append(c.value)
    return " AND ".join(clauses), params


_NUMBER_KINDS = "('integer', 'real')"


def _kind_is(kind: str, value: Any) -> str:
    """SQL: the stored value (whose ``typeof``/``json_type`` is ``kind``) is of ``value``'s kind."""
    return f"{kind} = 'text'" if isinstance(value, str) else f"{kind} IN {_NUMBER_KINDS}"


def _typed_in(col: str, kind: str, values: list[Any]) -> tuple[str, list[Any]]:
    """SQL: ``col`` equals one of ``values`` (no None), each compared only with stored values of its kind."""
    parts, params = [], []
    for is_kind in (lambda v: isinstance(v, str), lambda v: not isinstance(v, (str, bool))):
        group = [v for v in values if is_kind(v)]
        if len(group) == 1:  # "= ?" keeps the index's order (IN json_each added a sort): 1.4 ms, not 1.05, at 200k
            parts.append(f"({_kind_is(kind, group[0])} AND {col} = ?)")
            params.append(group[0])
        elif group:
            parts.append(f"({_kind_is(kind, group[0])} AND {col} IN (SELECT value FROM json_each(?)))")
            params.append(json.dumps(group))
    for flag in sorted({v for v in values if isinstance(v, bool)}):
        # only metadata beyond the columns holds bools (the columns are ints and strings)
        parts.append(f"{kind} = '{'true' if flag else 'false'}'" if kind.startswith("json_type") else "0")
    return "(" + " OR ".join(parts) + ")", params

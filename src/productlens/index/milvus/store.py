"""The :class:`MilvusStore` class: a catalog store in a Milvus collection."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from ...types import ProductLensError
from ..base import (
    check_ids,
    check_k,
    check_present,
    check_metadata,
    check_update,
    check_vectors,
    clean_metadata,
    info_text,
    pad_results,
    parse_where,
)
from ..client_store import ClientStore, json_ready, reason
from .filters import where_expr


DEFAULT_URI = "http://127.0.0.1:19530"
#: the most results Milvus returns per query (its ``topk`` limit)
MAX_K = 16_384
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
_INFO_SUFFIX = "__info"
_PART = "##"  # info values longer than _INFO_CHUNK continue in rows "<key>##1", "<key>##2", ...
_INFO_CHUNK = 60_000  # characters per info row (VARCHAR max_length is 65535)
_MIN_INDEXED_ROWS = 1024  # Milvus's indexCoord.minSegmentNumRowsToEnableIndex
_ROWS_PER_CALL = 2_000  # upsert / query batch (gRPC messages stay well under 64 MB at 1280-d)

#: index name -> (Milvus index_type, build params, search params; "{k}" is replaced by k)
INDEXES: dict[str, tuple[str, dict, dict]] = {
    "flat": ("FLAT", {}, {}),
    "hnsw": ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": "{k}"}),
    "ivf_flat": ("IVF_FLAT", {"nlist": 1024}, {"nprobe": 32}),
    "ivf_sq8": ("IVF_SQ8", {"nlist": 1024}, {"nprobe": 32}),
}


def _client_class():
    try:
        from pymilvus import MilvusClient
    except ImportError as e:  # pragma: no cover - the milvus extra is missing
        raise ProductLensError("the milvus backend needs pymilvus: pip install 'productlens[milvus]'") from e
    return MilvusClient


class MilvusStore(ClientStore):
    """A catalog store in a Milvus collection (a server: standalone or a cluster).

    ``open_store(name, dim, backend="milvus", uri=...)``: ``name`` is the
    collection (letters, digits, ``_``); item metadata is one JSON field
    ``meta`` and the store's info a second collection ``<name>__info``.

    Options (keywords of :func:`productlens.index.open_store`):

    uri: the server (default ``$PRODUCTLENS_MILVUS_URI`` or ``http://127.0.0.1:19530``).
    token: credentials (``"user:password"`` or an API key), if the server wants them.
    index: ``"flat"`` (default: exact search), ``"hnsw"``, ``"ivf_flat"`` or ``"ivf_sq8"``
        (approximate; set when the collection is created).
    ef: HNSW search breadth (default ``max(4k, 256)``); nprobe: IVF lists probed (default 32).
    consistency: what reads wait for: ``"Session"`` (default: every write made
        from this process, through any handle, is visible to the next read; a
        write from another process shows within Milvus's time tick, ~0.2 s) or
        ``"Strong"`` (every write anywhere; each read waits up to a time tick).
    timeout: seconds to wait for the server on each call (default 30).

    Differences from the embedded store, by Milvus's design: a write of many
    items is applied in batches and a reader may see some batches before the
    others (one batch is one request); there is no cross-process lock; a
    search returns at most 16,384 results per query.
    """

    engine = "Milvus"
    reindexes_in_background = True

    def __init__(self, name: str, dim: int | None = None, *, uri: str | None = None, token: str | None = None,
                 index: str = "flat", ef: int | None = None, nprobe: int | None = None,
                 consistency: str = "Session", timeout: float = 30.0) -> None:
        name = os.fspath(name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ProductLensError(f"Milvus collection name {name!r}: letters, digits and _ only, "
                                   "starting with a letter or _ (at most 200 characters)")
        if index not in INDEXES:
            raise ProductLensError(f"unknown Milvus index {index!r}; known: {sorted(INDEXES)}")
        self.name, self.info_name = name, name + _INFO_SUFFIX
        self.uri = self.where = uri or os.environ.get("PRODUCTLENS_MILVUS_URI") or DEFAULT_URI
        if consistency not in ("Strong", "Session", "Bounded", "Eventually"):
            raise ProductLensError(f"unknown Milvus consistency level {consistency!r}")
        self.ef, self.nprobe, self.timeout, self.consistency = ef, nprobe, float(timeout), consistency
        self._lock = threading.RLock()
        self._client, self._token = None, token or ""
        try:
            self._client = _client_class()(uri=self.uri, token=token or "", timeout=self.timeout)
        except ProductLensError:
            raise
        except Exception as e:
            raise ProductLensError(f"cannot reach Milvus at {self.uri}: {reason(e)}") from None
        try:
            if self._call(self.client.has_collection, name):
                self.dim, self.index = self._describe()
                if dim is not None and dim != self.dim:
                    raise ProductLensError(f"Milvus collection {name} at {self.uri} holds {self.dim}-d vectors, "
                                           f"not {dim}-d (another model made it; use a new collection)")
            elif dim is None:
                raise ProductLensError(f"no Milvus collection {name} at {self.uri}; pass dim to create one")
            else:
                self.dim, self.index = int(dim), index
                self._create()
            self._call(self.client.load_collection, name)
            self._call(self.client.load_collection, self.info_name)
        except BaseException:
            self.close()
            raise

    # ============================================================ plumbing
    def _call_options(self) -> dict[str, Any]:
        return {"timeout": self.timeout}

    def _describe(self) -> tuple[int, str]:
        desc = self._call(self.client.describe_collection, self.name)
        fields = {f["name"]: f for f in desc["fields"]}
        if set(fields) != {"id", "vector", "meta"} or not self._call(self.client.has_collection, self.info_name):
            raise ProductLensError(f"Milvus collection {self.name} at {self.uri} was not made by productlens "
                                   f"(fields {sorted(fields)})")
        dim = int(fields["vector"]["params"]["dim"])
        index_type = "FLAT"
        with contextlib.suppress(Exception):
            names = self._call(self.client.list_indexes, self.name)
            if names:
                index_type = self._call(self.client.describe_index, self.name, names[0]).get("index_type", "FLAT")
        index = next((k for k, (t, _, _) in INDEXES.items() if t == index_type), "flat")
        return dim, index

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        for coll, dim, extra in ((self.name, self.dim, "meta"), (self.info_name, 2, "value")):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            if extra == "meta":
                schema.add_field("id", DataType.INT64, is_primary=True)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
                schema.add_field("meta", DataType.JSON)
                index_type, params, _ = INDEXES[self.index]
            else:
                schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)  # Milvus needs one
                schema.add_field("value", DataType.VARCHAR, max_length=65_535)
                index_type, params = "FLAT", {}
            index_params = self.client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
            self._call(self.client.create_collection, coll, schema=schema, index_params=index_params,
                       consistency_level=self.consistency)

    def _query(self, flt: str, fields: list[str], coll: str | None = None) -> list[dict]:
        return self._call(self.client.query, coll or self.name, filter=flt, output_fields=fields,
                          consistency_level=self.consistency)

    def _rows(self, ids: np.ndarray, fields: list[str]) -> dict[int, dict]:
        """``id -> row`` for the ids present in the collection."""
        found: dict[int, dict] = {}
        uniq = np.unique(ids)
        for a in range(0, uniq.size, _ROWS_PER_CALL):
            chunk = uniq[a : a + _ROWS_PER_CALL].tolist()
            for row in self._query(f"id in {chunk}", fields):
                found[int(row["id"])] = row
        return found

    def _write(self, ids: np.ndarray, vectors: np.ndarray, metas: list[dict]) -> None:
        for a in range(0, ids.size, _ROWS_PER_CALL):
            rows = [{"id": int(i), "vector": v, "meta": json_ready(md)}
                    for i, v, md in zip(ids[a : a + _ROWS_PER_CALL].tolist(),
                                        vectors[a : a + _ROWS_PER_CALL], metas[a : a + _ROWS_PER_CALL])]
            self._call(self.client.upsert, self.name, rows)

    # ============================================================== writes
    def upsert(self, ids: Sequence[int], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None:
        ids_a = check_ids(ids, unique=True)
        vecs = check_vectors(vectors, self.dim, n=ids_a.size)
        mds = check_metadata(metadata, ids_a)
        if ids_a.size == 0:
            return
        if mds is None:  # existing items keep their metadata
            old = self._rows(ids_a, ["meta"])
            mds = [_loaded(old[i]["meta"]) if i in old else {} for i in ids_a.tolist()]
        self._write(ids_a, vecs, [clean_metadata(md) for md in mds])

    def update_metadata(self, ids: Sequence[int], metadata: Sequence[dict]) -> None:
        ids_a, mds = check_update(ids, metadata)
        if ids_a.size == 0:
            return
        cur = self._rows(ids_a, ["meta", "vector"])
        check_present(ids_a.tolist(), cur, "update_metadata: ids")
        merged = [clean_metadata(_loaded(cur[i]["meta"]) | md) for i, md in zip(ids_a.tolist(), mds)]
        vecs = np.asarray([cur[i]["vector"] for i in ids_a.tolist()], dtype=np.float32)
        self._write(ids_a, vecs, merged)

    def remove(self, ids: Sequence[int]) -> int:
        ids_a = np.unique(check_ids(ids))
        present = sorted(self._rows(ids_a, ["id"]))
        for a in range(0, len(present), _ROWS_PER_CALL):
            self._call(self.client.delete, self.name, filter=f"id in {present[a : a + _ROWS_PER_CALL]}")
        if present:
            _deleted_now(self.name)
        return len(present)

    # ================================================================ info
    def set_info(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key or len(key) > 480 or _PART in key:
            raise ProductLensError(f"info key must be a non-empty str (at most 480 characters, "
                                   f"without {_PART!r}), got {key!r}")
        text = info_text(key, value)
        parts = [text[a : a + _INFO_CHUNK] for a in range(0, max(1, len(text)), _INFO_CHUNK)]
        rows = [{"key": key, "vector": [0.0, 0.0], "value": json.dumps({"n": len(parts), "v": parts[0]})}]
        rows += [{"key": f"{key}{_PART}{j}", "vector": [0.0, 0.0], "value": p} for j, p in enumerate(parts[1:], 1)]
        # the head row (written last) says how many parts to read: a reader never sees a torn value
        self._call(self.client.upsert, self.info_name, rows[1:]) if len(rows) > 1 else None
        self._call(self.client.upsert, self.info_name, rows[:1])

    def _info_rows(self, flt: str) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self._query(flt, ["key", "value"], self.info_name)}

    def _assemble(self, key: str, head: str) -> Any:
        h = json.loads(head)
        text = h["v"]
        if h["n"] > 1:
            parts = [f"{key}{_PART}{j}" for j in range(1, h["n"])]
            rest = self._info_rows(f"key in {json.dumps(parts)}")
            text += "".join(rest[p] for p in parts)
        return json.loads(text)

    def get_info(self, key: str, default: Any = None) -> Any:
        rows = self._info_rows(f"key == {json.dumps(key)}")
        return default if key not in rows else self._assemble(key, rows[key])

    def info(self) -> dict[str, Any]:
        heads = {k: v for k, v in self._info_rows('key != ""').items() if _PART not in k}
        return {k: self._assemble(k, v) for k, v in sorted(heads.items())}

    # =============================================================== reads
    def __len__(self) -> int:
        return self.count()

    def count(self, where: dict | None = None) -> int:
        """Number of items matching ``where`` (all items without one)."""
        rows = self._query(where_expr(parse_where(where)), ["count(*)"])
        return int(rows[0]["count(*)"])

    def ids(self) -> np.ndarray:
        out: list[int] = []
        with self._lock, _quiet("pymilvus"):
            try:
                it = self.client.query_iterator(
                    self.name, batch_size=_ROWS_PER_CALL * 4, filter="id >= 0", output_fields=["id"],
                    consistency_level=self.consistency, timeout=self.timeout)
                while batch := it.next():
                    out.extend(int(r["id"]) for r in batch)
                it.close()
            except Exception as e:
                raise self.failure(e) from None
        return np.unique(np.asarray(out, dtype=np.int64))

    def get(self, ids: Sequence[int]) -> list[dict | None]:
        ids_a = check_ids(ids)
        if ids_a.size == 0:
            return []
        found = self._rows(ids_a, ["meta"])
        return [{"id": i} | _loaded(found[i]["meta"]) if i in found else None for i in ids_a.tolist()]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        ids_a = check_ids(ids)
        found = self._rows(ids_a, ["vector"])
        check_present(ids_a.tolist(), found)
        if not ids_a.size:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray([found[i]["vector"] for i in ids_a.tolist()], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, where: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = check_vectors(queries, self.dim, what="queries")
        k = check_k(k)
        if k > MAX_K:
            raise ProductLensError(f"Milvus returns at most {MAX_K} results per query; asked for k={k}")
        flt = where_expr(parse_where(where))
        scores, ids = pad_results(q.shape[0], k)
        if q.shape[0] == 0:
            return scores, ids
        _, _, search_params = INDEXES[self.index]
        params = {key: self._search_param(key, v, k) for key, v in search_params.items()}
        for a in range(0, q.shape[0], 256):
            res = self._call(self.client.search, self.name, data=q[a : a + 256], limit=k, filter=flt,
                             output_fields=[], search_params={"metric_type": "IP", "params": params},
                             consistency_level=self.consistency)
            for r, hits in enumerate(res, start=a):
                got = sorted(((float(h["distance"]), int(h["id"])) for h in hits), key=lambda t: (-t[0], t[1]))
                for c, (s, i) in enumerate(got[:k]):
                    scores[r, c], ids[r, c] = s, i
        return scores, ids

    def _search_param(self, key: str, value: Any, k: int) -> Any:
        if key == "ef":
            return max(k, self.ef or max(4 * k, 256))
        if key == "nprobe":
            return self.nprobe or value
        return value

    def build_index(self, wait: float = 3600.0) -> None:
        """Seal what was written, index it and wait until searches use the index (up to ``wait`` s).

        Milvus searches freshly written rows ("growing segments") with a coarse
        interim index (recall@100 about 0.85 on clustered data) until they are
        sealed, indexed and handed to the query node; call this after a bulk
        load. The catalog loaders do.
        """
        import time

        from pymilvus import connections, utility

        self._call(self.client.flush, self.name)
        if INDEXES[self.index][0] == "FLAT":
            return  # searched exactly, growing or not
        n_live, using = len(self), f"productlens-{id(self)}"
        # the segment report is in pymilvus's ORM API, which wants a named connection of its own
        self._call(connections.connect, alias=using, uri=self.uri, token=self._token)
        try:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                segs = self._call(utility.get_query_segment_info, self.name, using=using)  # sealed and served
                # Milvus indexes no segment under 1024 rows (it searches those exactly)
                if (sum(sg.num_rows for sg in segs) >= n_live
                        and all(sg.index_name or sg.num_rows < _MIN_INDEXED_ROWS for sg in segs)):
                    return
                time.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                connections.disconnect(using)
        raise ProductLensError(f"Milvus at {self.uri}: collection {self.name} still not indexed after {wait:.0f} s")

    # =========================================================== lifecycle
    def drop(self) -> None:
        """Delete the collection and its info from the server (the store is closed afterwards)."""
        for coll in (self.name, self.info_name):
            if self._call(self.client.has_collection, coll):
                self._call(self.client.drop_collection, coll)
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None


def _deleted_now(collection: str) -> None:
    """Make this process's next Session read wait for a delete that just returned.

    pymilvus records each write's timestamp so that Session reads see it, but a
    Milvus 2.3 server answers deletes with timestamp 0; use the clock instead
    (the delete happened before now).
    """
    import time

    from pymilvus.client import ts_utils
    from pymilvus.client.utils import mkts_from_unixtime

    ts_utils.update_collection_ts(collection, max(ts_utils.get_collection_ts(collection) or 0,
                                                  mkts_from_unixtime(time.time())))


def _loaded(meta: Any) -> dict:
    if isinstance(meta, str):  # some pymilvus versions hand JSON back as text
        meta = json.loads(meta)
    return dict(meta or {})


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a logger's warnings (pymilvus warns on every iterator against a 2.3 server)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)

"""The :class:`QdrantStore` class: a catalog store in a Qdrant collection."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Sequence

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
from .filters import where_filter


DEFAULT_URL = "http://127.0.0.1:6333"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,199}$")
_INFO_SUFFIX = "__info"
_ROWS_PER_CALL = 1_000  # points per upsert / retrieve request
_INFO_NS = uuid.UUID("6f1d3a52-2b7e-4d0c-9a55-0c7d6e4b9a10")  # info key -> point id (uuid5)


def _client_class():
    try:
        from qdrant_client import QdrantClient
    except ImportError as e:  # pragma: no cover - the qdrant extra is missing
        raise ProductLensError("the qdrant backend needs qdrant-client: pip install 'productlens[qdrant]'") from e
    return QdrantClient


class _Shared:
    """One local-mode client per folder in this process (qdrant-client locks the folder), shared by
    every handle on it, with the lock that serialises calls into it."""

    _lock = threading.Lock()
    _open: dict[str, list] = {}  # realpath -> [client, lock, handles]

    @classmethod
    def acquire(cls, folder: str) -> tuple[Any, threading.RLock]:
        key = os.path.realpath(folder)
        with cls._lock:
            entry = cls._open.get(key)
            if entry is None:
                Path(key).mkdir(parents=True, exist_ok=True)
                client = _client_class()(path=key, force_disable_check_same_thread=True)
                entry = cls._open[key] = [client, threading.RLock(), 0]
            entry[2] += 1
            return entry[0], entry[1]

    @classmethod
    def release(cls, folder: str) -> None:
        key = os.path.realpath(folder)
        with cls._lock:
            entry = cls._open.get(key)
            if entry is None:
                return
            entry[2] -= 1
            if entry[2] <= 0:
                del cls._open[key]
                with contextlib.suppress(Exception):
                    entry[0].close()


class QdrantStore(ClientStore):
    """A catalog store in a Qdrant collection: on a server, or in a local folder (no server).

    ``open_store(name, dim, backend="qdrant", url=... | location=...)``: ``name``
    is the collection (letters, digits, ``_`` and ``-``); each item is a point whose
    id is the item id and whose payload is ``{"id": id, "meta": metadata}``; the
    store's info is a second collection ``<name>__info``.

    Options (keywords of :func:`productlens.index.open_store`):

    location: a folder for qdrant-client's local mode (no server; exact search in
        memory, for development and catalogs up to ~100k items). Every handle on
        the same folder in one process shares one client; another process cannot
        open the folder at the same time.
    url: a Qdrant server (default ``$PRODUCTLENS_QDRANT_URL`` or
        ``http://127.0.0.1:6333``), used when ``location`` is not given.
    api_key: the server's API key, if it wants one.
    exact: search a server exactly instead of with its HNSW index (default False).
    hnsw_ef: HNSW search breadth on a server (default ``max(4k, 256)``).
    timeout: seconds to wait for the server on each call (default 30).

    Differences from the embedded store: a write of many items is applied in
    batches of 1,000 points, and after a crash a local folder may hold some
    points of an interrupted write (a server applies each batch atomically;
    concurrent readers in the same process never see half a write to a local
    folder). Ranges compare numbers only (no string ranges). A server searches
    approximately unless ``exact=True``.
    """

    engine = "Qdrant"

    def __init__(self, name: str, dim: int | None = None, *, location: str | os.PathLike | None = None,
                 url: str | None = None, api_key: str | None = None, exact: bool = False,
                 hnsw_ef: int | None = None, timeout: float = 30.0) -> None:
        name = os.fspath(name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ProductLensError(f"Qdrant collection name {name!r}: letters, digits, _ and - only, "
                                   "starting with a letter or _ (at most 200 characters)")
        self.name, self.info_name = name, name + _INFO_SUFFIX
        self.exact, self.hnsw_ef, self.timeout = bool(exact), hnsw_ef, float(timeout)
        self._client = None
        self._folder = os.fspath(location) if location is not None else None
        if self._folder is not None:
            self.where = f"local folder {self._folder}"
            try:
                self._client, self._lock = _Shared.acquire(self._folder)
            except ProductLensError:
                raise
            except Exception as e:
                raise ProductLensError(f"cannot open Qdrant's {self.where}: {reason(e)}") from None
        else:
            self.url = url or os.environ.get("PRODUCTLENS_QDRANT_URL") or DEFAULT_URL
            self.where = self.url
            self.reindexes_in_background = True  # its optimizer merges segments and builds HNSW graphs
            self._lock = threading.RLock()
            try:
                self._client = _client_class()(url=self.url, api_key=api_key, timeout=int(self.timeout))
                self._client.get_collections()
            except ProductLensError:
                raise
            except Exception as e:
                self.close()
                raise ProductLensError(f"cannot reach Qdrant at {self.url}: {reason(e)}") from None
        try:
            if self._call(self.client.collection_exists, name):
                self.dim = self._describe()
                if dim is not None and dim != self.dim:
                    raise ProductLensError(f"Qdrant collection {name} at {self.where} holds {self.dim}-d vectors, "
                                           f"not {dim}-d (another model made it; use a new collection)")
            elif dim is None:
                raise ProductLensError(f"no Qdrant collection {name} at {self.where}; pass dim to create one")
            else:
                self.dim = int(dim)
                self._create()
        except BaseException:
            self.close()
            raise

    # ============================================================ plumbing
    def _describe(self) -> int:
        vectors = self._call(self.client.get_collection, self.name).config.params.vectors
        if not hasattr(vectors, "size") or not self._call(self.client.collection_exists, self.info_name):
            raise ProductLensError(f"Qdrant collection {self.name} at {self.where} was not made by productlens")
        return int(vectors.size)

    def _create(self) -> None:
        from qdrant_client import models

        for coll, size in ((self.name, self.dim), (self.info_name, 1)):
            if not self._call(self.client.collection_exists, coll):
                self._call(self.client.create_collection, coll,
                           vectors_config=models.VectorParams(size=size, distance=models.Distance.DOT))

    def _retrieve(self, ids: np.ndarray, *, payload: bool = True, vectors: bool = False) -> dict[int, Any]:
        """``id -> point`` for the ids present in the collection."""
        found: dict[int, Any] = {}
        uniq = np.unique(ids).tolist()
        for a in range(0, len(uniq), _ROWS_PER_CALL):
            for p in self._call(self.client.retrieve, self.name, ids=uniq[a : a + _ROWS_PER_CALL],
                                with_payload=payload, with_vectors=vectors):
                found[int(p.id)] = p
        return found

    def _write(self, ids: np.ndarray, vectors: np.ndarray, metas: list[dict]) -> None:
        from qdrant_client import models

        with self._lock:  # readers in this process see all of a write or none of it
            for a in range(0, ids.size, _ROWS_PER_CALL):
                points = [models.PointStruct(id=int(i), vector=v.tolist(),
                                             payload={"id": int(i), "meta": json_ready(md)})
                          for i, v, md in zip(ids[a : a + _ROWS_PER_CALL].tolist(), vectors[a : a + _ROWS_PER_CALL],
                                              metas[a : a + _ROWS_PER_CALL])]
                self._call(self.client.upsert, self.name, points=points, wait=True)

    # ============================================================== writes
    def upsert(self, ids: Sequence[int], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None:
        ids_a = check_ids(ids, unique=True)
        vecs = check_vectors(vectors, self.dim, n=ids_a.size)
        mds = check_metadata(metadata, ids_a)
        if ids_a.size == 0:
            return
        with self._lock:
            if mds is None:  # existing items keep their metadata
                old = self._retrieve(ids_a)
                mds = [_meta(old[i]) if i in old else {} for i in ids_a.tolist()]
            self._write(ids_a, vecs, [clean_metadata(md) for md in mds])

    def update_metadata(self, ids: Sequence[int], metadata: Sequence[dict]) -> None:
        ids_a, mds = check_update(ids, metadata)
        if ids_a.size == 0:
            return
        with self._lock:
            cur = self._retrieve(ids_a, vectors=True)
            check_present(ids_a.tolist(), cur, "update_metadata: ids")
            merged = [clean_metadata(_meta(cur[i]) | md) for i, md in zip(ids_a.tolist(), mds)]
            vecs = np.asarray([cur[i].vector for i in ids_a.tolist()], dtype=np.float32)
            self._write(ids_a, vecs, merged)

    def remove(self, ids: Sequence[int]) -> int:
        from qdrant_client import models

        ids_a = np.unique(check_ids(ids))
        with self._lock:
            present = sorted(self._retrieve(ids_a, payload=False))
            for a in range(0, len(present), _ROWS_PER_CALL):
                self._call(self.client.delete, self.name, wait=True,
                           points_selector=models.PointIdsList(points=present[a : a + _ROWS_PER_CALL]))
        return len(present)

    # ================================================================ info
    def set_info(self, key: str, value: Any) -> None:
        from qdrant_client import models

        point = models.PointStruct(id=str(uuid.uuid5(_INFO_NS, key)), vector=[0.0],
                                   payload={"key": key, "value": info_text(key, value)})
        self._call(self.client.upsert, self.info_name, points=[point], wait=True)

    def get_info(self, key: str, default: Any = None) -> Any:
        got = self._call(self.client.retrieve, self.info_name, ids=[str(uuid.uuid5(_INFO_NS, key))],
                         with_payload=True)
        return json.loads(got[0].payload["value"]) if got else default

    def info(self) -> dict[str, Any]:
        out = {}
        for p in self._scroll(self.info_name, payload=True):
            out[p.payload["key"]] = json.loads(p.payload["value"])
        return dict(sorted(out.items()))

    # =============================================================== reads
    def _scroll(self, collection: str, payload: bool = False, flt: Any = None):
        offset = None
        while True:
            points, offset = self._call(self.client.scroll, collection, limit=10_000, offset=offset,
                                        scroll_filter=flt, with_payload=payload, with_vectors=False)
            yield from points
            if offset is None:
                return

    def __len__(self) -> int:
        return self.count()

    def count(self, where: dict | None = None) -> int:
        """Number of items matching ``where`` (all items without one)."""
        flt = where_filter(parse_where(where))
        return int(self._call(self.client.count, self.name, count_filter=flt, exact=True).count)

    def ids(self) -> np.ndarray:
        with self._lock:
            got = [int(p.id) for p in self._scroll(self.name)]
        return np.unique(np.asarray(got, dtype=np.int64))

    def get(self, ids: Sequence[int]) -> list[dict | None]:
        ids_a = check_ids(ids)
        if ids_a.size == 0:
            return []
        found = self._retrieve(ids_a)
        return [{"id": i} | _meta(found[i]) if i in found else None for i in ids_a.tolist()]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        ids_a = check_ids(ids)
        found = self._retrieve(ids_a, payload=False, vectors=True)
        check_present(ids_a.tolist(), found)
        if not ids_a.size:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray([found[i].vector for i in ids_a.tolist()], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, where: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        q = check_vectors(queries, self.dim, what="queries")
        k = check_k(k)
        flt = where_filter(parse_where(where))
        scores, ids = pad_results(q.shape[0], k)
        if q.shape[0] == 0:
            return scores, ids
        if self._folder is not None and flt is not None:
            return self._local_filtered_search(q, k, flt, scores, ids)
        params = None if self._folder else models.SearchParams(hnsw_ef=max(k, self.hnsw_ef or max(4 * k, 256)),
                                                                exact=self.exact)
        for a, got in self._batches(q, k, flt, params):
            for r, rows in enumerate(got, start=a):
                for c, (s, i) in enumerate(rows[:k]):
                    scores[r, c], ids[r, c] = s, i
        return scores, ids

    def _batches(self, q: np.ndarray, limit: int, flt: Any, params: Any):
        """``(first row, [[(score, id), ...] best first, per query])`` for batches of ``q``."""
        from qdrant_client import models

        for a in range(0, q.shape[0], 64):
            requests = [models.QueryRequest(query=row.tolist(), filter=flt, limit=limit, params=params,
                                            with_payload=False) for row in q[a : a + 64]]
            res = self._call(self.client.query_batch_points, self.name, requests=requests)
            yield a, [sorted(((float(p.score), int(p.id)) for p in resp.points), key=lambda t: (-t[0], t[1]))
                      for resp in res]

    def _local_filtered_search(self, q: np.ndarray, k: int, flt: Any, scores: np.ndarray,
                               ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local mode checks a filter in Python on every point for every query (seconds per query at
        20k points): check it once, then keep the matching ids of a deep enough exact search."""
        with self._lock:
            allowed = {int(p.id) for p in self._scroll(self.name, flt=flt)}
            n = len(self)
        if not allowed:
            return scores, ids
        rows = np.arange(q.shape[0])
        limit = min(n, 2 * k * max(1, n // len(allowed)) + k)
        while rows.size:
            short = []
            for a, got in self._batches(q[rows], limit, None, None):
                for j, hits in enumerate(got, start=a):
                    keep = [(s, i) for s, i in hits if i in allowed][:k]
                    if len(keep) < min(k, len(allowed)) and limit < n:
                        short.append(rows[j])  # ran out of matches: search deeper
                        continue
                    for c, (s, i) in enumerate(keep):
                        scores[rows[j], c], ids[rows[j], c] = s, i
            rows, limit = np.asarray(short, dtype=np.int64), n
        return scores, ids

    def build_index(self, wait: float = 3600.0) -> None:
        """On a server, wait (up to ``wait`` s) until the optimizer has indexed what was written;
        a local folder has no index to build."""
        import time

        from qdrant_client import models

        if self._folder is not None:
            return
        deadline = time.monotonic() + wait
        while self._call(self.client.get_collection, self.name).status != models.CollectionStatus.GREEN:
            if time.monotonic() > deadline:
                raise ProductLensError(f"Qdrant at {self.where}: collection {self.name} still not indexed "
                                       f"after {wait:.0f} s")
            time.sleep(0.5)

    # =========================================================== lifecycle
    def drop(self) -> None:
        """Delete the collection and its info (the store is closed afterwards)."""
        for coll in (self.name, self.info_name):
            if self._call(self.client.collection_exists, coll):
                self._call(self.client.delete_collection, coll)
        self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._folder is not None:
            _Shared.release(self._folder)
        else:
            with contextlib.suppress(Exception):
                client.close()


def _meta(point: Any) -> dict:
    return dict((point.payload or {}).get("meta") or {})

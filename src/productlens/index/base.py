"""The catalog store interface: vectors plus product metadata, backend-neutral.

Every backend (the embedded SQLite + files default, Milvus later) implements
:class:`Store` and passes the same congruence tests (``tests/test_store.py``).

Conventions shared by all backends:

* ids are non-negative int64; ``-1`` is reserved for padding in search results.
* vectors are float32 of shape ``(n, dim)``; scores are inner products (callers
  L2-normalise, so scores are cosine similarities), higher is better.
* metadata is a flat JSON-able dict per item. The fields ``product_id`` (int),
  ``image``, ``title`` and ``category`` (str) are first-class columns in every
  backend; any other field is kept as well and can be filtered on.
* ``where`` filters (see :func:`parse_where`)::

      {"category": "shoes"}                      # equality
      {"product_id": [3, 7, 9]}                  # membership
      {"price": {"gte": 10, "lt": 20}}           # range (gt, gte, lt, lte)
      {"category": "shoes", "price": {"lte": 5}} # conditions are ANDed
"""

from __future__ import annotations

import abc
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..types import Hit, ProductLensError

#: metadata fields stored as first-class columns by every backend
CORE_FIELDS: tuple[str, ...] = ("product_id", "image", "title", "category")

READ_TRIES = 3  # Store.on_one_version: reads that met another writer are made again, this many times in all
_RANGE_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Condition:
    """One parsed ``where`` condition: ``field op value``.

    ``op`` is ``"eq"`` (value is a scalar or None), ``"in"`` (value is a tuple of
    scalars) or one of ``"gt" "gte" "lt" "lte"`` (value is a scalar).
    """

    field: str
    op: str
    value: Any


def _scalar(value: Any, field: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ProductLensError(f"where: field {field!r} compares with a non-finite number {value!r}")
        return value
    raise ProductLensError(f"where: field {field!r} compares with {value!r}; only str, int, float, bool or None work")


def parse_where(where: dict | None) -> list[Condition]:
    """Validate a ``where`` filter and return its conditions (ANDed)."""
    if where is None:
        return []
    if not isinstance(where, dict):
        raise ProductLensError(f"where must be a dict of field -> condition, got {type(where).__name__}")
    out: list[Condition] = []
    for field, cond in where.items():
        if not isinstance(field, str) or not _FIELD_RE.match(field):
            raise ProductLensError(f"where: bad field name {field!r} (letters, digits and _ only)")
        if isinstance(cond, dict):
            if not cond:
                raise ProductLensError(f"where: empty range for field {field!r}")
            for op, value in cond.items():
                if op not in _RANGE_OPS:
                    raise ProductLensError(
                        f"where: unknown operator {op!r} for field {field!r}; use {sorted(_RANGE_OPS)}"
                    )
                value = _scalar(value, field)
                if value is None:
                    raise ProductLensError(f"where: range bound {op!r} of field {field!r} is None")
                out.append(Condition(field, op, value))
        elif isinstance(cond, (list, tuple, set, frozenset, np.ndarray)):
            values = tuple(_scalar(v, field) for v in (cond.tolist() if isinstance(cond, np.ndarray) else cond))
            out.append(Condition(field, "in", values))
        else:
            out.append(Condition(field, "eq", _scalar(cond, field)))
    return out


def json_default(obj: Any) -> Any:
    """``json.dumps`` helper that accepts numpy scalars and arrays."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def info_text(key: str, value: Any) -> str:
    """Validate a :meth:`Store.set_info` key and return ``value`` as JSON text (what every backend stores)."""
    if not isinstance(key, str) or not key:
        raise ProductLensError(f"info key must be a non-empty str, got {key!r}")
    try:
        return json.dumps(value, default=json_default)
    except (TypeError, ValueError) as e:
        raise ProductLensError(f"info value for {key!r} is not JSON-able: {e}") from None


def check_k(k: Any) -> int:
    """Return ``k`` (results per query) as an int; refuse anything but a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ProductLensError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_present(ids: Sequence[int], found: Any, what: str = "ids") -> None:
    """Raise ProductLensError naming (up to 5 of) the ``ids`` not in ``found``."""
    missing = [i for i in ids if i not in found]
    if missing:
        raise ProductLensError(f"{what} not in the store: {missing[:5]}")


def check_ids(ids: Sequence[int] | np.ndarray, *, unique: bool = False, what: str = "ids") -> np.ndarray:
    """Return ``ids`` as a 1-d int64 array; refuse negatives (and duplicates if ``unique``)."""
    try:
        arr = np.asarray(ids)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind == "b" or (arr.dtype.kind == "O" and any(isinstance(i, (bool, np.bool_))
                                                                  for i in np.ravel(arr))):
            raise TypeError  # True would be item 1
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError
        elif arr.dtype.kind not in "iu":
            arr = np.asarray([int(i) for i in np.ravel(arr)])
        if arr.size and (arr.max() >= 2 ** 63 if arr.dtype.kind in "uO" else arr.max() >= 2.0 ** 63):
            raise ProductLensError(f"{what} must be below 2**63; got {int(arr.max())}")
        arr = arr.astype(np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise ProductLensError(f"{what} must be integers") from None
    if arr.size and arr.min() < 0:
        raise ProductLensError(f"{what} must be >= 0 (-1 marks padding); got {int(arr.min())}")
    if unique and arr.size > 1:
        s = np.sort(arr)
        dup = s[1:][s[1:] == s[:-1]]
        if dup.size:
            raise ProductLensError(f"{what} repeat within one call: {dup[:5].tolist()}")
    return arr


def check_vectors(vectors: np.ndarray, dim: int, n: int | None = None, what: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 ``(n, dim)`` array, refusing bad shapes/values."""
    arr = np.asarray(vectors)
    if arr.ndim == 1 and n is None:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ProductLensError(f"{what} must have shape (n, {dim}), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ProductLensError(f"{what}: got {arr.shape[0]} rows for {n} ids")
    if arr.dtype.kind not in "fiu":
        raise ProductLensError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ProductLensError(f"{what} contain NaN or inf")
    return arr


def check_metadata(metadata: Sequence[dict] | None, ids: np.ndarray) -> list[dict] | None:
    """Validate per-item metadata: one dict per id, JSON-able, ``id`` (if given) matching."""
    if metadata is None:
        return None
    metadata = list(metadata)
    if len(metadata) != len(ids):
        raise ProductLensError(f"metadata: got {len(metadata)} dicts for {len(ids)} ids")
    out = []
    for i, md in zip(ids.tolist(), metadata):
        if md is None:
            md = {}
        if not isinstance(md, dict):
            raise ProductLensError(f"metadata of id {i} must be a dict, got {type(md).__name__}")
        md = dict(md)
        if "id" in md:
            if md.pop("id") != i:
                raise ProductLensError(f"metadata of id {i} carries a different id")
        for key in md:
            if not isinstance(key, str):
                raise ProductLensError(f"metadata of id {i}: field names must be str, got {key!r}")
        try:
            json.dumps(md, default=json_default)
        except (TypeError, ValueError) as e:
            raise ProductLensError(f"metadata of id {i} is not JSON-able: {e}") from None
        out.append(md)
    return out


def check_update(ids: Sequence[int] | np.ndarray, metadata: Sequence[dict] | None) -> tuple[np.ndarray, list[dict]]:
    """Validate the arguments of :meth:`Store.update_metadata`: unique ids, one dict per id."""
    ids_a = check_ids(ids, unique=True)
    if metadata is None:
        raise ProductLensError("update_metadata needs one dict per id")
    mds = check_metadata(metadata, ids_a)
    assert mds is not None
    return ids_a, mds


def clean_metadata(md: dict) -> dict:
    """``md`` without None values, the first-class fields type-checked (``product_id`` int; ``image``,
    ``title``, ``category`` str). Every backend stores what this returns."""
    md = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in md.items() if v is not None}
    pid = md.get("product_id")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise ProductLensError(f"product_id must be an int, got {pid!r}")
    for f in ("image", "title", "category"):
        v = md.get(f)
        if v is not None and not isinstance(v, str):
            raise ProductLensError(f"metadata field {f!r} must be a str, got {v!r}")
    return md


def pad_results(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty search results: scores -inf, ids -1."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


class Store(abc.ABC):
    """A catalog of vectors with product metadata, searchable by inner product.

    Use as a context manager or call :meth:`close`. Create one with
    :func:`productlens.index.open_store`.
    """

    #: vector dimension, fixed when the store is created
    dim: int

    #: True where a server rebuilds its approximate index in the background (compaction,
    #: re-indexing), so that approximate results may change with no write in between
    reindexes_in_background: bool = False

    @classmethod
    def open(cls, path: Any, dim: int | None = None, **options: Any) -> "Store":
        """Open or create the store at ``path`` (what that means is the backend's business).

        Backends override this; :func:`productlens.index.open_store` calls it.
        ``dim`` is required to create a store and must match an existing one.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement open()")

    # ----------------------------------------------------------------- size
    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items (live vectors)."""

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """All item ids, sorted ascending, int64."""

    def __contains__(self, item_id: object) -> bool:
        try:
            return self.get([int(item_id)])[0] is not None  # type: ignore[call-overload]
        except (TypeError, ValueError, ProductLensError):
            return False

    # --------------------------------------------------------------- writes
    @abc.abstractmethod
    def upsert(self, ids: Sequence[int], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None:
        """Add items or replace existing ones, atomically.

        ``vectors`` is float32 ``(n, dim)``. With ``metadata`` (one dict per id)
        the items' metadata is replaced; with ``metadata=None`` new items get
        empty metadata and existing items keep theirs. Ids must be unique
        within one call.
        """

    @abc.abstractmethod
    def update_metadata(self, ids: Sequence[int], metadata: Sequence[dict]) -> None:
        """Merge ``metadata`` into the items' metadata (given fields overwrite), atomically.

        Raises ProductLensError (changing nothing) when an id is not in the store.
        """

    @abc.abstractmethod
    def remove(self, ids: Sequence[int]) -> int:
        """Remove items atomically; unknown ids are ignored. Returns how many were removed."""

    @abc.abstractmethod
    def set_info(self, key: str, value: Any) -> None:
        """Persist a JSON-able ``value`` under ``key`` in the store's info (e.g. the embedder name)."""

    @abc.abstractmethod
    def get_info(self, key: str, default: Any = None) -> Any:
        """Read a value stored with :meth:`set_info`."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """All info keys and values."""

    def version(self) -> Any:
        """A value that changes when another handle (or process) writes to the store, for caches of what
        was derived from its items; None where the backend cannot tell (a catalog then reads such caches
        again whenever it takes its writer lock, :meth:`~productlens.pipeline.catalog.Catalog.writing`)."""
        return None

    def on_one_version(self, read: Callable[[], Any], tries: int = READ_TRIES) -> Any:
        """``read()`` (several reads of this store), made again, ``tries`` times at most, when another handle
        or process wrote to the store while it ran; once where the backend cannot tell (:meth:`version`).
        A catalog search is a search, the neighbours' vectors for query expansion, a second search and the
        hits' metadata: an item removed in between had raised "ids not in the store" or left a result short."""
        for attempt in range(1, tries + 1):
            before = self.version()
            try:
                out = read()
            except ProductLensError:
                if before is None or attempt == tries or self.version() == before:
                    raise
                continue
            if before is None or attempt == tries or self.version() == before:
                return out

    # ---------------------------------------------------------------- reads
    @abc.abstractmethod
    def search(
        self, queries: np.ndarray, k: int, where: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each query row.

        Returns ``(scores, ids)``: float32 and int64 arrays of shape ``(nq, k)``,
        best first, padded with ``-inf`` / ``-1`` when fewer than ``k`` items
        match. A 1-d query is treated as one row. ``where`` filters on metadata
        (see :func:`parse_where`).
        """

    @abc.abstractmethod
    def get(self, ids: Sequence[int]) -> list[dict | None]:
        """Metadata (including ``"id"``) for each id; None for ids not in the store."""

    @abc.abstractmethod
    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored float32 vectors ``(n, dim)``; raises ProductLensError for unknown ids."""

    def build_index(self) -> None:
        """Bring the approximate index (if the backend has one) up to date now, not at the next search.

        Call it after a bulk load. The base implementation does nothing.
        """

    def hits(self, queries: np.ndarray, k: int, where: dict | None = None) -> list[list[Hit]]:
        """:meth:`search` results as :class:`~productlens.types.Hit` lists (padding dropped)."""
        return self.as_hits(*self.search(queries, k, where))

    def as_hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        """``(scores, ids)`` rows (as :meth:`search` returns them) -> Hit lists with metadata.

        An id removed (by another process) between the search and this read is left out: it had come
        back as a hit with no product, title or photo."""
        valid = ids[ids >= 0]
        meta = dict(zip(valid.tolist(), self.get(valid))) if valid.size else {}
        out: list[list[Hit]] = []
        for srow, irow in zip(scores, ids):
            row = []
            for s, i in zip(srow.tolist(), irow.tolist()):
                md = meta.get(i)
                if i < 0 or md is None:
                    continue
                row.append(
                    Hit(
                        id=i,
                        score=float(s),
                        product_id=md.get("product_id"),
                        title=md.get("title") or "",
                        image=md.get("image") or "",
                    )
                )
            out.append(row)
        return out

    # ------------------------------------------------------------ lifecycle
    @abc.abstractmethod
    def close(self) -> None:
        """Release files, connections and memory. Idempotent."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            n = len(self)
        except Exception:  # closed
            n = "?"
        return f"<{type(self).__name__} dim={getattr(self, 'dim', '?')} n={n}>"


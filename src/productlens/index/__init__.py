"""Catalog stores: vectors + product metadata behind one :class:`Store` interface.

>>> from productlens.index import open_store
>>> with open_store("catalog.store", dim=1280) as store:   # doctest: +SKIP
...     store.upsert(ids, vectors, [{"product_id": 7, "title": "red shoe"}, ...])
...     scores, ids = store.search(queries, k=100, where={"category": "shoes"})

Backends are imported lazily, so optional heavy dependencies of a backend are
only needed when that backend is used.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..types import ProductLensError
from .base import CORE_FIELDS, Condition, Store, parse_where

#: backend name -> "module:ClassName" (module relative to this package)
BACKENDS: dict[str, str] = {
    "embedded": ".embedded:EmbeddedStore",
    "milvus": ".milvus:MilvusStore",
    "qdrant": ".qdrant:QdrantStore",
}


def backend_class(name: str) -> type[Store]:
    """The Store subclass registered under ``name`` (imported on first use)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ProductLensError(f"unknown store backend {name!r}; known: {sorted(BACKENDS)}") from None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name, package=__name__)
    except ImportError as e:
        raise ProductLensError(f"store backend {name!r} needs a package that is not installed: {e}") from e
    return getattr(module, cls_name)


def open_store(path: str | os.PathLike, dim: int | None = None, backend: str = "embedded", **options: Any) -> Store:
    """Open (or create) a store.

    ``path`` is what the backend understands (a directory for ``"embedded"``).
    ``dim`` is required to create a new store; for an existing store it may be
    omitted, and a different value is refused with ProductLensError.
    ``options`` go to the backend (for ``"embedded"`` see
    :class:`~productlens.index.embedded.EmbeddedStore`).
    """
    if dim is not None:
        if isinstance(dim, bool) or int(dim) != dim or int(dim) <= 0:
            raise ProductLensError(f"dim must be a positive integer, got {dim!r}")
        dim = int(dim)
    cls = backend_class(backend)
    store = cls.open(path, dim=dim, **options)  # type: ignore[attr-defined]
    if dim is not None and store.dim != dim:  # backends check too; belt and braces
        store.close()
        raise ProductLensError(f"store at {path} holds {store.dim}-d vectors, not {dim}-d")
    return store


__all__ = ["BACKENDS", "CORE_FIELDS", "Condition", "Store", "backend_class", "open_store", "parse_where"]

"""Where a catalog keeps its vectors: the embedded store inside the folder, or a server.

A catalog folder holds either ``store/`` (the embedded store) or ``store.json``
naming a store on a server, e.g.::

    {"backend": "milvus", "path": "products", "options": {"uri": "http://10.0.0.5:19530", "index": "hnsw"}}

Credentials never go into ``store.json``: the Milvus backend reads
``$PRODUCTLENS_MILVUS_TOKEN``, the Qdrant backend ``$PRODUCTLENS_QDRANT_API_KEY``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from productlens.fileio import atomic_path
from productlens.index import open_store
from productlens.index.base import Store
from productlens.types import ProductLensError

SPEC_FILE = "store.json"
EMBEDDED_DIR = "store"


class CollectionGone(ProductLensError):
    """A catalog's server-side collection does not exist (any more)."""


@dataclass(frozen=True)
class StoreSpec:
    """A store outside the catalog folder: backend name, its path (a Milvus or Qdrant collection) and options."""

    backend: str = "embedded"
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.backend == "embedded"

    def open(self, folder: Path, dim: int | None = None) -> Store:
        """Open (``dim``: create) this store for the catalog in ``folder``."""
        if self.embedded:  # options such as vector_dtype (fixed at creation; the store records them)
            return open_store(Path(folder) / EMBEDDED_DIR, dim=dim, **self.options)
        opts = dict(self.options)
        if self.backend == "milvus" and os.environ.get("PRODUCTLENS_MILVUS_TOKEN"):
            opts.setdefault("token", os.environ["PRODUCTLENS_MILVUS_TOKEN"])
        if self.backend == "qdrant" and "url" in opts and os.environ.get("PRODUCTLENS_QDRANT_API_KEY"):
            opts.setdefault("api_key", os.environ["PRODUCTLENS_QDRANT_API_KEY"])
        try:
            return open_store(self.path, dim=dim, backend=self.backend, **opts)
        except ProductLensError as e:
            if dim is None and "pass dim to create" in str(e):  # the store's API hint means nothing to a user
                raise CollectionGone(f"{folder}: its {self.backend} collection {self.path!r} is gone (dropped on "
                                     "the server?); rebuild the catalog with `productlens index build ... "
                                     "--overwrite`") from None
            raise

    def create(self, folder: Path, dim: int, overwrite: bool = False) -> Store:
        """A new, empty store; an existing server-side one is dropped with ``overwrite``, refused without."""
        if not self.embedded:
            try:
                old = self.open(folder)
            except CollectionGone:
                pass
            else:
                if not overwrite:
                    old.close()
                    raise ProductLensError(f"{self.backend} collection {self.path} exists; pass --overwrite to "
                                           "replace it (or name another collection)")
                old.drop()  # type: ignore[attr-defined]
        return self.open(folder, dim=dim)

    def probe(self, folder: Path, overwrite: bool = False, resume: bool = False) -> None:
        """Before long work that ends in :meth:`create`: raise ProductLensError now for a bad collection
        name, a server that cannot be reached, or (unless ``overwrite``, or ``resume`` of a build that
        recorded this collection) an existing collection, which :meth:`create` would refuse. The embedded
        store needs no check."""
        if self.embedded:
            return
        try:
            old = self.open(folder)
        except CollectionGone:
            return
        old.close()
        if not (overwrite or resume):
            raise ProductLensError(f"{self.backend} collection {self.path} exists; pass --overwrite to replace it "
                                   "(or name another collection)")

    def save(self, folder: Path) -> None:
        """Record a server store in ``folder/store.json`` (the embedded store needs no record)."""
        if self.embedded:
            return
        with atomic_path(Path(folder) / SPEC_FILE) as tmp:
            tmp.write_text(json.dumps({"backend": self.backend, "path": self.path, "options": self.options},
                                      indent=1))

    @classmethod
    def of(cls, folder: str | os.PathLike) -> "StoreSpec":
        """The store of the catalog folder ``folder``."""
        folder = Path(folder)
        spec = folder / SPEC_FILE
        if spec.is_file():
            try:
                d = json.loads(spec.read_text())
                return cls(str(d["backend"]), str(d["path"]), dict(d.get("options") or {}))
            except (ValueError, KeyError, TypeError) as e:
                raise ProductLensError(f"{spec} is damaged: {e}") from None
        if not folder.exists():
            raise ProductLensError(f"no catalog at {folder}: no such folder (build one with `productlens index build`)")
        if not (folder / EMBEDDED_DIR).is_dir():
            raise ProductLensError(f"{folder} is not a productlens catalog (no {EMBEDDED_DIR}/ or {SPEC_FILE} "
                                   "inside); build one with `productlens index build`")
        return cls()


def check_complete(store: Store, folder: Path) -> None:
    """Refuse a store whose bulk load stopped part-way (``load_complete`` False in its info)."""
    if store.get_info("load_complete", True) is False:
        done = len(store.get_info("loaded_shards") or [])
        raise ProductLensError(
            f"the catalog at {folder} is incomplete: loading its embedding shards stopped after {done} "
            "shard(s). Rerun the same `productlens index build ... --engine ray` command to resume.")


__all__ = ["SPEC_FILE", "StoreSpec", "check_complete"]

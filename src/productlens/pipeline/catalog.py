"""A searchable catalog on disk: the store, the embedder's name and the adapter.

Layout of a catalog folder::

    catalog/
      store/      vectors + SQLite metadata (productlens.index, atomic writes)
      adapter/    optional catalog adaptation (productlens.heads.adapter)

The store's info records the embedder and whether an adapter is used, so a
reopened catalog embeds queries exactly as its gallery was embedded.
:func:`build_catalog` writes a new catalog into a temporary folder and renames
it into place, so an interrupted build leaves no half-written catalog.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from productlens.config import DEFAULT_EMBEDDER
from productlens.data.images import load_image
from productlens.heads.adapter import Adapter, fit_adapter
from productlens.index import open_store
from productlens.index.base import Store
from productlens.models.embedders import Embedder, get_embedder
from productlens.pipeline.embed import embed_items
from productlens.pipeline.rerank import alpha_qe
from productlens.types import Box, Hit, Item, ProductLensError

log = logging.getLogger(__name__)

QE_K = 2          # alpha-QE neighbours (see pipeline/rerank.py for the measurements)
QE_ALPHA = 3.0


def _metadata(item: Item) -> dict[str, Any]:
    md: dict[str, Any] = {"image": str(item.image), "title": item.title, "category": item.category}
    if item.product_id is not None:
        md["product_id"] = int(item.product_id)
    for key, value in item.extra.items():
        if key not in md and value not in (None, ""):
            md[key] = value
    return md


class Catalog:
    """An open catalog: search it with images, add or remove items."""

    def __init__(self, path: Path, store: Store, embedder: Embedder, adapter: Adapter | None) -> None:
        self.path = Path(path)
        self.store = store
        self.embedder = embedder
        self.adapter = adapter

    # -------------------------------------------------------------- open
    @classmethod
    def open(cls, path: str | os.PathLike) -> "Catalog":
        """Open an existing catalog folder (made by :func:`build_catalog`)."""
        path = Path(path)
        if not (path / "store").is_dir():
            raise ProductLensError(f"{path} is not a productlens catalog (no store/ inside); "
                                   "build one with `productlens index build`")
        store = open_store(path / "store")
        name = store.get_info("embedder", DEFAULT_EMBEDDER)
        embedder = get_embedder(name)
        adapter = Adapter.load(path / "adapter", backbone=name) if store.get_info("adapter") else None
        return cls(path, store, embedder, adapter)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.store)

    # ----------------------------------------------------------- vectors
    def to_index_space(self, raw: np.ndarray, domain: str) -> np.ndarray:
        """Backbone vectors -> the vectors stored and searched (adapted if there is an adapter)."""
        return raw if self.adapter is None else self.adapter.transform(raw, domain)

    def embed_queries(self, items: Sequence[Any], boxes: Sequence[Box | None] | None = None,
                      progress: bool = False):
        """Embed query images (paths, URLs, bytes or Items) into the index space."""
        res = embed_items(self.embedder, items, boxes=boxes, progress=progress, desc="queries")
        res.vectors = self.to_index_space(res.vectors, "query")
        return res

    # ------------------------------------------------------------ writes
    def add(self, items: Sequence[Item], progress: bool = True) -> list[tuple[int, Any, str]]:
        """Embed and upsert items (same id replaces); returns the skipped items' errors."""
        res = embed_items(self.embedder, items, progress=progress, desc="gallery")
        if len(res.ok):
            ok = [items[i] for i in res.ok]
            self.store.upsert([it.id for it in ok], self.to_index_space(res.vectors, "gallery"),
                              [_metadata(it) for it in ok])
        return res.errors

    def remove(self, ids: Sequence[int]) -> int:
        return self.store.remove(ids)

    # ------------------------------------------------------------ search
    def search_vectors(self, queries: np.ndarray, k: int, *, rerank: bool = True,
                       where: dict | None = None, group_by_product: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for query vectors already in the index space.

        ``rerank``: alpha-QE over the top ``QE_K`` results. ``group_by_product``
        (catalog mode): each item is scored by the best score of its product
        within the retrieved list, so all photos of the best product come first.
        """
        k = min(k, max(len(self.store), 1))
        scores, ids = self.store.search(queries, k, where)
        if rerank and len(self.store) > QE_K:
            top = ids[:, :QE_K]
            found = top >= 0
            neighbours = np.zeros((*top.shape, self.store.dim), np.float32)
            if found.any():  # each distinct neighbour fetched once
                uniq, inverse = np.unique(top[found], return_inverse=True)
                neighbours[found] = self.store.vectors(uniq)[inverse]
            expanded = alpha_qe(queries, scores[:, :QE_K], neighbours, QE_ALPHA)
            scores, ids = self.store.search(expanded, k, where)
        if group_by_product:
            scores, ids = self._group(scores, ids)
        return scores, ids

    def _group(self, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = np.unique(ids[ids >= 0])
        prod = {i: (md or {}).get("product_id") for i, md in zip(valid.tolist(), self.store.get(valid))}
        out_s, out_i = scores.copy(), ids.copy()
        for r in range(len(ids)):
            best: dict[Any, float] = {}
            for s, i in zip(scores[r], ids[r]):
                p = prod.get(int(i))
                if i >= 0 and p is not None and p != -1 and p not in best:
                    best[p] = float(s)
            # product score first, own score breaks ties within a product
            key = [(best.get(prod.get(int(i)), float(s)) if i >= 0 else -np.inf, float(s))
                   for s, i in zip(scores[r], ids[r])]
            order = sorted(range(len(key)), key=lambda j: key[j], reverse=True)
            out_i[r] = ids[r][order]
            out_s[r] = np.array([key[j][0] for j in order], np.float32)
        return out_s, out_i

    def search(self, source: Any, *, box: Box | None = None, k: int = 10, rerank: bool = True,
               where: dict | None = None) -> list[Hit]:
        """Rank the catalog for one query image (path, URL or bytes; optional box)."""
        img = load_image(source, box=box, target=self.embedder.preprocess.size)  # ImageError / BoxError
        query = self.to_index_space(self.embedder.embed_images([img]), "query")
        return self.store.as_hits(*self.search_vectors(query, k, rerank=rerank, where=where))[0]


def build_catalog(items: Sequence[Item], path: str | os.PathLike, *, embedder: str = DEFAULT_EMBEDDER,
                  train: Sequence[Item] | None = None, use_gallery_labels: bool = False,
                  overwrite: bool = False, progress: bool = True) -> tuple[Catalog, list]:
    """Embed ``items`` into a new catalog folder at ``path``; returns (catalog, skipped errors).

    ``train``: labelled shopper photos (Item.product_id set) that fit the
    catalog adapter before indexing; without them the plain backbone is used.
    ``use_gallery_labels`` (catalog mode): the gallery's own product ids also
    train the adapter; otherwise they are never read (challenge mode).
    The catalog is written to a temporary folder beside ``path`` and renamed into place.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ProductLensError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not items:
        raise ProductLensError("the catalog has no items")
    if len({it.id for it in items}) != len(items):
        raise ProductLensError("catalog item ids must be unique")
    emb = get_embedder(embedder)
    gal = embed_items(emb, items, progress=progress, desc="gallery")
    if not len(gal.ok):
        raise ProductLensError("no gallery image could be read")
    ok_items = [items[i] for i in gal.ok]
    adapter = None
    if train:
        labelled = [t for t in train if t.product_id is not None]
        tr = embed_items(emb, labelled, progress=progress, desc="training photos")
        labels = np.array([labelled[i].product_id for i in tr.ok])
        glabels = None
        if use_gallery_labels:
            glabels = np.array([-1 if it.product_id is None else it.product_id for it in ok_items])
        adapter = fit_adapter(emb.name, tr.vectors, labels, gallery_vectors=gal.vectors, gallery_labels=glabels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".building.", dir=path.parent))
    try:
        vectors = gal.vectors if adapter is None else adapter.transform(gal.vectors, "gallery")
        store = open_store(tmp / "store", dim=vectors.shape[1])
        store.set_info("embedder", emb.name)
        store.set_info("adapter", adapter is not None)
        store.upsert([it.id for it in ok_items], vectors, [_metadata(it) for it in ok_items])
        store.close()
        if adapter is not None:
            adapter.save(tmp / "adapter", metrics={"train_photos": int(len(tr.ok)),
                                                  "gallery_labels_used": bool(use_gallery_labels)})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Catalog.open(path), gal.errors

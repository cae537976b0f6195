"""A searchable catalog on disk: the store, the embedder's name and the adapter.

Layout of a catalog folder::

    catalog/
      store/      vectors + SQLite metadata (productlens.index, atomic writes)
      adapter/    optional catalog adaptation (productlens.heads.adapter)
      backbone/   optional fine-tuned backbone (productlens.models.finetune)
      classifier/ optional category classifier (productlens.models.classifiers), attached
                  with :meth:`Catalog.attach_classifier`

A catalog built with ``ocr=True`` keeps the words OCR read on each gallery photo
in its metadata (``ocr``) and fuses text evidence into every search
(:mod:`productlens.pipeline.fusion`) with the weight recorded in its info
(``text_weight``: :func:`productlens.pipeline.fusion.choose_text_weight` or
:meth:`Catalog.fit_text_weight` choose it on training photos).

The store's info records the embedder (with its model file and preprocessing), the views
that embed queries and gallery photos, whether an adapter is used and the catalog format, so
a reopened catalog embeds queries and new photos exactly as at its build, or refuses to open
(a changed model, a newer format).
:func:`~productlens.pipeline.catalog_build.build_catalog` writes a new catalog into a
temporary folder and renames it into place, so an interrupted build leaves no
half-written catalog.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import numbers
import os
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence

import numpy as np

from productlens.config import DEFAULT_EMBEDDER, GIVEN_TEXT_WEIGHT
from productlens.data.images import MIN_SIDE, load_image, read_once
from productlens.fileio import file_key, file_lock, folder_key
from productlens.heads.adapter import Adapter
from productlens.index.base import Store, clean_metadata
from productlens.models.detectors.runtime import Detector
from productlens.models.embedders import Embedder, embedder_in_folder
from productlens.models.embedders.joined import joined
from productlens.pipeline.catalog_models import query_embedder, stored_companions, vector_name
from productlens.pipeline.embed import embed_items
from productlens.pipeline.features_cache import model_change
from productlens.pipeline.product_map import ProductMap
from productlens.pipeline.rerank import alpha_qe, group_by_product
from productlens.types import Box, BoxError, Hit, Item, ProductLensError, check_k, check_list

log = logging.getLogger(__name__)

QE_K = 2          # alpha-QE neighbours (see pipeline/rerank.py for the measurements)
#: candidates every search re-ranks (alpha-QE, text, spatial verification, grouping) whatever k is asked,
#: so that the first k results are the same for every k up to this (k = 1 saw one neighbour, no verification)
RANK_DEPTH = 100
QE_ALPHA = 3.0
BACKBONE_DIR = "backbone"  # a fine-tuned backbone inside the catalog folder
CLASSIFIER_DIR = "classifier"  # a category classifier inside the catalog folder
#: the file in a catalog folder that :meth:`Catalog.writing` locks
WRITER_LOCK = ".writer.lock"
#: the store info key under which :meth:`Catalog.mark_used` keeps the lowest id never handed out
NEXT_ID_KEY = "next_item_id"
#: the store info key under which a catalog records its model file and preprocessing
#: (:func:`~productlens.pipeline.features_cache.model_record`)
MODEL_KEY = "model"
#: the newest layout of the catalogs this version reads (store info ``catalog_format``); a newer one is refused
#: on open. Format 2 records the ``shelf`` view set (:func:`catalog_format`); the rest is format 1.
CATALOG_FORMAT = 2
OPEN_ATTEMPTS = 3  # a catalog swapped by a rebuild while it is opened is opened again, this many times in all
#: the view sets a format-1 catalog may record
FORMAT1_VIEW_SETS = ("none", "flip", "tta", "train", "regions")


def catalog_format(*view_sets: str) -> int:
    """The format a catalog recording ``view_sets`` is written as: the oldest that describes it, so
    that an older productlens opens what it can, and refuses the rest by name (upgrade) instead of
    failing on a view set it does not know."""
    return 1 if all(v in FORMAT1_VIEW_SETS for v in view_sets) else 2


def item_metadata(item: Item) -> dict[str, Any]:
    """What a catalog stores beside an item's vector: image, title, category, product id and extra columns."""
    md: dict[str, Any] = {"image": str(item.image), "title": item.title, "category": item.category}
    if item.product_id is not None:
        pid = item.product_id
        try:  # a numpy integer or "12" from a csv: an int; anything else (2.5 had become 2) is named
            if isinstance(pid, bool) or (isinstance(pid, float) and not pid.is_integer()):
                raise ValueError
            md["product_id"] = int(pid)
        except (TypeError, ValueError):
            raise ProductLensError(f"item {item.id}: product_id must be a whole number, got {pid!r}") from None
    for key, value in item.extra.items():
        if key not in md and value not in (None, ""):
            md[key] = value
    return md


class CatalogEmpty(ProductLensError):
    """The catalog holds no item: nothing to search or identify a photo against."""


class Catalog:
    """An open catalog: search it with images, add or remove items."""

    def __init__(self, path: Path, store: Store, embedder: Embedder, adapter: Adapter | None) -> None:
        self.path = Path(path)
        self.store = store
        self.embedder = embedder
        self.adapter = adapter
        self.query_embedder = query_embedder(embedder, store.get_info("query_views", "none"))
        #: what embeds photos added to the gallery (catalogs before ``gallery_views`` embedded them whole)
        self.gallery_embedder = query_embedder(embedder, store.get_info("gallery_views", "none"))
        self._classifier = None
        self._classifier_key: tuple | None = None  # the loaded one's config.json (fileio.file_key)
        self._matcher = None
        self._verifier = None
        self._by_product: ProductMap | None = None
        self._version = store.version()  # another handle's writes make the derived caches stale
        self._folder = folder_key(self.path)  # which folder was opened (`index build --overwrite` swaps it)
        #: why the model no longer matches the one the catalog was built with (opened with ``check=False``)
        self.model_changed: str | None = None

    @property
    def vector_name(self) -> str:
        """What made the catalog's vectors: the embedder's name, plus its companions if any."""
        return vector_name(self.store.get_info("embedder", DEFAULT_EMBEDDER), stored_companions(self.store))

    # -------------------------------------------------------------- text
    @property
    def uses_ocr(self) -> bool:
        """Whether gallery photos are OCR'd (built with ``ocr=True``); queries are then OCR'd too."""
        return bool(self.store.get_info("ocr", False))

    @property
    def text_weight(self) -> float:
        """The weight of the text score in fused searches (0: image only)."""
        return float(self.store.get_info("text_weight", 0.0))

    @property
    def matcher(self):
        """The :class:`~productlens.pipeline.fusion.TextMatcher` over the items' documents (cached)."""
        self._check_fresh()
        if self._matcher is None:
            from productlens.pipeline.fusion import TextMatcher

            self._matcher = TextMatcher.from_store(self.store)
        return self._matcher

    def query_texts(self, sources: Sequence[Any], boxes: Sequence[Box | None] | None = None,
                    texts: Sequence[str | None] | None = None, progress: bool = False) -> list[str] | None:
        """The text of each query: OCR of the photo (when the catalog uses OCR) plus the user's text.

        None when there is no text evidence to fuse (no OCR, no text, or weight 0).
        """
        given = texts is not None and any(texts)
        if self.text_weight_for(given) <= 0 or not (self.uses_ocr or given):
            return None
        from productlens.pipeline.fusion import ocr_texts

        read = ocr_texts(sources, boxes, progress=progress) if self.uses_ocr else [""] * len(sources)
        extra = texts or [None] * len(sources)
        return [" ".join(s for s in (a, b or "") if s) for a, b in zip(read, extra)]

    def text_weight_for(self, given_text: bool) -> float:
        """The weight of text evidence in a search: the catalog's own (chosen on its training
        photos when it was built with OCR, possibly 0), or, in a catalog without one, where
        the user gave text with the query, ``config.GIVEN_TEXT_WEIGHT``."""
        w = self.text_weight
        return w if w > 0 or self.uses_ocr or not given_text else GIVEN_TEXT_WEIGHT

    def text_weight_rows(self, holdout: Sequence[Item], progress: bool = False) -> dict[str, Any]:
        """What choosing a text weight needs from labelled held-out photos: their image ranking
        (``scores``, ``ids``), the text score of each listed item (``text``) and the product
        labels (``labels`` per photo, ``item_labels`` per catalog item)."""
        from productlens.pipeline.fusion import ocr_texts

        labelled = [h for h in holdout if h.product_id is not None]
        if not labelled:
            raise ProductLensError("choosing the text weight needs labelled held-out photos")
        res = self.embed_queries(labelled, [h.box for h in labelled], progress=progress)
        kept = [labelled[i] for i in res.ok]
        texts = ocr_texts([h.image for h in kept], [h.box for h in kept], progress=progress) \
            if self.uses_ocr else [h.extra.get("text", "") for h in kept]
        scores, ids = self.search_vectors(res.vectors, len(self.store))
        all_ids = self.store.ids()
        return {"scores": scores, "ids": ids, "text": self.matcher.gather(self.matcher.scores(texts), ids),
                "labels": [h.product_id for h in kept],
                "item_labels": {int(i): int((md or {}).get("product_id", -1))
                                for i, md in zip(all_ids.tolist(), self.store.get(all_ids))}}

    def fit_text_weight(self, holdout: Sequence[Item], progress: bool = False) -> dict[float, float]:
        """Choose and record the text fusion weight on labelled held-out photos; returns {weight: mAP}.

        The photos must not have trained the catalog's adapter, and should be
        as hard for the image as real queries: photos from the same sessions as
        the adapter's photos make the image look perfect and the weight ~0
        (see :func:`productlens.pipeline.fusion.choose_text_weight`).
        """
        from productlens.pipeline.fusion import fit_text_weight

        rows = self.text_weight_rows(holdout, progress)
        weight, table = fit_text_weight(rows["scores"], rows["ids"], rows["text"], rows["item_labels"],
                                        rows["labels"], group=self.grouping())
        self.set_text_weight(weight)
        return table

    def set_text_weight(self, weight: float) -> None:
        """Record the weight of the text score in fused searches (0: image only)."""
        if not weight >= 0:
            raise ProductLensError(f"the text weight must be >= 0, got {weight}")
        self.store.set_info("text_weight", float(weight))

    def grouping(self):
        """The product grouping of catalog mode (``_group``), or None when no item has a product.

        Which items belong to which product is read once and kept until the catalog changes.
        """
        return self._group if self._products() else None

    def items_of(self, product_id: int) -> list[int]:
        """The ids of a product's items (from a product -> items map kept until the catalog changes)."""
        return sorted(self._products().get(int(product_id), ()))

    def _products(self) -> dict[int, set[int]]:
        """Item ids per product (items without a product, or distractors, are left out): a
        :class:`~productlens.pipeline.product_map.ProductMap` read once, then kept up to date by this handle's
        own writes (:meth:`_changed`)."""
        self._check_fresh()
        if self._by_product is None:
            self._by_product = ProductMap(self.store)
        return self._by_product.items

    @property
    def verifier(self):
        """The :class:`~productlens.pipeline.verify.SpatialVerifier` of this catalog's photos (cached)."""
        self._check_fresh()
        if self._verifier is None:
            from productlens.pipeline.verify import SpatialVerifier

            self._verifier = SpatialVerifier(self.store.get, root=self.path)
        return self._verifier

    def _check_fresh(self) -> None:
        """Forget the derived caches when another handle or process wrote to the store since they were made
        (a running server while `index add` or `update_metadata` runs beside it)."""
        version = self.store.version()
        if version != self._version:
            self._version = version
            self._changed()

    def _changed(self, ids: Sequence[int] | None = None) -> None:
        """Forget what was derived from the items (text matcher, product map, local features); with ``ids`` (this
        handle wrote those items), the product map and local features change for them alone (see ProductMap)."""
        self._matcher = None
        if ids is None or self._by_product is None:
            self._by_product = None
        else:
            self._by_product.update(ids)
        if ids is None or self._verifier is None:
            self._verifier = None
        else:
            self._verifier.forget(ids)

    # -------------------------------------------------------------- open
    @classmethod
    def open(cls, path: str | os.PathLike, check: bool = True) -> "Catalog":
        """Open an existing catalog folder (made by :func:`~productlens.pipeline.catalog_build.build_catalog`).

        A catalog whose model file or preprocessing changed since it was built is refused, as its
        queries would be embedded unlike its gallery; ``check=False`` opens it anyway (to describe
        it) and says why in :attr:`model_changed`."""
        path = Path(path)
        for attempt in range(OPEN_ATTEMPTS):
            folder = folder_key(path)  # before the store: a folder swapped in between is taken for a rebuild
            try:
                cat = cls._open(path, check, folder)
            except ProductLensError:
                if attempt + 1 < OPEN_ATTEMPTS and folder_key(path) != folder:
                    continue  # `index build --overwrite` swapped the folder while its files were read: again
                raise
            if folder_key(path) == folder or attempt + 1 == OPEN_ATTEMPTS:
                return cat
            cat.close()  # its database and vectors may come from two builds: read the new one whole
        raise AssertionError("unreachable")

    @classmethod
    def _open(cls, path: Path, check: bool, folder: tuple[int, int] | None) -> "Catalog":
        from productlens.pipeline.store_spec import StoreSpec, check_complete

        spec = StoreSpec.of(path)
        store = spec.open(path)
        try:
            check_complete(store, path)
            if spec.embedded:  # its vectors read now, from the folder whose database it opened (a server's are
                len(store)     # not in the folder: no rebuild swaps them, and counting them costs a round trip)
        except BaseException:
            store.close()
            raise
        name = store.get_info("embedder", DEFAULT_EMBEDDER)
        try:
            if int(store.get_info("catalog_format", 1)) > CATALOG_FORMAT:
                raise ProductLensError(f"{path}: written by a newer productlens (catalog format "
                                       f"{store.get_info('catalog_format')}); upgrade productlens to open it")
            embedder = embedder_in_folder(name, path)  # onnx: paths are relative to the catalog folder
            changed = model_change(store.get_info(MODEL_KEY), embedder)
            if changed and check:
                raise ProductLensError(f"{path}: {changed}; restore it or rebuild the catalog (productlens index build)")
        except BaseException:
            store.close()
            raise
        companions = stored_companions(store)
        embedder = joined(embedder, companions)
        adapter = Adapter.load(path / "adapter", backbone=vector_name(name, companions)) \
            if store.get_info("adapter") else None
        cat = cls(path, store, embedder, adapter)
        cat.model_changed = changed
        cat._folder = folder
        return cat

    def close(self) -> None:
        self.store.close()

    def _check_same_folder(self) -> None:
        """ProductLensError when the folder was rebuilt since this catalog opened it: writes through this
        handle would go to the replaced folder, and be lost."""
        if folder_key(self.path) != self._folder:
            raise ProductLensError(f"{self.path} was rebuilt (index build --overwrite) since it was opened "
                                   "here; open it again to change it")

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_not_empty(self) -> None:
        """:class:`CatalogEmpty` when the catalog holds no item: nothing to rank."""
        if not len(self.store):
            raise CatalogEmpty(f"{self.path}: the catalog holds no item; add photos with `productlens index add`")

    def __len__(self) -> int:
        return len(self.store)

    # ----------------------------------------------------------- vectors
    def to_index_space(self, raw: np.ndarray, domain: str) -> np.ndarray:
        """Backbone vectors -> the vectors stored and searched (adapted if there is an adapter)."""
        return raw if self.adapter is None else self.adapter.transform(raw, domain)

    def embed_queries(self, items: Sequence[Any], boxes: Sequence[Box | None] | None = None,
                      progress: bool = False):
        """Embed query images (paths, URLs, bytes or Items) into the index space."""
        res = embed_items(self.query_embedder, items, boxes=boxes, progress=progress, desc="queries")
        res.vectors = self.to_index_space(res.vectors, "query")
        return res

    # ------------------------------------------------------------ writes
    def add(self, items: Sequence[Item], progress: bool = True) -> list[tuple[int, Any, str]]:
        """Embed and upsert items (same id replaces); returns the skipped items' errors."""
        items = check_list(items, "items")
        if not all(isinstance(it, Item) for it in items):
            raise ProductLensError("items must be productlens.types.Item (Item(id, image, product_id, ...)), got "
                                   f"{next(type(it).__name__ for it in items if not isinstance(it, Item))}")
        self._check_same_folder()
        # a bad product_id or title is refused before the photos are embedded, not after (as the store cleans it)
        all_mds = [clean_metadata(item_metadata(it)) for it in items]
        res = embed_items(self.gallery_embedder, items, progress=progress, desc="gallery")
        if len(res.ok):
            ok = [items[i] for i in res.ok]
            mds = [all_mds[i] for i in res.ok]
            if self.uses_ocr:
                from productlens.pipeline.fusion import ocr_texts

                for md, text in zip(mds, ocr_texts([it.image for it in ok], progress=progress)):
                    md["ocr"] = text
            self.store.upsert([it.id for it in ok], self.to_index_space(res.vectors, "gallery"), mds)
            self._changed([it.id for it in ok])
        return res.errors

    @contextlib.contextmanager
    def writing(self, timeout: float = 60.0, guard: ContextManager | None = None) -> Iterator[None]:
        """Hold the catalog's writer lock for the block (a file lock in its folder, shared by every
        process on this machine that opens the catalog). Choose new ids (:meth:`free_id`) and add
        them under it, and two processes adding to one catalog never hand out the same id. What was
        derived from the items (the product -> items map, ...) is read again inside if another process
        wrote since (always, for a store that cannot tell).

        ``guard``: the caller's own lock between its threads (a server's), taken once the file lock is
        held, so that readers in the process go on while a writer waits for another process."""
        with file_lock(self.path / WRITER_LOCK, timeout), (guard or contextlib.nullcontext()):
            self._check_same_folder()
            self._check_fresh()
            if self._version is None:  # a store that cannot tell whether another process wrote
                self._changed()
            yield

    def free_id(self, limit: int | None = None) -> int:
        """An id no item of this catalog has had: above the largest id now, above every id given to
        :meth:`mark_used` and above every removed item's (ids are not handed out again, so nothing cached
        under an id, such as a browser's thumbnail, shows another photo). Take it under :meth:`writing`.

        ``limit``: the largest id allowed. When an id at the limit was once used (an item added with
        that id by hand), the ids above are spent; then the lowest id that no item has now is given,
        with a warning, since it may have been a removed item's."""
        ids = self.store.ids()
        top = int(ids.max()) + 1 if len(ids) else 0
        new = max(top, int(self.store.get_info(NEXT_ID_KEY, 0) or 0))
        if limit is None or new <= limit:
            return new
        taken = np.sort(np.asarray(ids, np.int64))
        gaps = np.flatnonzero(taken != np.arange(len(taken)))
        low = int(gaps[0]) if len(gaps) else len(taken)  # the first id missing from 0, 1, 2, ...
        log.warning("item ids above %d are spent (an item had id %d); giving the lowest free id, %d, which "
                    "a removed item may have had", limit, new - 1, low)
        return low

    def mark_used(self, item_id: int) -> None:
        """Remember that ``item_id`` was handed out: :meth:`free_id` stays above it after a removal."""
        if item_id >= int(self.store.get_info(NEXT_ID_KEY, 0) or 0):
            self.store.set_info(NEXT_ID_KEY, int(item_id) + 1)

    def with_new_ids(self, items: Sequence[Item], *, products_by_category: bool = False) -> list[Item]:
        """Copies of ``items`` under ids no item of this catalog has had (take them under :meth:`writing`).

        ``products_by_category`` (items read from an ImageFolder tree, whose product ids number
        its folders from 0): each folder becomes the catalog's product of that category when exactly
        one product has it, else a new product id above the catalog's largest. Photos from the top
        of the tree (no folder, no product id) stay without one."""
        start = self.free_id()
        items = [dataclasses.replace(it, id=start + i) for i, it in enumerate(items)]
        if products_by_category:
            mds = [md for md in self.store.get(self.store.ids()) if md and md.get("product_id") is not None]
            owners: dict[str, set[int]] = {}
            for md in mds:
                if md.get("category"):
                    owners.setdefault(md["category"], set()).add(int(md["product_id"]))
            top = max((int(md["product_id"]) for md in mds), default=-1)
            new: dict[str, int] = {}
            for name in dict.fromkeys(it.category for it in items if it.product_id is not None):
                if len(owners.get(name, ())) == 1:
                    new[name] = next(iter(owners[name]))
                else:
                    top += 1
                    new[name] = top
            items = [it if it.product_id is None else dataclasses.replace(it, product_id=new[it.category])
                     for it in items]
        return items

    def remove(self, ids: Sequence[int]) -> int:
        """Remove the items; returns how many there were. Their ids are not handed out again (:meth:`free_id`)."""
        ids = check_list(ids, "ids")  # "12" had removed items 1 and 2
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        if bad:
            raise ProductLensError(f"item ids are whole numbers, got {bad[0]!r}")
        self._check_same_folder()
        ids = [int(i) for i in ids]
        present = [i for i, md in zip(ids, self.store.get(ids)) if md is not None]
        if present:
            self.mark_used(max(present))
        removed = self.store.remove(ids)
        self._changed(present)
        return removed

    def update_metadata(self, ids: Sequence[int], metadata: Sequence[dict]) -> None:
        """Merge fields (title, category, ...) into items' metadata, atomically; searches see them at once."""
        self._check_same_folder()
        self.store.update_metadata(ids, metadata)
        self._changed(ids)

    # ------------------------------------------------------------ search
    def search_hits(self, queries: np.ndarray, k: int, **options: Any) -> list[list[Hit]]:
        """:meth:`search_vectors` (the same options) as :class:`~productlens.types.Hit` lists, the ranking and
        the hits' metadata read from one state of the store (:meth:`Store.on_one_version`)."""
        return self.store.on_one_version(lambda: self.store.as_hits(*self._ranked(queries, k, **options)))

    def search_vectors(self, queries: np.ndarray, k: int, *, rerank: bool = True,
                       where: dict | None = None, group_by_product: bool = False,
                       texts: Sequence[str] | None = None, text_weight: float | None = None,
                       verify: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for query vectors already in the index space.

        ``rerank``: alpha-QE over the top ``QE_K`` results. ``group_by_product``
        (catalog mode): each item is scored by the best score of its product
        within the retrieved list, so all photos of the best product come first.
        ``texts`` (one per query, from :meth:`query_texts`): fused with the
        items' documents at the catalog's ``text_weight`` (or ``text_weight``) before grouping.
        ``verify`` (one query image per row, or None): spatial verification of the
        top results (:mod:`productlens.pipeline.verify`) after the text, before grouping.
        Each step works on at least :data:`RANK_DEPTH` candidates, so a smaller ``k`` gives the
        first ``k`` of the same ranking. The reads are made again if another process wrote meanwhile (where
        the store can tell: the embedded one; :meth:`Store.on_one_version`).
        """
        options = dict(rerank=rerank, where=where, group_by_product=group_by_product, texts=texts,
                       text_weight=text_weight, verify=verify)
        return self.store.on_one_version(lambda: self._ranked(queries, k, **options))

    def _ranked(self, queries: np.ndarray, k: int, *, rerank: bool = True, where: dict | None = None,
                group_by_product: bool = False, texts: Sequence[str] | None = None,
                text_weight: float | None = None, verify: Sequence[Any] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search_vectors`, its reads made once."""
        self.check_not_empty()
        n = len(self.store)  # a count a server store answers over the network: asked once
        want, k = min(k, n), min(max(k, RANK_DEPTH), n)
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
        weight = self.text_weight if text_weight is None else text_weight
        if texts is not None and weight > 0 and self.matcher.has_text:
            from productlens.pipeline.fusion import fuse

            scores, ids = fuse(scores, ids, self.matcher.gather(self.matcher.scores(texts), ids), weight)
        if verify is not None:
            scores, ids = self.verifier.rerank(scores, ids, verify)
        if group_by_product:
            scores, ids = self._group(scores, ids)
        return scores[:, :want], ids[:, :want]

    def _group(self, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Re-order each row by its product's best score, then the item's own score."""
        valid = np.unique(ids[ids >= 0])
        pid = np.array([-1 if (md or {}).get("product_id") is None else int(md["product_id"])
                        for md in self.store.get(valid)], np.int64)
        return group_by_product(scores, ids, valid, pid)

    # ------------------------------------------------------- categories
    @property
    def classifier(self):
        """The attached category classifier, or None: loaded on first use, and again once another is attached
        (by another process too: a server had kept answering with the replaced classifier until restarted)."""
        key = file_key(self.path / CLASSIFIER_DIR / "config.json")  # a new attach writes a new file
        if key != self._classifier_key:
            from productlens.models.classifiers import load_classifier

            clf = None if key is None else load_classifier(self.path / CLASSIFIER_DIR)
            self._classifier, self._classifier_key = clf, key
        return self._classifier

    def attach_classifier(self, model_dir: str | os.PathLike) -> None:
        """Copy a classifier folder (from ``productlens classify train``) into the catalog, atomically.

        A previously attached classifier is replaced. The classifier keeps its own
        backbone, so it need not match the catalog's embedder.
        """
        from productlens.models.classifiers import load_classifier

        clf = load_classifier(model_dir)
        clf.save(self.path / CLASSIFIER_DIR)
        self._classifier_key = None  # loaded again at the next use

    def classify(self, source: Any, *, box: Box | None = None, k: int = 4,
                 level: str | None = None) -> list[tuple[str, float]]:
        """The ``k`` most probable categories of one image (path, URL, bytes or PIL image; optional box)."""
        clf = self.classifier
        if clf is None:
            raise ProductLensError(f"{self.path} has no classifier; attach one with "
                                   "`productlens index attach-classifier`")
        k = check_k(k)
        img = load_image(source, box=box, target=clf.input_size)  # a large JPEG: decoded at a fraction of its size
        return clf.predict(img, k=k, level=level)[0]

    def search(self, source: Any, *, box: Box | None = None, k: int = 10, rerank: bool = True,
               where: dict | None = None, detector: Detector | None = None, text: str | None = None,
               verify: bool | None = None) -> list[Hit]:
        """Rank the catalog for one query image (path, URL, bytes or PIL image; optional box).

        ``detector`` (a :class:`~productlens.models.detectors.Detector`): without
        a box, search with the best detected box instead of the whole photo.
        ``text``: words known about the query (e.g. a title), fused like OCR text
        (at :meth:`text_weight_for`'s weight).
        ``verify``: spatial verification of the top results (default: on where
        OpenCV is installed; see :func:`productlens.pipeline.verify.resolve`).
        """
        k = check_k(k)  # -1 had sliced off the last hit
        if box is not None and not isinstance(box, Box):
            raise BoxError(f"box must be a productlens.types.Box (Box(x, y, w, h) in pixels), got {box!r:.40}")
        source = read_once(source)  # a URL: fetched once for the detector, the picture and its print
        if box is None and detector is not None:
            from productlens.pipeline.detect import best_box_of

            box = best_box_of(detector, source)
        img = load_image(source, box=box, target=self.query_embedder.preprocess.size,  # ImageError / BoxError
                         min_side=MIN_SIDE)
        query = self.to_index_space(self.query_embedder.embed_images([img]), "query")
        # print is read at full size, as rank and eval read it (the picture above was shrunk while decoding)
        texts = self.query_texts([source], [box], [text])
        from productlens.pipeline.verify import resolve

        return self.search_hits(query, k, rerank=rerank, where=where, texts=texts, text_weight=self.text_weight_for(
            bool(text)), verify=[img] if resolve(verify) else None)[0]

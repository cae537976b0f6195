"""Building a catalog folder: embed the gallery, fit the adapter, write the store atomically.

:func:`build_catalog` writes a new catalog (layout in :mod:`productlens.pipeline.catalog`)
into a temporary folder beside its target and renames it into place, so an interrupted
build leaves either the old catalog or the new one, never a half-written folder.
:func:`check_catalog_target` lets long work that ends in a build fail before it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from productlens.config import DEFAULT_EMBEDDER
from productlens.fileio import place_new_dir, replace_dir, temporary_beside
from productlens.heads.adapter import fit_adapter
from productlens.index.base import clean_metadata
from productlens.models.embedders import create_embedder, get_embedder
from productlens.models.embedders.base import l2_normalize
from productlens.models.embedders.joined import joined
from productlens.pipeline.catalog import BACKBONE_DIR, MODEL_KEY, Catalog, catalog_format, item_metadata
from productlens.pipeline.catalog_models import query_embedder, vector_name
from productlens.pipeline.embed import EmbedResult, embed_items
from productlens.pipeline.features_cache import model_record, source_key
from productlens.types import Item, ProductLensError

if TYPE_CHECKING:
    from productlens.pipeline.store_spec import StoreSpec

log = logging.getLogger(__name__)

#: how an adapted catalog embeds queries (see :func:`query_embedder`; chosen on the train-only
#: development splits, benchmarks/dev_protocol.py)
DEFAULT_QUERY_VIEWS = "regions"
#: catalog mode with fine-tuning: each labelled seller photo counts this many times beside
#: the shopper photos (benchmarks/dev_finetune.py --split session --seller-repeats ...)
FINETUNE_SELLER_REPEATS = 4


def check_catalog_target(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise ProductLensError unless :func:`build_catalog` may write a catalog at ``path``: it does
    not exist, or ``overwrite`` is set and it is an empty folder or a productlens catalog (never a
    folder of the user's). Call it before long work that ends in building one."""
    from productlens.pipeline.store_spec import StoreSpec

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ProductLensError(f"{path} is a file, not a catalog folder: it is never replaced, even with "
                               "--overwrite; write the catalog to a new or empty folder")
    if path.exists() and not overwrite:
        raise ProductLensError(f"{path} exists; replace it with --overwrite (overwrite=True), or write elsewhere")
    if path.is_dir() and any(path.iterdir()):  # only a catalog is replaced, never a folder of the user's
        try:
            StoreSpec.of(path)
        except ProductLensError:
            raise ProductLensError(f"{path} holds files but no productlens catalog: it is never replaced, even "
                                   "with --overwrite; write the catalog to a new or empty folder") from None


def build_catalog(items: Sequence[Item], path: str | os.PathLike, *, embedder: str = DEFAULT_EMBEDDER,
                  train: Sequence[Item] | None = None, use_gallery_labels: bool = False,
                  finetune: bool = False, overwrite: bool = False, progress: bool = True,
                  ocr: bool = False, store: "StoreSpec | None" = None,
                  query_views: str | None = None, gallery_views: str | None = None,
                  companions: Sequence[str] = ()) -> tuple[Catalog, list]:
    """Embed ``items`` into a new catalog folder at ``path``; returns (catalog, skipped errors).

    ``train``: labelled shopper photos (Item.product_id set) that fit the
    catalog adapter before indexing; without them the plain backbone is used.
    ``finetune`` (with ``train``): first fine-tune the backbone's last blocks on
    them (:mod:`productlens.models.finetune`, minutes on a CPU; a backbone it
    does not support is used frozen, with a warning); the model is
    kept in the catalog folder (``backbone/``) and embeds gallery and queries.
    ``use_gallery_labels`` (catalog mode): the gallery's own product ids also
    train the adapter; with ``finetune``, the seller photos of products that also
    have training photos join the fine-tuning (each counted
    ``FINETUNE_SELLER_REPEATS`` times), which then trains deeper, as a classifier's does
    (``FinetuneConfig.for_catalog``). Otherwise they are never read (challenge mode).
    ``ocr``: read the print on every gallery photo (kept in the metadata as
    ``ocr``) and on every query; fusion starts once a text weight is chosen
    (:meth:`Catalog.fit_text_weight`).
    ``store``: where the vectors go (:class:`~productlens.pipeline.store_spec.StoreSpec`;
    default the embedded store inside the folder). A server collection of that
    name is replaced only with ``overwrite``.
    ``query_views``: how queries (and the training photos, which stand for
    queries) are embedded: ``"regions"`` pools the whole photo with six crops
    (:func:`query_embedder`; default when there are training photos, since the
    adapter then centres the two domains apart), ``"none"`` the whole photo
    only (default without training photos).
    ``gallery_views``: how gallery photos are embedded; by default (:func:`default_gallery_views`)
    ``"shelf"`` with ``regions`` queries: the queries' views of the photo and of a 2 x 2 mosaic of
    it (a seller's one item described as the shelf of them a shopper photographs too), which matched
    the train-only splits' held-out photos better than the queries' views alone, and those better than
    whole seller photos (docs/benchmarks.md); otherwise as the queries are. ``"regions"`` builds
    twice as fast as ``"shelf"``, ``"none"`` (each photo once) fourteen times.
    ``companions``: bundled backbones joined to the embedder, run on the whole
    photo only (:mod:`productlens.models.embedders.joined`; ``companions_for(embedder)``
    gives the other bundled backbones). None by default: on the train-only
    splits they helped queries of products never trained on and hurt a gallery
    that holds photos of the trained products (see docs/benchmarks.md).
    The catalog is written to a temporary folder beside ``path`` and renamed into place.
    """
    from productlens.pipeline.store_spec import StoreSpec

    path = Path(path)
    if isinstance(items, (str, os.PathLike)):  # each character had been taken for an item
        raise ProductLensError(f"build_catalog takes items, got the path {str(items)!r}: read it first with "
                               "productlens.data.readers.read_catalog")
    check_catalog_target(path, overwrite)
    if not items:
        raise ProductLensError("the catalog has no items")
    if not all(isinstance(it, Item) for it in items):
        raise ProductLensError("build_catalog takes productlens.types.Item objects, got "
                               f"{next(type(it).__name__ for it in items if not isinstance(it, Item))}")
    all_mds = [clean_metadata(item_metadata(it)) for it in items]  # what the store refuses: named now
    if store is not None:  # a server that cannot be reached fails now, not after the embedding
        store.probe(path, overwrite)
    if len({it.id for it in items}) != len(items):
        seen: set[int] = set()
        repeated = sorted({it.id for it in items if it.id in seen or seen.add(it.id)})
        raise ProductLensError(f"catalog item ids must be unique; repeated: {repeated[:10]}"
                               + (" ..." if len(repeated) > 10 else ""))
    if embedder.startswith("onnx:") and not Path(embedder[5:]).expanduser().is_absolute():
        # the user's model, named from where they are: a relative name in a catalog means inside its folder
        embedder = "onnx:" + str(Path(embedder[5:]).expanduser().absolute())
    labelled = [t for t in train or () if t.product_id is not None]
    if train and len(labelled) < len(train):
        log.warning("%d of %d training photos have no product_id and are not trained on",
                    len(train) - len(labelled), len(train))
    if finetune and not labelled:
        raise ProductLensError("fine-tuning needs training photos with a product_id (--train)"
                               if train else "fine-tuning needs labelled training photos (--train)")
    if query_views is None:
        query_views = DEFAULT_QUERY_VIEWS if labelled else "none"
    gallery_views = default_gallery_views(query_views) if gallery_views is None else gallery_views
    companions = list(companions)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_beside(path, folder=True, tag="building.") as tmp:
        try:
            name, emb = embedder, get_embedder(embedder)
            for views in (query_views, gallery_views):
                query_embedder(emb, views)  # an unknown view set fails before any work
            if finetune:
                from productlens.models.finetune import FinetuneConfig, finetune_backbone, supports

                if not supports(embedder):
                    log.warning("%s cannot be fine-tuned here; using it frozen", embedder)
                    finetune = False
            if finetune:
                photos, repeats = list(labelled), [1] * len(labelled)
                if use_gallery_labels:  # catalog mode: seller photos of the trained products join them
                    known = {t.product_id for t in labelled}
                    seller = [it for it in items if it.product_id in known]
                    photos += seller
                    repeats += [FINETUNE_SELLER_REPEATS] * len(seller)
                res = finetune_backbone(photos, [t.product_id for t in photos], tmp / BACKBONE_DIR,
                                        FinetuneConfig.for_catalog(embedder, use_gallery_labels),
                                        progress=progress, repeats=repeats)
                name = f"onnx:{BACKBONE_DIR}/{res.path.name}"  # relative: the folder may be moved
                emb = create_embedder(res.embedder_name)
            emb = joined(emb, companions)
            tr = embed_items(query_embedder(emb, query_views), labelled, progress=progress, desc="training photos") \
                if labelled else None
            extra = _further_groups(emb, query_views, gallery_views, companions)
            gal = embed_gallery(query_embedder(emb, gallery_views), items, progress=progress,
                                known=tr if extra is not None else None, known_items=labelled, extra=extra or ())
            if not len(gal.ok):
                raise ProductLensError("no gallery image could be read")
            ok_items = [items[i] for i in gal.ok]
            adapter = None
            if labelled:
                labels = np.array([labelled[i].product_id for i in tr.ok])
                glabels = None
                if use_gallery_labels:
                    glabels = np.array([-1 if it.product_id is None else it.product_id for it in ok_items])
                adapter = fit_adapter(vector_name(name, companions), tr.vectors, labels, gallery_vectors=gal.vectors,
                                      gallery_labels=glabels)
            vectors = gal.vectors if adapter is None else adapter.transform(gal.vectors, "gallery")
            spec = store or StoreSpec()
            store = spec.create(tmp, vectors.shape[1], overwrite=overwrite)
            spec.save(tmp)
            store.set_info("embedder", name)
            store.set_info(MODEL_KEY, model_record(emb.main if companions else emb))
            store.set_info("catalog_format", catalog_format(query_views, gallery_views))
            store.set_info("companions", "+".join(companions))
            store.set_info("adapter", adapter is not None)
            store.set_info("query_views", query_views)
            store.set_info("gallery_views", gallery_views)
            store.set_info("ocr", bool(ocr))
            mds = [all_mds[i] for i in gal.ok]
            if ocr:
                from productlens.pipeline.fusion import ocr_texts

                for md, text in zip(mds, ocr_texts([it.image for it in ok_items], progress=progress)):
                    md["ocr"] = text
            store.upsert([it.id for it in ok_items], vectors, mds)
            store.build_index()
            store.close()
            if adapter is not None:
                adapter.save(tmp / "adapter", metrics={"train_photos": int(len(tr.ok)), "finetuned": finetune,
                                                      "gallery_labels_used": bool(use_gallery_labels)})
            with _writer_lock_of(path):  # a writer of the old catalog finishes first (and later ones see the swap)
                if overwrite:
                    replace_dir(tmp, path)  # the old catalog or the new one, whenever a kill comes
                else:  # a build that went to the same new folder meanwhile is not replaced
                    place_new_dir(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return Catalog.open(path), gal.errors


def _writer_lock_of(path: Path):
    """The writer lock of the catalog at ``path`` (:meth:`Catalog.writing`), or nothing to hold."""
    from productlens.fileio import file_lock
    from productlens.pipeline.catalog import WRITER_LOCK

    if Path(path).is_dir():  # a catalog (check_catalog_target refuses any other folder) or an empty folder
        return file_lock(Path(path) / WRITER_LOCK)
    return contextlib.nullcontext()


def default_gallery_views(query_views: str) -> str:
    """How gallery photos are embedded when not told: ``shelf`` for ``regions`` queries (the
    photo's regions and those of a 2 x 2 mosaic of it, chosen on the train-only splits,
    docs/benchmarks.md), otherwise as the queries are."""
    return "shelf" if query_views == "regions" else query_views


def _further_groups(emb, query_views: str, gallery_views: str, companions: Sequence[str]) -> list | None:
    """How a gallery photo that is also a training photo can reuse the training photo's vector:
    ``[]`` when gallery and queries are embedded alike; the embedders of the gallery's further
    view groups when its first group is the queries' views (``shelf`` after ``regions``); None
    when it must be embedded afresh."""
    from productlens.data.augment import PooledViewEmbedder, view_groups

    if gallery_views == query_views:
        return []
    if query_views == "none" or gallery_views == "none" or companions:
        return None
    q, g = view_groups(query_views), view_groups(gallery_views)
    if len(q) != 1 or len(g) < 2 or g[0] != q[0]:
        return None
    return [PooledViewEmbedder(emb, group) for group in g[1:]]


def embed_gallery(embedder, items: Sequence[Item], *, progress: bool = True, known: EmbedResult | None = None,
                  known_items: Sequence[Item] = (), extra: Sequence = ()) -> EmbedResult:
    """Embed gallery photos (:func:`~productlens.pipeline.embed.embed_items`), reusing ``known``:
    the vectors the same embedder gave ``known_items``. A gallery photo with the same bytes and box
    as one of them (a catalog whose gallery holds its training photos) takes that vector instead of
    being embedded again; the vectors are the ones embedding would give, and no label is read.

    ``extra``: when ``known`` holds only the first of ``embedder``'s view groups, one embedder per
    further group (:class:`~productlens.data.augment.PooledViewEmbedder`); a reused photo is embedded
    by these only, and its vector is the L2-normalised sum of the groups', as ``embedder`` gives it."""
    if known is None or not len(known.ok):
        return embed_items(embedder, items, progress=progress, desc="gallery")
    have = {}
    for j, i in enumerate(known.ok):
        key = source_key(known_items[i])
        if key is not None:
            have[key] = j
    sizes = {_file_size(known_items[i]) for i in known.ok} - {None}
    # only a file of a training photo's size can be one: the others are not read for a hash
    found = [have.get(source_key(it)) if _file_size(it) in sizes else None for it in items]
    todo = [i for i, j in enumerate(found) if j is None]
    res = embed_items(embedder, [items[i] for i in todo], progress=progress, desc="gallery")
    vectors = np.zeros((len(items), embedder.dim), np.float32)
    ok = np.zeros(len(items), bool)
    for i, j in enumerate(found):
        if j is not None:
            vectors[i], ok[i] = known.vectors[j], True
    errors = [(todo[i], src, msg) for i, src, msg in res.errors]
    reused = np.flatnonzero(ok)
    for more in extra:  # the further view groups of the reused photos
        part = embed_items(more, [items[i] for i in reused], progress=progress, desc="gallery, more views")
        lost = np.setdiff1d(np.arange(len(reused)), part.ok)
        ok[reused[lost]] = False
        errors += [(int(reused[i]), src, msg) for i, src, msg in part.errors]
        vectors[reused[part.ok]] += part.vectors
        reused = reused[part.ok]
    if len(extra):
        vectors[reused] = l2_normalize(vectors[reused])
    done = np.asarray(todo, np.int64)[res.ok]
    vectors[done], ok[done] = res.vectors, True
    if len(todo) < len(items):
        log.info("gallery: %d of %d photos are training photos; their vectors were reused",
                 len(items) - len(todo), len(items))
    return EmbedResult(vectors[ok], np.flatnonzero(ok), sorted(errors, key=lambda e: e[0]))


def _file_size(item: Item) -> int | None:
    """The size of an item's local image file, or None (a URL, a missing file)."""
    try:
        return os.path.getsize(item.image)
    except (OSError, TypeError, ValueError):
        return None

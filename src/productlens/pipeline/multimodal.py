"""A catalog's text side: text queries, image -> text alignment, zero-shot categories.

- :func:`text_search` ranks a catalog's products for words ("oat yoghurt"),
  from the titles, names, categories and descriptions in its metadata.
- :func:`fit_catalog_alignment` trains the image -> text map
  (:mod:`productlens.heads.align`) on the catalog's own (photo, product text)
  pairs: its gallery photos and, when given, labelled training photos. It is
  kept in the catalog folder (``align/``) and works in the catalog's index
  space, so gallery vectors need no re-embedding.
- :func:`photos_for_text` finds photos by words (the projected gallery vectors
  against the query's MiniLM vector); :func:`zero_shot` names a photo's
  category among any list of names, including categories with no photo
  (the alignment, mixed with the backbone's ImageNet concepts:
  :mod:`productlens.heads.conse`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from productlens.config import ZERO_SHOT_IMAGENET_WEIGHT
from productlens.heads.align import Alignment, fit_alignment, product_text
from productlens.models.text import DEFAULT_TEXT_ENCODER, get_text_encoder
from productlens.pipeline.catalog import Catalog
from productlens.pipeline.text_search import TextSearch, products_from_metadata
from productlens.types import Hit, Item, ProductLensError, check_k, check_list, product_key

ALIGN_DIR = "align"


def catalog_text_search(catalog: Catalog) -> TextSearch:
    """A :class:`TextSearch` over the catalog's products (from its metadata)."""
    ids = catalog.store.ids()
    return TextSearch(products_from_metadata(ids.tolist(), catalog.store.get(ids)))


def text_search(catalog: Catalog, query: str, k: int = 10) -> list[tuple[int, str, float]]:
    """The ``k`` best products for a text query: (product_id, title, score)."""
    ts = catalog_text_search(catalog)
    return [(p.product_id, p.title, s) for p, s in ts.search(query, k)]


def _image_space(catalog: Catalog) -> str:
    return f"catalog:{catalog.vector_name}:{'adapted' if catalog.adapter else 'plain'}"


def fit_catalog_alignment(catalog: Catalog, train: Sequence[Item] = (), *, progress: bool = False) -> dict:
    """Train and save (``align/`` in the catalog) the image -> text map; returns its metrics.

    Pairs: every gallery item with a title or category (its stored vector and
    its product's text) and every ``train`` photo whose product the catalog
    knows (query-domain vectors). Photos are weighted so that each product
    counts the same. ``metrics["skipped"]``: one message per ``train`` photo left out
    (a product the catalog has no text for, or an unreadable photo).
    """
    ids = catalog.store.ids()
    mds = catalog.store.get(ids)
    text_of: dict[int, str] = {}
    vecs, texts, pids = [], [], []
    gal = catalog.store.vectors(ids)
    for j, md in enumerate(mds):
        md = md or {}
        t = product_text(md.get("title"), md.get("category"), md.get("name"))
        if not t:
            continue
        key = product_key(int(ids[j]), md.get("product_id"))
        text_of.setdefault(key, t)
        vecs.append(gal[j])
        texts.append(t)
        pids.append(key)
    n_gallery = len(vecs)
    known = [t for t in train if t.product_id is not None and int(t.product_id) in text_of]
    skipped = [f"{t.image}: product {t.product_id} has no photo with a title or category in the catalog"
               for t in train if not (t.product_id is not None and int(t.product_id) in text_of)]
    if known:
        res = catalog.embed_queries(known, [t.box for t in known], progress=progress)
        skipped += [msg for _, _, msg in res.errors]
        for i, v in zip(res.ok, res.vectors):
            vecs.append(v)
            texts.append(text_of[int(known[i].product_id)])
            pids.append(int(known[i].product_id))
    if len(set(pids)) < 2:
        raise ProductLensError("aligning photos with text needs at least 2 products with a title or category")
    enc = get_text_encoder(DEFAULT_TEXT_ENCODER)
    uniq, inverse, counts = np.unique(np.array(pids), return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    align = fit_alignment(np.stack(vecs), enc.encode(texts), image_space=_image_space(catalog),
                          text_encoder=enc.name, sample_weight=weights * len(uniq) / weights.sum())
    metrics = {"gallery_photos": n_gallery, "train_photos": len(vecs) - n_gallery, "products": int(len(uniq)),
               "alpha": align.alpha, "skipped": skipped}
    align.save(catalog.path / ALIGN_DIR, {**metrics, "skipped": len(skipped)})
    return metrics


def load_catalog_alignment(catalog: Catalog) -> Alignment:
    folder = catalog.path / ALIGN_DIR
    if not (folder / "config.json").is_file():
        raise ProductLensError(f"{catalog.path} has no image-text alignment; train one with "
                               "`productlens text align` (or fit_catalog_alignment)")
    return Alignment.load(folder, image_space=_image_space(catalog))


def photos_for_text(catalog: Catalog, query: str, k: int = 10) -> list[Hit]:
    """Gallery photos ranked for a text query through the alignment (photos need no text of their own)."""
    k = check_k(k)
    align = load_catalog_alignment(catalog)
    q = get_text_encoder(align.text_encoder).encode([query])
    if not q.any():
        raise ProductLensError("the text query is empty")
    ids = catalog.store.ids()
    sims = align.similarity(catalog.store.vectors(ids), q)[:, 0]
    order = np.argsort(-sims, kind="stable")[:k]
    return catalog.store.as_hits(sims[order][None].astype(np.float32), ids[order][None])[0]


def zero_shot(catalog: Catalog, sources: Sequence[Any], names: Sequence[str], k: int = 4,
              progress: bool = False, imagenet_weight: float = ZERO_SHOT_IMAGENET_WEIGHT
              ) -> list[list[tuple[str, float]] | None]:
    """Name each photo's category among ``names`` by text alone: the ``k`` best (name, score).

    ``names`` may include categories the catalog has no photo of. The score is
    the cosine of the photo, projected by the catalog's image-text alignment,
    with the name; with ``imagenet_weight`` > 0 (and two names or more) it is
    :func:`productlens.heads.conse.mix` of that cosine and the ImageNet concepts'
    (:class:`~productlens.heads.conse.Concepts`), each standardised over the names.
    The alignment only knows the catalog's categories; the concepts add what the
    backbone learned on ImageNet, which helps most with categories no catalog
    photo shows. A photo that cannot be read gives None (reported as a warning
    by the embedding step).
    """
    k, sources = check_k(k), check_list(sources, "sources")  # one path: a list of its characters
    names = [n for n in check_list(names, "names") if str(n).strip()]
    if not names:
        raise ProductLensError("zero-shot classification needs at least one category name")
    if imagenet_weight < 0:
        raise ProductLensError("imagenet_weight must be 0 or more")
    align = load_catalog_alignment(catalog)
    t = get_text_encoder(align.text_encoder).encode([str(n).replace("-", " ") for n in names])
    res = catalog.embed_queries(sources, progress=progress)
    sims = align.similarity(res.vectors, t)
    ok = res.ok
    if imagenet_weight > 0 and len(names) > 1 and len(ok):
        from productlens.heads.conse import get_concepts, mix

        con = get_concepts(align.text_encoder).embed([sources[i] for i in ok], progress=progress)
        ok, sims = ok[con.ok], mix(sims[con.ok], con.vectors @ t.T, imagenet_weight)
    out: list[list[tuple[str, float]] | None] = [None] * len(sources)
    for row, i in enumerate(ok):
        order = np.argsort(-sims[row], kind="stable")[:k]
        out[i] = [(names[j], float(sims[row, j])) for j in order]
    return out

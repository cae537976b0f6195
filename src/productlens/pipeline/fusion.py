"""Text evidence fused with the image score: the print read on a query photo
matched against what each catalog item says of itself.

Each gallery item has a *document*: its title, product name and category (from
the catalog's metadata, e.g. ``products.jsonl``) and the words OCR read on its
own photo (cached in the catalog when it was built with OCR). A query's text
(OCR of the query photo, plus any text the user gave) is compared with every
document by TF-IDF cosine over character 3- to 5-grams, which tolerates OCR's
misreadings ("BRANO" still matches "Bravo") and needs no vocabulary. The fused
score of an item is ``image score + weight * text score``; queries with no
text keep their image ranking. The weight is chosen on *training* photos
(:func:`choose_text_weight`, :func:`fit_text_weight`), never on the queries
being evaluated.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from productlens.progress import bar_disable

log = logging.getLogger(__name__)

DOC_FIELDS = ("title", "name", "category", "brand", "ocr")  # metadata that a package's print may show
WEIGHT_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
HOLDOUT_EVERY = 4  # every 4th training photo of a held-out product is ranked to choose the weight
OCR_CACHE_SIZE = 20_000
_OCR_CACHE: dict[tuple, str] = {}


def item_document(md: dict[str, Any] | None) -> str:
    """The text of one catalog item: its DOC_FIELDS joined (hyphens in names read as spaces)."""
    md = md or {}
    parts = [str(md[f]).replace("-", " ") for f in DOC_FIELDS if md.get(f)]
    return " ".join(parts)


class TextMatcher:
    """Character n-gram TF-IDF over the gallery items' documents."""

    def __init__(self, ids: Sequence[int], documents: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.ids = np.asarray(ids, np.int64)
        order = np.argsort(self.ids)
        self.ids = self.ids[order]
        docs = [documents[i] for i in order]
        self.has_text = any(d.strip() for d in docs)
        self._vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True,
                                    strip_accents="unicode", sublinear_tf=True, min_df=1)
        self._docs = self._vec.fit_transform(docs if self.has_text else ["-"] * len(docs))

    @classmethod
    def from_store(cls, store) -> "TextMatcher":
        """A matcher over every item of a :class:`~productlens.index.base.Store`."""
        ids = store.ids()
        return cls(ids, [item_document(md) for md in store.get(ids)])

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity (0..1) of each text with every item: len(texts) x len(ids) floats."""
        q = self._vec.transform([t or "" for t in texts])
        return np.asarray((q @ self._docs.T).todense(), np.float32)

    def gather(self, sims: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``sims`` (from :meth:`scores`) looked up at item ``ids`` (N x k; -1 gives 0)."""
        pos = np.searchsorted(self.ids, np.maximum(ids, 0)).clip(max=max(len(self.ids) - 1, 0))
        found = (ids >= 0) & (self.ids[pos] == ids) if len(self.ids) else np.zeros(ids.shape, bool)
        rows = np.arange(len(ids))[:, None]
        return np.where(found, sims[rows, pos] if len(self.ids) else 0.0, 0.0).astype(np.float32)


def fuse(scores: np.ndarray, ids: np.ndarray, text_scores: np.ndarray, weight: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row by ``scores + weight * text_scores`` (missing ids stay last)."""
    fused = np.where(ids >= 0, scores + weight * text_scores, -np.inf).astype(np.float32)
    order = np.argsort(-fused, axis=1, kind="stable")
    return np.take_along_axis(fused, order, 1), np.take_along_axis(ids, order, 1)


def fit_text_weight(scores: np.ndarray, ids: np.ndarray, text_scores: np.ndarray, item_labels: dict[int, int],
                    query_labels: Sequence[int], grid: Sequence[float] = WEIGHT_GRID,
                    group=None) -> tuple[float, dict[float, float]]:
    """Choose the fusion weight that maximises mAP over held-out training queries.

    ``scores``/``ids``: their image ranking (N x k); ``text_scores``: the text
    score of each listed item; ``item_labels``: item id -> product id;
    ``group``: optional re-grouping (catalog mode) applied after fusion.
    Returns (best weight, {weight: mAP}); ties go to the smaller weight.
    """
    from productlens.eval.metrics import retrieval_metrics

    all_ids = np.array(sorted(item_labels), np.int64)
    labels = np.array([item_labels[i] for i in all_ids.tolist()])
    table: dict[float, float] = {}
    for w in grid:
        s, r = fuse(scores, ids, text_scores, w)
        if group is not None:
            s, r = group(s, r)
        pos = np.searchsorted(all_ids, np.maximum(r, 0)).clip(max=len(all_ids) - 1)
        as_index = np.where((r >= 0) & (all_ids[pos] == r), pos, -1)
        table[float(w)] = retrieval_metrics(as_index, labels, np.asarray(query_labels), r.shape[1])[
            f"map@{r.shape[1]}"]
    best = max(table, key=lambda w: (round(table[w], 6), -w))
    log.info("text fusion weight %.2f (held-out training mAP %s)", best,
             ", ".join(f"{w:g}: {m:.3f}" for w, m in table.items()))
    return best, table


def _cache_key(src: Any, box) -> tuple | None:
    """The OCR cache's key for a file: its path, size and modification time (a photo replaced under the same
    path is read again) and the box; None for anything else (read each time)."""
    if not isinstance(src, (str, os.PathLike)):
        return None
    try:
        st = os.stat(src)
    except (OSError, ValueError):  # a URL, a missing file: not cached
        return None
    return (os.fspath(src), st.st_size, st.st_mtime_ns, None if box is None else box.as_tuple())


def ocr_texts(sources: Sequence[Any], boxes: Sequence | None = None, *, progress: bool = False) -> list[str]:
    """The words OCR reads on each image (path, URL, bytes or PIL image; optional box).

    An image that cannot be read or OCR'd gives "" (reported as a warning): a
    query without text simply keeps its image ranking. Results for files are
    kept in memory for this process (the same photo is read once, by path, size
    and modification time).
    """
    from PIL import Image

    from productlens.data.images import load_image
    from productlens.models.ocr import get_ocr
    from productlens.models.ocr.base import words_text
    from productlens.types import ProductLensError

    ocr = get_ocr()
    boxes = list(boxes) if boxes is not None else [None] * len(sources)
    out = []
    from tqdm.auto import tqdm

    for src, box in tqdm(list(zip(sources, boxes)), desc="OCR", unit="img", disable=bar_disable(progress)):
        key = _cache_key(src, box)
        if key is not None and key in _OCR_CACHE:
            out.append(_OCR_CACHE[key])
            continue
        try:
            img = load_image(src, box=box)  # a PIL image too: its box is cut out, alpha put on white
            out.append(words_text(ocr.read(img)))
            if key is not None:
                if len(_OCR_CACHE) >= OCR_CACHE_SIZE:
                    _OCR_CACHE.pop(next(iter(_OCR_CACHE)))
                _OCR_CACHE[key] = out[-1]
        except ProductLensError as e:
            log.warning("no OCR text for %s: %s", src if not isinstance(src, Image.Image) else "image", e)
            out.append("")
    return out


def choose_text_weight(gallery: Sequence, train: Sequence, *, embedder: str | None = None,
                       use_gallery_labels: bool = False, folds: int = 2, every: int = HOLDOUT_EVERY,
                       progress: bool = False,
                       build: Mapping[str, Any] | None = None) -> tuple[float, dict[float, float]]:
    """Choose the fusion weight by cross-fitting over products, on training photos only.

    Photos of one product taken in one session are near-duplicates, so photos
    held out at random from the photos that adapted a catalog are ranked
    almost perfectly by the image, and the weight learns nothing. Instead, the
    products are split into ``folds`` groups by id. For each group a catalog
    is built whose adapter never saw that group's training photos, and every
    ``every``-th photo of those products is ranked in it. The image is then
    about as unsure as on a new shopper's photo. The weight that maximises
    mAP over all these rankings wins. Returns (weight, {weight: mAP}).

    ``build``: further options of :func:`~productlens.pipeline.catalog_build.build_catalog`
    (``query_views``, ``gallery_views``, ``companions``), so that the folds' catalogs embed
    photos as the final catalog will (they are not fine-tuned).
    """
    import tempfile
    from pathlib import Path

    from productlens.config import DEFAULT_EMBEDDER
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.types import ProductLensError

    labelled = [t for t in train if t.product_id is not None]
    products = sorted({int(t.product_id) for t in labelled})
    if len(products) < 2:
        raise ProductLensError("choosing the text weight needs training photos of at least 2 products")
    if not any(g.product_id is not None and int(g.product_id) >= 0 for g in gallery):
        raise ProductLensError("choosing the text weight needs a catalog that knows which product each photo "
                               "shows (catalog mode: --catalog / --catalog-labels)")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="productlens-textweight-") as tmp:
        cat = None
        for f in range(folds):
            held_products = {p for j, p in enumerate(products) if j % folds == f}
            adapt = [t for t in labelled if int(t.product_id) not in held_products]
            seen: dict[int, int] = {}
            held = []
            for t in labelled:
                if int(t.product_id) in held_products:
                    n = seen.get(t.product_id, 0)
                    seen[t.product_id] = n + 1
                    if n % every == 0:
                        held.append(t)
            if cat is not None:
                cat.close()
            if len({int(t.product_id) for t in adapt}) < 2:  # adaptation needs two products: with 2-3 in all,
                adapt = []  # a fold leaves one, and its catalog is not adapted (the image score is the plain one)
            cat, _ = build_catalog(list(gallery), Path(tmp) / f"fold{f}", embedder=embedder or DEFAULT_EMBEDDER,
                                   train=adapt or None, use_gallery_labels=use_gallery_labels, ocr=True,
                                   progress=progress, **(build or {}))
            rows.append(cat.text_weight_rows(held, progress=progress))
        with cat:  # the last fold's catalog groups items by product (same gallery in every fold)
            k = min(r["ids"].shape[1] for r in rows)
            weight, table = fit_text_weight(np.concatenate([r["scores"][:, :k] for r in rows]),
                                            np.concatenate([r["ids"][:, :k] for r in rows]),
                                            np.concatenate([r["text"][:, :k] for r in rows]),
                                            rows[0]["item_labels"], [lab for r in rows for lab in r["labels"]],
                                            group=cat.grouping())
    return weight, table

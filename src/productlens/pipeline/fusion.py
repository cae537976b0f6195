"""Text evidence fused with the image score: the print read on a query photo
matched against what each catalog item says of itself.

Each gallery item has a *document*: its title, product name and category (from
the catalog's metadata, e.g. ``products.jsonl``) and the words OCR read on its
own photo (cached in the catalog when it was built with OCR). A query's text
(OCR of the query photo, plus any text the user gave) is compared with every
document by TF-IDF cosine over character 3- to 5-grams, which tolerates OCR's
misreadings ("BRANO" still matches "Bravo") and needs no vocabulary. The fused
score of an item is ``image score + weight * text score``; queries with no
text keep their image ranking. The weight is chosen on held-out *training*
photos (:func:`fit_text_weight`), never on the queries being evaluated.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

DOC_FIELDS = ("title", "name", "category", "brand", "ocr")  # metadata that a package's print may show
WEIGHT_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
HOLDOUT_EVERY = 8  # every 8th training photo of a product chooses the weight


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


def query_texts(words: Sequence[Sequence | None], extra: Sequence[str | None] | None = None) -> list[str]:
    """One text per query: the OCR words (``Word`` lists, None for unread) plus optional user text."""
    from productlens.models.ocr.base import words_text

    out = [words_text(w) for w in words]
    if extra is not None:
        out = [" ".join(s for s in (a, b or "") if s) for a, b in zip(out, extra)]
    return out


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


def ocr_texts(sources: Sequence[Any], boxes: Sequence | None = None, *, progress: bool = False) -> list[str]:
    """The words OCR reads on each image (path, URL, bytes or PIL image; optional box).

    An image that cannot be read or OCR'd gives "" (reported as a warning): a
    query without text simply keeps its image ranking.
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

    for src, box in tqdm(list(zip(sources, boxes)), desc="OCR", unit="img", disable=None if progress else True):
        try:
            img = src if isinstance(src, Image.Image) else load_image(src, box=box)
            out.append(words_text(ocr.read(img)))
        except ProductLensError as e:
            log.warning("no OCR text for %s: %s", src if not isinstance(src, Image.Image) else "image", e)
            out.append("")
    return out


def split_holdout(train: list, every: int = HOLDOUT_EVERY) -> tuple[list, list]:
    """(rest, held out): every ``every``-th photo of each product, in file order, is held out."""
    seen: dict[int, int] = {}
    rest, held = [], []
    for it in train:
        n = seen.get(it.product_id, 0)
        seen[it.product_id] = n + 1
        (held if n % every == every - 1 else rest).append(it)
    return rest, held

"""Text queries: "apple juice", "oat yoghurt" -> ranked products.

Two rankers over each product's text (title, name, category, description):

- lexical: Okapi BM25 over words (exact words: brand names, "Kvarg", "white");
- dense: cosine between the MiniLM vectors of the query and of the product
  text (meaning: a query with no catalog word still finds related products).

Products are ordered by BM25, and products that BM25 cannot tell apart (the
same score, often 0) by the dense cosine: no weight to tune. A query that is a
product's title or name word for word ("Apple Juice") puts that product first,
even where a longer title holds the same words ("Apple Juice with Pulp") and
BM25 would rank it higher (8 of grocery's 81 titles). Measured on
grocery's 81 products (category name + one random description word, 5 seeds;
benchmarks/bench_multimodal.py): BM25 alone 0.77 top-1, TF-IDF cosine 0.74,
MiniLM alone 0.58, reciprocal rank fusion of the two 0.69.

A product's text comes from a products.jsonl or from a catalog's metadata
(items grouped by product_id; items without one are products of their own).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from productlens.models.text import DEFAULT_TEXT_ENCODER, TextEncoder, get_text_encoder
from productlens.models.text.base import clean_text
from productlens.types import ProductLensError, product_key

log = logging.getLogger(__name__)

DOC_CHUNK = 4096  # documents encoded, then stored in the feature cache, at a time
BM25_K1, BM25_B = 1.2, 0.75  # the usual Okapi BM25 constants


@dataclass
class ProductText:
    """What a product says of itself."""

    product_id: int
    title: str = ""
    category: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def document(self) -> str:
        parts = [self.title, self.fields.get("name", "").replace("-", " "), self.category,
                 self.fields.get("description", "")]
        return clean_text(". ".join(p for p in parts if p))


def products_from_jsonl(records: dict[int, dict[str, Any]]) -> list[ProductText]:
    """From :func:`productlens.data.readers.read_products_jsonl`."""
    return [ProductText(pid, str(r.get("title") or r.get("name") or ""), str(r.get("category_name") or ""),
                        {k: str(r[k]) for k in ("name", "description", "brand") if r.get(k)})
            for pid, r in records.items()]


def products_from_metadata(ids: Iterable[int], metadata: Iterable[dict | None]) -> list[ProductText]:
    """Catalog items grouped by product_id (an item without one stands for itself, id -1 - item id)."""
    out: dict[int, ProductText] = {}
    for item_id, md in zip(ids, metadata):
        md = md or {}
        pid = product_key(item_id, md.get("product_id"))
        if pid in out:
            continue
        out[pid] = ProductText(pid, str(md.get("title") or ""), str(md.get("category") or ""),
                               {k: str(md[k]) for k in ("name", "description", "brand") if md.get(k)})
    return list(out.values())


#: scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, Japanese kana, Chinese characters,
#: Hangul syllables): their runs are counted as overlapping pairs of characters, so that "牛奶" finds "全脂牛奶"
_UNSPACED = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                       "\uf900-\ufaff\uac00-\ud7af]+")
_WORD = re.compile(r"(?u)\b\w+\b")


def words_of(text: str) -> list[str]:
    """The terms BM25 counts in ``text``: words (lower case, accents stripped), and in scripts written without
    spaces, pairs of characters (a single character alone)."""
    text = unicodedata.normalize("NFKD", text.lower())  # accents stripped, as scikit-learn's strip_accents
    # then composed again: NFKD splits a Hangul syllable into letters (jamo) that no pair would be made of
    text = unicodedata.normalize("NFC", "".join(c for c in text if not unicodedata.combining(c)))
    out: list[str] = []
    pos = 0
    for m in _UNSPACED.finditer(text):
        out += _WORD.findall(text[pos:m.start()])
        run = m.group()
        out += [run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)]
        pos = m.end()
    return out + _WORD.findall(text[pos:])


class BM25:
    """Okapi BM25 over term counts (:func:`words_of`: lower case, accents stripped, pairs of characters in
    scripts written without spaces)."""

    def __init__(self, documents: Sequence[str], k1: float = BM25_K1, b: float = BM25_B) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        self._cv = CountVectorizer(analyzer=words_of)
        tf = self._cv.fit_transform(documents).astype(np.float64).tocsr()
        n = tf.shape[0]
        df = np.asarray((tf > 0).sum(0)).ravel()
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        length = np.asarray(tf.sum(1)).ravel()
        norm = k1 * (1 - b + b * length / max(length.mean(), 1e-9))
        w = tf.copy()
        rows = np.repeat(np.arange(n), np.diff(w.indptr))
        w.data = w.data * (k1 + 1) / (w.data + norm[rows]) * idf[w.indices]
        self._weights = w.T.tocsr()  # terms x documents
        self._words = self._cv.build_analyzer()

    def words(self, text: str) -> tuple[str, ...]:
        """``text`` as the words BM25 counts, in order (lower case, accents stripped)."""
        return tuple(self._words(text))

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """n_queries x n_documents BM25 scores (each distinct query word counted once)."""
        q = (self._cv.transform(queries) > 0).astype(np.float64)
        return np.asarray((q @ self._weights).todense())


def encode_documents(encoder: TextEncoder, docs: Sequence[str]) -> np.ndarray:
    """``encoder.encode(docs)``, each document's vector kept in the feature cache (keyed by the encoder's name
    and revision, and the sha1 of the text): a catalog's products had all been encoded again by every
    `text search` (77 s for 40,000 products here), where a document changes only when its product does.
    Vectors are rounded to float16 whether encoded now or read back, so both give the same ranking. New
    vectors are stored :data:`DOC_CHUNK` at a time, so an interrupted first run keeps what it encoded."""
    import hashlib

    from productlens.pipeline.features_cache import FeatureCache

    store = FeatureCache(encoder)
    view = f"documents|{encoder.revision}"
    keys = [hashlib.sha1(clean_text(d).encode()).hexdigest() for d in docs]
    found, vectors = store.get(view, keys)
    out = np.zeros((len(docs), encoder.dim), np.float32)
    out[found] = vectors
    todo = np.flatnonzero(~found)
    if todo.size:
        first: dict[str, int] = {}
        for i in todo.tolist():  # a document given twice is encoded once
            first.setdefault(keys[i], i)
        keys_new, rows = list(first), list(first.values())
        by_key: dict[str, np.ndarray] = {}
        for a in range(0, len(rows), DOC_CHUNK):
            new = encoder.encode([docs[i] for i in rows[a:a + DOC_CHUNK]]).astype(np.float16)
            try:
                store.put(view, keys_new[a:a + DOC_CHUNK], new)
            except OSError as exc:  # a read-only cache: the vectors are still right
                log.warning("text vectors not cached: %s", exc)
            by_key.update(zip(keys_new[a:a + DOC_CHUNK], new))
        out[todo] = np.stack([by_key[keys[i]] for i in todo.tolist()])
    return out


class TextSearch:
    """Ranks products for text queries: BM25 first, MiniLM cosine among BM25 ties."""

    def __init__(self, products: Sequence[ProductText], encoder: TextEncoder | None = None) -> None:
        if not products:
            raise ProductLensError("no products to search")
        self.products = list(products)
        docs = [p.document() for p in self.products]
        if not any(docs):
            raise ProductLensError("no product has any text (title, name, category or description)")
        self._with_text = np.array([bool(d) for d in docs])
        self.encoder = encoder or get_text_encoder(DEFAULT_TEXT_ENCODER)
        self.vectors = encode_documents(self.encoder, docs)
        self.bm25 = BM25(docs)
        # a title's or a name's words -> (product, 2 for a title, 1 for a name only)
        self._named: dict[tuple[str, ...], dict[int, int]] = {}
        for i, p in enumerate(self.products):
            for rank, text in ((1, p.fields.get("name", "").replace("-", " ")), (2, p.title)):
                words = self.bm25.words(clean_text(text))
                if words:
                    self._named.setdefault(words, {})[i] = rank

    def rankers(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(BM25, MiniLM cosine), each n_queries x n_products."""
        cleaned = [clean_text(q) for q in queries]
        empty = [i for i, q in enumerate(cleaned) if not q]
        if empty:
            raise ProductLensError(f"text query {empty[0] + 1} is empty")
        return self.bm25.scores(cleaned), self.encoder.encode(cleaned) @ self.vectors.T

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """One score per query and product whose order is BM25's, ties broken by the dense cosine.

        ``BM25 rounded to 1e-4 + (cosine + 1) * 1e-6``: BM25 values closer than
        1e-4 count as a tie. The products whose title is the query word for word get the
        row's best BM25 + 2 instead of their own BM25, and those whose name is (and not their
        title) + 1, so they come first, titles before names.
        """
        lexical, dense = self.rankers(queries)
        for r, q in enumerate(queries):
            named = self._named.get(self.bm25.words(clean_text(q)), {})
            if named:
                best = lexical[r].max()
                for i, rank in named.items():
                    lexical[r, i] = best + rank
        return (np.round(lexical, 4) + (dense + 1.0) * 1e-6).astype(np.float64)

    def search(self, query: str, k: int = 10) -> list[tuple[ProductText, float]]:
        """The ``k`` best products for one query, with their scores (see :meth:`scores`).

        Products with no text at all are left out: nothing in them can answer a text query."""
        if int(k) < 1:
            raise ProductLensError(f"k must be a positive integer, got {k}")
        s = self.scores([query])[0]
        order = [i for i in np.argsort(-s, kind="stable") if self._with_text[i]][:k]
        return [(self.products[i], float(s[i])) for i in order]


"""What the service computes, without HTTP: identify a photo, read products, edit the catalog.

One :class:`Engine` per process holds the catalog (with its classifier) and
the optional detector. Reads and writes of the catalog are serialised by one
lock; the routes call these methods inside the admission slot.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from productlens.data.images import load_image
from productlens.pipeline.catalog import Catalog
from productlens.serve.config import ServeConfig
from productlens.types import Box, ImageError, Item, ProductLensError, product_key

log = logging.getLogger(__name__)

THUMB = 160
MATCH_TEMPERATURE = 0.05
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}


def sniff_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes whatever their name says; ImageError for non-images, bombs and corrupt files."""
    if not data:
        raise ImageError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except Exception:
        raise ImageError("the upload is not an image (JPEG, PNG, WebP, BMP, GIF or TIFF)") from None
    if fmt not in IMAGE_FORMATS:
        raise ImageError(f"unsupported image format {fmt}")
    return load_image(data, max_pixels=max_pixels)


def thumbnail_jpeg(img: Image.Image, size: int = THUMB) -> bytes:
    t = img.copy()
    t.thumbnail((size, size))
    buf = io.BytesIO()
    t.convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Engine:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.catalog = Catalog.open(config.catalog)
        self.detector = None
        if config.detector:
            from productlens.models.detectors import load_detector

            self.detector = load_detector(config.detector)
        self.lock = threading.Lock()
        self.uploads = Path(config.catalog) / "uploads"

    def close(self) -> None:
        self.catalog.close()

    # ---------------------------------------------------------------- identify
    def identify(self, img: Image.Image, box: Box | None = None, k: int = 4, matches: int = 8) -> dict[str, Any]:
        """Categories (top ``k`` with probabilities), detections and matching products for one photo."""
        if box is not None:
            box = box.clip(*img.size)  # BoxError when outside
        detections = []
        with self.lock:
            if self.detector is not None:
                dets = self.detector.detect(img)
                detections = [{"box": list(d.box.as_tuple()), "tag": d.tag, "score": round(float(d.score), 4)}
                              for d in dets]
                if box is None and dets:
                    box = max(dets, key=lambda d: d.score).box
            crop = img if box is None else img.crop((round(box.x), round(box.y), round(box.x + box.w),
                                                     round(box.y + box.h)))
            hits = self._search(crop, matches)
            categories, source = self._categories(crop, hits, k)
        return {"categories": categories, "category_source": source, "detections": detections,
                "box": None if box is None else list(box.as_tuple()),
                "matches": [{"id": h.id, "product_id": h.product_id, "title": h.title, "score": round(h.score, 4),
                             "thumbnail": f"/v1/items/{h.id}/thumbnail"} for h in hits]}

    def _search(self, img: Image.Image, k: int):
        cat = self.catalog
        query = cat.to_index_space(cat.query_embedder.embed_images([img]), "query")
        texts = cat.query_texts([img])
        scores, ids = cat.search_vectors(query, min(k * 4, len(cat.store)), texts=texts,
                                         group_by_product=cat.grouping() is not None)
        hits, seen = [], set()
        for h in cat.store.as_hits(scores, ids)[0]:  # one match per product
            key = product_key(h.id, h.product_id)
            if key not in seen:
                seen.add(key)
                hits.append(h)
        return hits[:k]

    def _categories(self, img: Image.Image, hits, k: int) -> tuple[list[dict], str]:
        clf = self.catalog.classifier
        if clf is not None:
            return [{"category": c, "probability": round(float(p), 4)} for c, p in clf.predict(img, k=k)[0]], \
                "classifier"
        # no classifier: each category scored by its best match, turned into shares by a softmax
        # (temperature MATCH_TEMPERATURE on the cosine); a rough guide, labelled as such
        md = self.catalog.store.get([h.id for h in hits])
        best: dict[str, float] = {}
        for h, m in zip(hits, md):
            c = (m or {}).get("category") or ""
            if c and h.score > best.get(c, -np.inf):
                best[c] = h.score
        if not best:
            return [], "none"
        names = list(best)
        w = np.exp((np.array([best[c] for c in names]) - max(best.values())) / MATCH_TEMPERATURE)
        w /= w.sum()
        order = np.argsort(-w, kind="stable")[:k]
        return [{"category": names[i], "probability": round(float(w[i]), 4)} for i in order], "matches"

    # ---------------------------------------------------------------- products
    def product(self, product_id: int) -> dict | None:
        with self.lock:
            ids = self._items_of(product_id)
            md = self.catalog.store.get(ids[:1])[0] if ids else None
        if md is None:
            return None
        return {"product_id": product_id, "title": md.get("title", ""), "category": md.get("category", ""),
                "items": [{"id": i, "thumbnail": f"/v1/items/{i}/thumbnail"} for i in ids]}

    def item_thumbnail(self, item_id: int) -> bytes | None:
        with self.lock:
            md = self.catalog.store.get([item_id])[0]
        if md is None:
            return None
        return thumbnail_jpeg(load_image(md["image"]))

    def random_item(self, rng: np.random.Generator) -> tuple[int, bytes]:
        with self.lock:
            ids = self.catalog.store.ids()
        if not len(ids):
            raise ProductLensError("the catalog is empty")
        i = int(rng.choice(ids))
        with self.lock:
            md = self.catalog.store.get([i])[0]
        buf = io.BytesIO()
        load_image(md["image"]).save(buf, "JPEG", quality=90)
        return i, buf.getvalue()

    # ---------------------------------------------------------------- admin
    def add_item(self, img: Image.Image, product_id: int, title: str, category: str,
                 item_id: int | None = None) -> int:
        """Store the photo under the catalog's uploads/ and index it; returns the item id."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        path = self.uploads / f"{uuid.uuid4().hex}.jpg"
        img.convert("RGB").save(path, "JPEG", quality=92)
        with self.lock:
            if item_id is None:
                ids = self.catalog.store.ids()
                item_id = int(ids.max()) + 1 if len(ids) else 0
            errors = self.catalog.add([Item(item_id, str(path), product_id=product_id, title=title,
                                            category=category)], progress=False)
        if errors:
            path.unlink(missing_ok=True)
            raise ImageError(errors[0][2])
        return item_id

    def update_product(self, product_id: int, fields: dict[str, str]) -> int:
        allowed = {k: v for k, v in fields.items() if k in ("title", "category") and v is not None}
        with self.lock:
            ids = self._items_of(product_id)
            if ids:
                self.catalog.update_metadata(ids, [allowed] * len(ids))
        return len(ids)

    def remove_product(self, product_id: int) -> int:
        with self.lock:
            ids = self._items_of(product_id)
            return self.catalog.remove(ids) if ids else 0

    def _items_of(self, product_id: int) -> list[int]:
        ids = self.catalog.store.ids()
        return [int(i) for i, md in zip(ids.tolist(), self.catalog.store.get(ids))
                if md and md.get("product_id") is not None and int(md["product_id"]) == product_id]

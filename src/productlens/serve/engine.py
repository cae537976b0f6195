"""What the service computes, without HTTP: identify a photo, read products, edit the catalog.

One :class:`Engine` per process holds the catalog (with its classifier) and
the optional detector. Reads and writes of the catalog are serialised by one
lock; the routes call these methods through the request batcher
(:mod:`productlens.serve.batcher`) or inside the admission slot.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from productlens.data.images import MIN_SIDE, big_enough, is_heif, load_image
from productlens.fileio import folder_key
from productlens.pipeline.catalog import Catalog, CatalogEmpty
from productlens.pipeline.embed import inputs_per_image
from productlens.pipeline.verify import resolve as resolve_verify
from productlens.serve.config import ServeConfig
from productlens.types import Box, ImageError, Item, ProductLensError, product_key

log = logging.getLogger(__name__)

THUMB = 160
THUMB_CACHE = 2048  # thumbnails kept in memory (about 5-10 kB each)
MATCH_TEMPERATURE = 0.05
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
MAX_ID = 2 ** 53 - 1  # item and product ids: what a browser's JavaScript number still holds exactly
RANDOM_TRIES = 5      # /v1/random skips a catalog photo that cannot be read, this many times
RANDOM_SIDE = 1600    # /v1/random's photo at most this long: the page shows it and sends it back to identify
EDITABLE = ("title", "category")  # what PUT /v1/products/{id} may change
#: model inputs per batch of waiting queries: whole-photo queries ran 17.2 ms each alone and
#: 14.1-14.6 ms in batches of 4-8; the seven pooled views of a query already fill a batch (89.5 ms
#: alone, 91.8-108.7 ms per query in batches of 2-16): EfficientNet-Lite2, onnxruntime, 2 cores
BATCH_INPUTS = 8


class ItemExists(ProductLensError):
    """An item id given for a new photo is taken: adding never replaces another photo."""


class CatalogGone(RuntimeError):
    """The served catalog's folder was deleted (the service answers 503 until one is there again)."""


@dataclass
class IdentifyRequest:
    """One photo to identify: an optional box (x, y, w, h), ``k`` categories, ``matches`` products."""

    image: Image.Image
    box: Box | None = None
    k: int = 4
    matches: int = 8


def sniff_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes whatever their name says; ImageError for non-images, bombs and corrupt files."""
    if not data:
        raise ImageError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except Image.DecompressionBombError:
        raise ImageError(f"the image has more than {max_pixels} pixels") from None
    except Exception:
        if is_heif(data):  # an image, in a format Pillow does not read
            raise ImageError("HEIC/HEIF photos (the iPhone camera's default) cannot be read here; send a JPEG "
                             "or PNG") from None
        raise ImageError("the upload is not an image (JPEG, PNG, WebP, BMP, GIF or TIFF)") from None
    if fmt not in IMAGE_FORMATS:
        raise ImageError(f"unsupported image format {fmt}")
    return big_enough(load_image(data, max_pixels=max_pixels), None)  # the route names the upload


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
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self.uploads = Path(config.catalog).resolve() / "uploads"  # stored paths hold wherever a server starts
        self.verify = resolve_verify(config.verify)

    def close(self) -> None:
        self.catalog.close()

    def _current(self) -> Catalog:
        """The catalog, opened again when its folder was rebuilt (`index build --overwrite`) since it was
        opened; :class:`CatalogGone` when it was deleted. Call with ``self.lock`` held. A rebuilt folder had
        been served with the new build's vectors and the replaced build's titles, or 500s."""
        key = folder_key(self.catalog.path)
        if key is None:
            raise CatalogGone(f"the catalog folder {self.catalog.path} no longer exists")
        if key != self.catalog._folder:
            new = Catalog.open(self.config.catalog)
            old, self.catalog = self.catalog, new
            old.close()
            with self._thumb_lock:
                self._thumbs.clear()
            log.warning("%s was rebuilt: serving the new build (%d items)", self.catalog.path, len(new))
        return self.catalog

    def refresh(self) -> Catalog:
        """:meth:`_current`, taking the lock."""
        with self.lock:
            return self._current()

    def status(self) -> dict[str, Any]:
        """Items in the catalog (opened again if rebuilt), and which models answer; read under the lock, so a
        rebuild in another request cannot close the catalog between opening and counting it."""
        with self.lock:
            cat = self._current()
            return {"items": len(cat), "classifier": cat.classifier is not None, "detector": self.detector is not None}

    # ---------------------------------------------------------------- identify
    @property
    def default_batch(self) -> int:
        """Queries per batch when requests wait together: as many as fit in ``BATCH_INPUTS``
        model inputs (a catalog that pools seven views per query runs one query at a time)."""
        return max(1, BATCH_INPUTS // inputs_per_image(self.catalog.query_embedder))

    def identify(self, img: Image.Image, box: Box | None = None, k: int = 4, matches: int = 8) -> dict[str, Any]:
        """Categories (top ``k`` with probabilities), detections and matching products for one photo."""
        out = self.identify_batch([IdentifyRequest(img, box, k, matches)])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def identify_batch(self, requests: Sequence[IdentifyRequest]) -> list[dict[str, Any] | Exception]:
        """:meth:`identify` for several photos with one embedding and one classifier run.

        Returns one result per request, or the exception that request raised
        (a bad box or an unreadable detection fails its own request only; an
        empty catalog fails them all with :class:`CatalogEmpty`).
        """
        out: list[dict[str, Any] | Exception | None] = [None] * len(requests)
        ready: list[tuple[int, Image.Image, Box | None, list[dict]]] = []
        with self.lock:
            self._current()
            if not len(self.catalog):
                return [CatalogEmpty("the catalog is empty: add products first (POST /v1/products)")
                        for _ in requests]
            for i, r in enumerate(requests):
                try:
                    ready.append((i, *self._prepare(r)))
                except Exception as e:  # noqa: BLE001 - this request fails, the batch goes on
                    out[i] = e
            if ready:
                crops = [crop for _, crop, _, _ in ready]
                hits = self._search(crops, max(requests[i].matches for i, *_ in ready))
                categories, source = self._categories(crops, hits, max(requests[i].k for i, *_ in ready))
        for j, (i, _, box, detections) in enumerate(ready):
            r = requests[i]
            out[i] = {"categories": categories[j][:r.k], "category_source": source if categories[j] else "none",
                      "detections": detections,
                      "box": None if box is None else list(box.as_tuple()),
                      "matches": [{"id": h.id, "product_id": h.product_id, "title": h.title,
                                   "score": round(h.score, 4), "thumbnail": f"/v1/items/{h.id}/thumbnail"}
                                  for h in hits[j][:r.matches]]}
        return out

    def _prepare(self, r: IdentifyRequest) -> tuple[Image.Image, Box | None, list[dict]]:
        """The photo's detections, and the crop to search: the box, else the best detection, else the photo."""
        box = None if r.box is None else r.box.clip(*r.image.size)  # BoxError when outside
        detections = []
        if self.detector is not None:
            dets = sorted(self.detector.detect(r.image, one_tag=True), key=lambda d: -d.score)
            least = self.config.min_box_score
            detections = [{"box": list(d.box.as_tuple()), "tag": d.tag, "score": round(float(d.score), 4),
                           "alternatives": [{"tag": t, "score": round(float(p), 4)} for t, p in d.alternatives
                                            if p >= least]}
                          for d in dets if d.score >= least][:self.config.max_boxes]
            if box is None and dets and self.config.search_detected and min(dets[0].box.w, dets[0].box.h) >= MIN_SIDE:
                box = dets[0].box
        crop = r.image if box is None else r.image.crop((round(box.x), round(box.y), round(box.x + box.w),
                                                         round(box.y + box.h)))
        return big_enough(crop, "the photo" if box is None else "the photo's box"), box, detections

    def _search(self, images: list[Image.Image], k: int) -> list[list]:
        cat = self.catalog
        query = cat.to_index_space(cat.query_embedder.embed_images(images), "query")
        texts = cat.query_texts(images)
        rows = []
        for row in cat.search_hits(query, min(k * 4, len(cat.store)), texts=texts,
                                   group_by_product=cat.grouping() is not None, verify=images if self.verify else None):
            hits, seen = [], set()
            for h in row:  # one match per product
                key = product_key(h.id, h.product_id)
                if key not in seen:
                    seen.add(key)
                    hits.append(h)
            rows.append(hits[:k])
        return rows

    def _categories(self, images: list[Image.Image], hits: list[list], k: int) -> tuple[list[list[dict]], str]:
        clf = self.catalog.classifier
        if clf is not None:
            return [[{"category": c, "probability": round(float(p), 4)} for c, p in pred]
                    for pred in clf.predict(images, k=k)], "classifier"
        return [self._categories_from_matches(row, k) for row in hits], "matches"

    def _categories_from_matches(self, hits: list, k: int) -> list[dict]:
        """Each category scored by its best match, turned into shares by a softmax (temperature
        ``MATCH_TEMPERATURE`` on the cosine): a rough guide when there is no classifier, labelled as such.

        Matches with no category compete as one unnamed share that is not listed, so a category
        whose photo matches worse than an uncategorised one is not reported as certain."""
        md = self.catalog.store.get([h.id for h in hits])
        best: dict[str, float] = {}
        for h, m in zip(hits, md):
            c = (m or {}).get("category") or ""
            if h.score > best.get(c, -np.inf):
                best[c] = h.score
        if not any(best):  # no match has a category
            return []
        names = list(best)
        w = np.exp((np.array([best[c] for c in names]) - max(best.values())) / MATCH_TEMPERATURE)
        w /= w.sum()
        order = [i for i in np.argsort(-w, kind="stable") if names[i]][:k]
        return [{"category": names[i], "probability": round(float(w[i]), 4)} for i in order]

    # ---------------------------------------------------------------- products
    def product(self, product_id: int) -> dict | None:
        with self.lock:
            ids = self._current().items_of(product_id)
            md = self.catalog.store.get(ids[:1])[0] if ids else None
        if md is None:
            return None
        return {"product_id": product_id, "title": md.get("title", ""), "category": md.get("category", ""),
                "items": [{"id": i, "thumbnail": f"/v1/items/{i}/thumbnail"} for i in ids]}

    def item_thumbnail(self, item_id: int) -> bytes | None:
        """A small JPEG of the item's photo; the last ``THUMB_CACHE`` are kept, keyed by file and mtime."""
        if not 0 <= item_id <= MAX_ID:
            return None
        with self.lock:
            md = self._current().store.get([item_id])[0]
        if md is None:
            return None
        path = str(md["image"])
        try:
            key = (path, os.stat(path).st_mtime_ns)
        except OSError:  # not a local file (or gone): load_image says which
            key = None
        with self._thumb_lock:
            data = self._thumbs.get(key) if key else None
            if data is not None:
                self._thumbs.move_to_end(key)
                return data
        try:
            data = thumbnail_jpeg(load_image(path, target=THUMB))  # a large photo: decoded at a fraction of its size
        except ImageError as e:
            log.warning("item %d: %s", item_id, e)
            raise
        if key:
            with self._thumb_lock:
                self._thumbs[key] = data
                while len(self._thumbs) > THUMB_CACHE:
                    self._thumbs.popitem(last=False)
        return data

    def random_item(self, rng: np.random.Generator) -> tuple[int, bytes]:
        with self.lock:
            ids = self._current().store.ids()
        if not len(ids):
            raise CatalogEmpty("the catalog is empty")
        for i in rng.choice(ids, min(RANDOM_TRIES, len(ids)), replace=False).tolist():
            with self.lock:
                md = self.catalog.store.get([i])[0]
            if md is None:  # removed since the ids were read
                continue
            try:  # a 12 MP photo: decoded at a fraction of its size, then capped (was 4 MB of base64)
                img = load_image(md["image"], target=RANDOM_SIDE // 2)
            except ImageError as e:  # a catalog photo gone from disk: try another
                log.warning("item %d: %s", i, e)
                continue
            img.thumbnail((RANDOM_SIDE, RANDOM_SIDE))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "JPEG", quality=90)
            return int(i), buf.getvalue()
        raise ProductLensError(f"no readable catalog photo in {RANDOM_TRIES} tries")

    # ---------------------------------------------------------------- admin
    def add_item(self, img: Image.Image, product_id: int, title: str, category: str,
                 item_id: int | None = None) -> int:
        """Store the photo under the catalog's uploads/ and index it; returns the item id.

        A photo of a product the catalog has takes the product's title and category where they
        are not given. Ids are between 0 and ``MAX_ID``. A new id is chosen under the catalog's writer lock
        (:meth:`Catalog.writing`), so servers on one machine sharing a catalog never hand out the same one,
        and it was never any item's before. A given ``item_id`` that an item has: :class:`ItemExists`.
        """
        for name, value in (("product_id", product_id), ("item_id", item_id)):
            if value is not None and not 0 <= value <= MAX_ID:
                raise ProductLensError(f"{name} must be between 0 and {MAX_ID}, got {value}")
        self.refresh()  # a deleted catalog folder is not made again by the uploads/ below
        self.uploads.mkdir(exist_ok=True)
        path = self.uploads / f"{uuid.uuid4().hex}.jpg"
        img.convert("RGB").save(path, "JPEG", quality=92)
        try:
            with self.catalog.writing(self.config.write_wait, guard=self.lock):
                if item_id is None:
                    item_id = self.catalog.free_id(limit=MAX_ID)
                elif item_id in self.catalog.store:
                    owner = (self.catalog.store.get([item_id])[0] or {}).get("product_id")
                    raise ItemExists(f"item {item_id} exists (a photo of product {owner}); delete it first, "
                                     "or leave item_id out to get a new id")
                if not (title and category):  # a new photo of a known product: its title and category
                    known = self.catalog.store.get(self.catalog.items_of(product_id)[:1])
                    if known and known[0]:
                        title = title or known[0].get("title", "")
                        category = category or known[0].get("category", "")
                errors = self.catalog.add([Item(item_id, str(path), product_id=product_id, title=title,
                                                category=category)], progress=False)
                if not errors:
                    self.catalog.mark_used(item_id)
        except BaseException:
            path.unlink(missing_ok=True)  # no stray upload for an item that was not added
            raise
        if errors:
            path.unlink(missing_ok=True)
            raise ImageError(errors[0][2])
        return item_id

    def update_product(self, product_id: int, fields: dict[str, Any]) -> int:
        """Set ``EDITABLE`` fields (strings) on every item of the product; returns how many items.
        Any other field, no field, or a value that is not a string: ProductLensError."""
        bad = sorted(k for k in fields if k not in EDITABLE)
        if bad or not fields:
            raise ProductLensError(f"only {' and '.join(EDITABLE)} can be changed (got {', '.join(bad) or 'nothing'})")
        if not all(isinstance(v, str) for v in fields.values()):
            raise ProductLensError(f"{' and '.join(EDITABLE)} must be strings")
        self.refresh()
        with self.catalog.writing(self.config.write_wait, guard=self.lock):  # the product's items as they are now, whoever added them
            ids = self.catalog.items_of(product_id)
            if ids:
                self.catalog.update_metadata(ids, [dict(fields)] * len(ids))
        return len(ids)

    def remove_product(self, product_id: int) -> int:
        """Remove every item of the product; the photos the service stored for them (uploads/) go too."""
        self.refresh()
        with self.catalog.writing(self.config.write_wait, guard=self.lock):
            ids = self.catalog.items_of(product_id)
            if not ids:
                return 0
            mds = self.catalog.store.get(ids)
            n = self.catalog.remove(ids)
        uploads = self.uploads.resolve()
        for md in mds:
            photo = Path((md or {}).get("image", ""))
            if photo.name and photo.resolve().parent == uploads:  # never a file of the user's catalog
                photo.unlink(missing_ok=True)
        return n

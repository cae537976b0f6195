"""Embed many images: decoding overlaps with inference, bad images are skipped.

A small thread pool decodes and preprocesses images (Pillow and numpy release
the GIL) a bounded number of items ahead, while the calling thread runs the
ONNX session batch by batch. Images that cannot be read (missing, corrupt,
bad box...) are reported in ``errors`` and skipped; the rest of the batch goes on.

>>> res = embed_items(embedder, paths)             # doctest: +SKIP
>>> res.vectors.shape, res.ok, res.errors          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from productlens.data.images import load_image
from productlens.models.embedders.base import Embedder, Preprocess, l2_normalize
from productlens.types import Box, Item, ProductLensError

log = logging.getLogger(__name__)

#: Batches decoded ahead of the one being embedded (bounds memory: about
#: (PREFETCH + 1) * batch_size preprocessed images are alive at once).
PREFETCH = 2

ItemError = tuple[int, Any, str]


@dataclass
class EmbedResult:
    """``vectors[j]`` is the embedding of ``sources[ok[j]]``; ``errors`` lists the skipped ones."""

    vectors: np.ndarray
    ok: np.ndarray
    errors: list[ItemError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ok)


def default_workers() -> int:
    """Decode threads: ``$PRODUCTLENS_DECODE_WORKERS``, else one per four cores (at least one).

    Decoding and preprocessing a photo costs ~1-2 ms of one core against tens of
    ms of inference, so one thread keeps a 2-4 core machine's model fed; more
    would only take cores from the ONNX session.
    """
    from productlens.config import num_threads

    env = os.environ.get("PRODUCTLENS_DECODE_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, num_threads() // 4)


def _load_into(preprocess, source: Any, box: Box | None, out: np.ndarray) -> None:
    """Decode ``source`` and write ``preprocess(image)`` into ``out`` (3 x size x size)."""
    if isinstance(source, Item):
        source, box = source.image, box if box is not None else source.box
    img = load_image(source, box=box, target=preprocess.size)
    if type(preprocess) is Preprocess:
        # Preprocess.to_array, bit for bit, in place: no float HxWx3 temporaries.
        u8 = np.asarray(preprocess.resize_image(img)).transpose(2, 0, 1)
        np.multiply(u8, np.float32(1.0 / 255.0), out=out)
        out -= np.asarray(preprocess.mean, np.float32)[:, None, None]
        out /= np.asarray(preprocess.std, np.float32)[:, None, None]
    else:
        out[...] = preprocess(img)


_spare: list[np.ndarray] = []  # batch arrays of the last call, for the next one
_spare_lock = threading.Lock()


def _take_ring(shape: tuple[int, ...], count: int) -> list[np.ndarray]:
    with _spare_lock:
        ring = [a for a in _spare if a.shape == shape][:count]
        for a in ring:
            _spare.remove(a)
    return ring + [np.empty(shape, np.float32) for _ in range(count - len(ring))]


def _give_ring(ring: list[np.ndarray]) -> None:
    """Keep one call's batch arrays (only full-size ones: small calls do not evict them)."""
    with _spare_lock:
        if ring and ring[0].shape[0] >= max((a.shape[0] for a in _spare), default=0):
            _spare[:] = ring


def release_buffers() -> None:
    """Free the batch arrays kept between calls ((PREFETCH + 2) x batch x 3 x size^2 floats)."""
    with _spare_lock:
        _spare.clear()


def _pool(embedder: Embedder, out: np.ndarray) -> np.ndarray:
    """``embedder.pool(out)``; the default GeM is done in place on the model's fresh
    output (the same operations as :func:`~productlens.models.embedders.base.gem`,
    without two feature-map-sized temporaries)."""
    if (getattr(embedder.pool, "__func__", None) is not Embedder.pool or out.ndim != 4
            or out.dtype != np.float32 or not out.flags.writeable):
        return embedder.pool(out)
    x = np.maximum(out, 1e-6, out=out)
    if embedder.gem_p == 1.0:
        return x.mean(axis=(2, 3))
    return np.power(np.power(x, embedder.gem_p, out=x).mean(axis=(2, 3)), 1.0 / embedder.gem_p)


def _message(exc: BaseException, source: Any) -> str:
    if isinstance(exc, ProductLensError):
        return str(exc)
    name = source.image if isinstance(source, Item) else source
    if isinstance(name, (bytes, bytearray, memoryview)):
        name = "<bytes>"
    return f"{name}: {type(exc).__name__}: {exc}"


def iter_embeddings(
    embedder,
    sources: Sequence,
    *,
    boxes: Sequence[Box | None] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[ItemError]]]:
    """Yield ``(indices, vectors, errors)`` batch by batch, in input order.

    ``indices`` are the positions in ``sources`` of the rows of ``vectors``;
    ``errors`` holds ``(index, source, message)`` for the batch's skipped items.
    Decode threads write each image straight into its batch's array, up to
    ``PREFETCH`` batches ahead of the one the calling thread is embedding; the
    calling thread decodes the images nobody has started when it needs them
    (the first batch, or when decoding is the bottleneck) instead of waiting.
    """
    n = len(sources)
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"got {len(boxes)} boxes for {n} sources")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    preprocess, size = embedder.preprocess, embedder.preprocess.size
    pool = ThreadPoolExecutor(max_workers=workers or default_workers(),
                              thread_name_prefix="productlens-decode")
    pending: deque[tuple[int, np.ndarray, list[Future]]] = deque()
    next_start = 0
    # Batch arrays are reused round-robin (batch b uses ring[b % len]: when it is
    # submitted, the batch that last used that slot has finished running) and
    # kept for the next call: a fresh 26 MB array costs a page fault per 4 KiB.
    ring = _take_ring((min(batch_size, n), 3, size, size), PREFETCH + 2)

    def submit_batch() -> None:
        nonlocal next_start
        start, stop = next_start, min(n, next_start + batch_size)
        buf = ring[(start // batch_size) % len(ring)][: stop - start]
        futures = [
            pool.submit(_load_into, preprocess, sources[i],
                        boxes[i] if boxes is not None else None, buf[i - start])
            for i in range(start, stop)
        ]
        pending.append((start, buf, futures))
        next_start = stop

    # Embedder.embed is run + pool + L2: the calling thread runs the model and a
    # worker pools the previous batch while the next one runs. An embedder with
    # its own ``embed`` is called as it is.
    split = getattr(embedder.embed, "__func__", None) is Embedder.embed

    def finish(out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return np.zeros((0, embedder.dim), np.float32)
        return l2_normalize(_pool(embedder, out)) if split else out

    done = None  # the previous batch: (indices, future of its vectors, errors)
    try:
        while next_start < n and len(pending) <= PREFETCH:
            submit_batch()
        while pending:
            start, buf, futures = pending.popleft()
            if next_start < n:
                submit_batch()  # keep the decoders busy while this batch runs
            good, errors = [], []
            for j, fut in enumerate(futures):
                i = start + j
                try:
                    if fut.cancel():  # not started (e.g. the first batch): decode it here
                        _load_into(preprocess, sources[i],
                                   boxes[i] if boxes is not None else None, buf[j])
                    else:
                        fut.result()
                    good.append(j)
                except Exception as exc:  # one bad image must not stop a gallery
                    errors.append((i, sources[i], _message(exc, sources[i])))
            if errors and good:
                buf = buf[good]  # drop the failed rows (one copy, only when some failed)
            out = None
            if good:
                out = embedder.run(buf) if split else embedder.embed(buf)
            del buf
            current = (np.asarray(good, dtype=np.int64) + start, pool.submit(finish, out), errors)
            if done is not None:
                yield done[0], done[1].result(), done[2]
            done = current
        if done is not None:
            yield done[0], done[1].result(), done[2]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _give_ring(ring)


def embed_items(
    embedder,
    sources: Sequence,
    *,
    boxes: Sequence[Box | None] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "embedding",
) -> EmbedResult:
    """Embed every image of ``sources`` (paths, URLs, bytes or :class:`Item`).

    ``boxes[i]`` (optional) crops ``sources[i]``. Returns the L2-normalised
    vectors of the images that decoded, their indices, and the errors of those
    that did not (each also logged as a warning). ``workers``: decode threads
    (default: one per four cores). The progress bar shows only on a terminal.
    """
    from tqdm.auto import tqdm

    n = len(sources)
    chunks, ok, errors = [], [], []
    with tqdm(total=n, desc=desc, unit="img", disable=None if progress else True,
              dynamic_ncols=True) as bar:
        for idx, vecs, errs in iter_embeddings(
            embedder, sources, boxes=boxes, batch_size=batch_size, workers=workers
        ):
            chunks.append(vecs)
            ok.append(idx)
            errors.extend(errs)
            bar.update(len(idx) + len(errs))
            if errors:
                bar.set_postfix(skipped=len(errors), refresh=False)
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
    ok_idx = np.concatenate(ok) if ok else np.zeros(0, np.int64)
    if errors:
        log.warning("%s: skipped %d of %d images that could not be read", desc, len(errors), n)
        for i, _, msg in errors:
            log.warning("skipped #%d %s", i, msg)
    return EmbedResult(np.ascontiguousarray(vectors, dtype=np.float32), ok_idx, errors)


__all__ = ["EmbedResult", "embed_items", "iter_embeddings", "default_workers", "release_buffers"]

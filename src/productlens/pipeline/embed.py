"""Embed many images: decoding overlaps with inference, bad images are skipped.

A small thread pool decodes and preprocesses images (Pillow, OpenCV and numpy
release the GIL) a bounded number of batches ahead, while the calling thread
runs the model batch by batch (``embedder.embed``). Images that cannot be read
(missing, corrupt, bad box...) are reported in ``errors`` and skipped; the rest
of the batch goes on.

>>> res = embed_items(embedder, paths)             # doctest: +SKIP
>>> res.vectors.shape, res.ok, res.errors          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from productlens.data.images import MIN_SIDE, load_image
from productlens.models.embedders.base import Preprocess
from productlens.progress import ITEM_REPORT, bar_disable
from productlens.types import Box, Item, ProductLensError

log = logging.getLogger(__name__)

#: Batches decoded ahead of the one being embedded (bounds memory: about
#: (PREFETCH + 1) * batch_size preprocessed images are alive at once; a
#: bundled model's are uint8 pixels, 200 kB each at 260 px).
PREFETCH = 2
#: The most decode threads :func:`default_workers` starts (each may hold a decoded full-size photo).
MAX_WORKERS = 8

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
    """Decode threads: ``$PRODUCTLENS_DECODE_WORKERS``, else one per core, at most ``MAX_WORKERS``.

    Decoding a small photo costs about a millisecond of one core, a 1000-px JPEG about 5 ms and a
    12 MP one about 30 ms even at an eighth of its size, against about 17 ms of core time of
    inference per photo (``efficientnet-lite2``). The inference threads do not spin, and a decode
    thread with nothing to do sleeps, so one thread per core costs the model nothing on small
    photos and lets decoding use every core on large ones (2 cores, ``benchmarks/bench_embed.py``,
    2026-12-07: one thread against two, 224-px photos 0.915 -> 0.935 of the bare model, 1000-px
    0.721 -> 0.817, 12 MP 0.251 -> 0.370; three or four threads no better than two).
    """
    from productlens.config import num_threads

    env = os.environ.get("PRODUCTLENS_DECODE_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(MAX_WORKERS, num_threads()))


def _load_into(preprocess: Preprocess, source: Any, box: Box | None, out: np.ndarray) -> None:
    """Decode ``source`` and write ``preprocess(image)`` into ``out`` (one row of a batch)."""
    if isinstance(source, Item):
        source, box = source.image, box if box is not None else source.box
    # a PIL image (a video frame, Image.open's) is taken as decoded: load_image turns it upright and crops it
    preprocess(load_image(source, box=box, target=preprocess.size, min_side=MIN_SIDE), out=out)


def _message(exc: BaseException, source: Any) -> str:
    if isinstance(exc, ProductLensError):
        return str(exc)
    name = source.image if isinstance(source, Item) else source
    if isinstance(name, (bytes, bytearray, memoryview)):
        name = "<bytes>"
    return f"{name}: {type(exc).__name__}: {exc}"


def inputs_per_image(embedder) -> int:
    """How many model inputs ``embedder`` runs per image: one per view for a multi-view embedder
    (:class:`~productlens.data.augment.PooledViewEmbedder`, ``StackedViewEmbedder``), else one."""
    return len(getattr(embedder.preprocess, "views", ())) or 1


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
    ``batch_size`` counts model inputs: an embedder that runs several views of each
    image (its preprocessing has ``views``) gets ``batch_size // views`` images a batch.
    Decode threads write each preprocessed image straight into its batch's
    array, up to ``PREFETCH`` batches ahead of the one the calling thread is
    embedding; the calling thread decodes the images nobody has started when it
    needs them (the first batch, or when decoding is the bottleneck) instead of
    waiting.
    """
    n = len(sources)
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"got {len(boxes)} boxes for {n} sources")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    preprocess = embedder.preprocess
    # count model inputs, so that a batch of seven-view photos is not seven batches of work between
    # two looks at the decoders
    batch_size = max(1, batch_size // inputs_per_image(embedder))
    pool = ThreadPoolExecutor(max_workers=workers or default_workers(),
                              thread_name_prefix="productlens-decode")
    pending: deque[tuple[int, np.ndarray, list[Future]]] = deque()
    next_start = 0

    def load(i: int, out: np.ndarray) -> None:
        _load_into(preprocess, sources[i], boxes[i] if boxes is not None else None, out)

    def submit_batch() -> None:
        nonlocal next_start
        start, stop = next_start, min(n, next_start + batch_size)
        batch = np.empty((stop - start, *preprocess.shape), preprocess.dtype)
        pending.append((start, batch, [pool.submit(load, i, batch[i - start]) for i in range(start, stop)]))
        next_start = stop

    try:
        while next_start < n and len(pending) <= PREFETCH:
            submit_batch()
        while pending:
            start, batch, futures = pending.popleft()
            if next_start < n:
                submit_batch()  # keep the decoders busy while this batch runs
            good, errors = [], []
            for j, fut in enumerate(futures):
                try:
                    if fut.cancel():  # not started (e.g. the first batch): decode it here
                        load(start + j, batch[j])
                    else:
                        fut.result()
                    good.append(j)
                except Exception as exc:  # one bad image must not stop a gallery
                    i = start + j
                    errors.append((i, sources[i], _message(exc, sources[i])))
            if errors:
                batch = batch[good]  # drop the failed rows
            vectors = embedder.embed(batch) if good else np.zeros((0, embedder.dim), np.float32)
            yield np.asarray(good, dtype=np.int64) + start, vectors, errors
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
    """Embed every image of ``sources`` (paths, URLs, bytes, PIL images or :class:`Item`).

    ``boxes[i]`` (optional) crops ``sources[i]``. Returns the L2-normalised
    vectors of the images that decoded, their indices, and the errors of those
    that did not (each also logged as a warning). ``workers``: decode threads
    (default: one per four cores). The progress bar shows only on a terminal.
    """
    from tqdm.auto import tqdm

    n = len(sources)
    chunks, ok, errors = [], [], []
    with tqdm(total=n, desc=desc, unit="img", disable=bar_disable(progress),
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
            log.warning("skipped #%d %s", i, msg, extra={ITEM_REPORT: True})
    return EmbedResult(np.ascontiguousarray(vectors, dtype=np.float32), ok_idx, errors)


__all__ = ["EmbedResult", "default_workers", "embed_items", "inputs_per_image", "iter_embeddings"]

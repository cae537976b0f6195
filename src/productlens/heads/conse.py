"""Concepts a photo shows, in the text space: ConSE on the backbone's ImageNet classifier.

ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic
Embeddings", ICLR 2014): a photo's ``top`` most probable ImageNet classes
(:mod:`productlens.models.classifiers.imagenet`) are averaged as text vectors
of their WordNet names, weighted by probability. The result can be compared by
cosine with any text, such as category names. It needs no training on a
catalog, so it names categories that no training photo shows as well as any
other ("banana", "bell pepper" and "lemon" are ImageNet classes, "milk" is
not); the image-text alignment (:mod:`productlens.heads.align`) knows the
catalog's own categories far better. :func:`mix` combines the two.

The class names (``imagenet_classes.txt``, one line per class in the model's
output order: the WordNet lemmas of the ImageNet-1k synsets) come from timm's
``imagenet_synset_to_lemma.txt`` (Apache-2.0; the names are WordNet's).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from productlens.types import ProductLensError

log = logging.getLogger(__name__)

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
TOP = 3  # classes averaged per photo (chosen on train photos only: 3 over 10)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, in the classifier's output order."""
    names = tuple(ln.strip() for ln in CLASSES_FILE.read_text(encoding="utf-8").splitlines() if ln.strip())
    if len(names) != 1000:
        raise ProductLensError(f"{CLASSES_FILE} should list 1000 ImageNet classes, found {len(names)}")
    return names


class Concepts:
    """Photos -> unit vectors in a text encoder's space, through the ImageNet classes they show."""

    def __init__(self, text_encoder: str | None = None, arch: str = "efficientnet-lite2", top: int = TOP) -> None:
        from productlens.models.classifiers.imagenet import imagenet_classifier
        from productlens.models.text import DEFAULT_TEXT_ENCODER, get_text_encoder

        if top < 1:
            raise ProductLensError("top must be at least 1")
        self.top = top
        self.classifier = imagenet_classifier(arch)
        self.text_encoder = get_text_encoder(text_encoder or DEFAULT_TEXT_ENCODER)
        self.class_vectors = _class_vectors(self.text_encoder)

    def from_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """ImageNet probabilities (N x 1000) -> unit text-space vectors (N x text dim)."""
        p = np.atleast_2d(np.asarray(probs, np.float32))
        idx = np.argsort(-p, axis=1, kind="stable")[:, :self.top]
        w = np.take_along_axis(p, idx, 1)
        v = np.einsum("nt,ntd->nd", w, self.class_vectors[idx])
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def embed(self, sources: Sequence[Any], *, progress: bool = False):
        """Embed photos (paths, URLs, bytes, PIL images or items): an
        :class:`~productlens.pipeline.embed.EmbedResult` of text-space vectors;
        unreadable photos are reported and skipped."""
        from productlens.pipeline.embed import EmbedResult, embed_items

        res = embed_items(self.classifier, list(sources), progress=progress, desc="ImageNet concepts")
        return EmbedResult(self.from_probabilities(res.vectors), res.ok, res.errors)


def _class_vectors(encoder) -> np.ndarray:
    """The class names' text vectors, cached on disk (encoding 1,000 names takes seconds)."""
    import hashlib

    from productlens.config import cache_dir
    from productlens.fileio import atomic_path

    digest = hashlib.sha256(CLASSES_FILE.read_bytes()).hexdigest()[:12]
    path = cache_dir() / "text" / f"imagenet-classes-{encoder.name.replace('/', '_')}-{digest}.npy"
    try:
        vecs = np.load(path)
        if vecs.shape[0] == 1000:
            return vecs
    except (OSError, ValueError):
        pass
    vecs = np.asarray(encoder.encode(list(imagenet_classes())), np.float32)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, vecs)
    except OSError as exc:  # a read-only cache costs time, not results
        log.warning("cannot cache the ImageNet class vectors in %s: %s", path, exc)
    return vecs


_CONCEPTS: dict[str, Concepts] = {}


def get_concepts(text_encoder: str | None = None) -> Concepts:
    """A process-wide shared :class:`Concepts` for ``text_encoder`` (the class names are encoded once)."""
    key = text_encoder or ""
    if key not in _CONCEPTS:
        _CONCEPTS[key] = Concepts(text_encoder)
    return _CONCEPTS[key]


def standardise(sims: np.ndarray) -> np.ndarray:
    """Each row (one photo's scores over the names) to mean 0, standard deviation 1; a row whose spread is
    below ``1e-6`` (cosines of names the model cannot tell apart, "Banana" and "banana": float32 noise) to 0,
    where the noise blown up to unit scale had ranked them 0.18 / 0.18 / -0.35."""
    s = np.asarray(sims, np.float64)
    sd = s.std(axis=1, keepdims=True)
    return np.where(sd > 1e-6, (s - s.mean(axis=1, keepdims=True)) / np.where(sd > 1e-6, sd, 1.0),
                    0.0).astype(np.float32)


def mix(aligned: np.ndarray, concepts: np.ndarray, weight: float) -> np.ndarray:
    """``standardise(aligned) + weight * standardise(concepts)``: two photos x names score tables in one.

    Standardising each photo's row puts the two cosines on one scale, since
    their spreads differ several-fold. ``weight`` 0 keeps the alignment's order.
    """
    if aligned.shape != concepts.shape:
        raise ValueError(f"score tables differ in shape: {aligned.shape} and {concepts.shape}")
    return standardise(aligned) + np.float32(weight) * standardise(concepts)

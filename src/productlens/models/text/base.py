"""The text-encoder contract: strings -> L2-normalised vectors."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from productlens.types import check_list


def clean_text(text: object) -> str:
    """One line of text: None -> "", whitespace collapsed, control characters dropped."""
    if text is None:
        return ""
    s = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return " ".join(s.split())


class TextEncoder:
    """Encodes strings (any script) into unit vectors of ``dim`` dimensions.

    ``encode_batch`` is the model: non-empty cleaned strings -> N x dim floats.
    Empty strings (after cleaning) get the zero vector: they carry no evidence,
    and their cosine with anything is 0.
    """

    def __init__(self, name: str, dim: int, encode_batch: Callable[[list[str]], np.ndarray],
                 batch_size: int = 64, revision: str = "") -> None:
        self.name = name
        self.dim = dim
        self.revision = revision  # the weights' version: a cache of the vectors is kept per name and revision
        self._encode_batch = encode_batch
        self.batch_size = batch_size

    def encode(self, texts: Sequence[object]) -> np.ndarray:
        """Encode texts (None and empty allowed) into an N x dim float32 array of unit (or zero) rows."""
        cleaned = [clean_text(t) for t in check_list(texts, "texts")]  # one str: a row per character
        out = np.zeros((len(cleaned), self.dim), np.float32)
        todo = [i for i, t in enumerate(cleaned) if t]
        for s in range(0, len(todo), self.batch_size):
            idx = todo[s:s + self.batch_size]
            v = np.asarray(self._encode_batch([cleaned[i] for i in idx]), np.float32)
            n = np.linalg.norm(v, axis=1, keepdims=True)
            out[idx] = v / np.maximum(n, 1e-12)
        return out

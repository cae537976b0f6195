"""A backbone joined with companion backbones that look at the whole image only.

An adapted search catalog embeds each query and training photo as a pooled
multi-region descriptor of its (usually fine-tuned) backbone: seven views, so
seven model runs per photo. Frozen companions, the other bundled backbones,
add what they learnt apart from it at the cost of one run on the whole image:

    vector = [main / sqrt(k), companions / sqrt(k) ...]   (k = 1 + companion backbones)

each part a unit vector before the weights, so the result is a unit vector
(:func:`productlens.models.embedders.ensemble.members_embedder` computes the
companions as one graph, at the main backbone's input size). On the
train-only development splits (``benchmarks/dev_finetune.py --companions``) the
companions on the whole photo gained as much as on all seven views, for
queries of products the backbone was not fine-tuned on.

A :class:`~productlens.data.augment.PooledViewEmbedder` around a joined
embedder pools the views through the main backbone only and runs the
companions on the first view (the whole image).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from productlens.models.embedders.base import Embedder, l2_normalize
from productlens.models.embedders.ensemble import MEMBERS, members_embedder
from productlens.types import ProductLensError


class JoinedEmbedder:
    """``main`` (any embedder) joined with ``companion`` (taking the same input batch)."""

    def __init__(self, main: Embedder, companion: Embedder, companion_count: int) -> None:
        mp, cp = main.preprocess, companion.preprocess
        if (mp.shape, mp.dtype, mp.resize) != (cp.shape, cp.dtype, cp.resize):
            raise ProductLensError(f"companion {companion.name} takes {cp.shape} {cp.resize} input, "
                                   f"not {main.name}'s {mp.shape} {mp.resize}")
        self.main = main
        self.companion = companion
        self.name = main.name
        self.dim = int(main.dim + companion.dim)
        self.preprocess = main.preprocess
        k = 1 + int(companion_count)
        self._w_main, self._w_comp = 1.0 / math.sqrt(k), math.sqrt((k - 1) / k)

    def join(self, main_vectors: np.ndarray, companion_vectors: np.ndarray) -> np.ndarray:
        """Unit main and companion vectors -> the joined unit vectors."""
        return np.concatenate([l2_normalize(main_vectors) * self._w_main,
                               l2_normalize(companion_vectors) * self._w_comp], axis=1).astype(np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed batch -> joined unit vectors (N x dim)."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.join(self.main.embed(batch), self.companion.embed(batch))

    def embed_images(self, images: list) -> np.ndarray:
        """PIL images -> joined unit vectors (N x dim); see :func:`~productlens.models.embedders.base.embed_decoded`."""
        from productlens.models.embedders.base import embed_decoded

        return embed_decoded(self, images)


def companions_for(backbone: str) -> list[str]:
    """The companions of a bundled backbone: the other bundled backbones.

    Raises ProductLensError for any other embedder (a user's ``onnx:`` model, an ensemble).
    """
    if backbone not in MEMBERS:
        raise ProductLensError(f"companions join a bundled backbone ({', '.join(MEMBERS)}), not {backbone!r}")
    return [m for m in MEMBERS if m != backbone]


def joined(main: Embedder, companions: Sequence[str]) -> Embedder | JoinedEmbedder:
    """``main`` joined with the bundled backbones ``companions`` (``main`` itself when there are none)."""
    names = list(companions)
    if not names:
        return main
    unknown = [n for n in names if n not in MEMBERS]
    if unknown or len(set(names)) != len(names):
        raise ProductLensError(f"companions must be different bundled backbones ({', '.join(MEMBERS)}), "
                               f"got {'+'.join(names)}")
    if not main.preprocess.uint8:
        raise ProductLensError(f"{main.name} takes normalised float input; companions need a model that "
                               "takes uint8 pixels like the bundled backbones")
    return JoinedEmbedder(main, members_embedder(names, input_size=main.preprocess.size), len(names))


__all__ = ["JoinedEmbedder", "companions_for", "joined"]

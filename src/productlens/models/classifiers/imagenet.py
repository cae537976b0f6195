"""The bundled backbone's own ImageNet-1k classifier, exported to ONNX.

EfficientNet-Lite2 (or -Lite0) whole: pixels -> the 1,000 ImageNet class
probabilities, with the classification layer the offline weight package ships.
productlens uses it as a source of visual concepts that need no training on a
catalog (:mod:`productlens.heads.conse`). The class names, in the model's
output order, are in ``productlens/heads/imagenet_classes.txt``.
"""

from __future__ import annotations

import numpy as np

from productlens.models.embedders.base import Embedder


class ImageNetClassifier(Embedder):
    """An :class:`Embedder` whose ``embed`` gives ImageNet class probabilities (N x 1000), not unit vectors.

    It runs through the same decoding pipeline as an embedder
    (:func:`productlens.pipeline.embed.embed_items`), so unreadable photos are
    reported and skipped the same way.
    """

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        logits = np.asarray(self.run(batch), np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def imagenet_classifier(arch: str = "efficientnet-lite2", threads: int | None = None) -> ImageNetClassifier:
    """Create ``arch``'s ImageNet classifier with its preprocessing (uint8 pixels, squashed to the input size).

    The ONNX export is cached beside the embedders' (``cache_dir()/onnx``), keyed by
    the weights' hash; exporting needs torch, running it only onnxruntime.
    """
    from productlens.models.embedders.efficientnet_lite import build_torch, preprocess, weights_path
    from productlens.models.embedders.export import cached_onnx

    pre = preprocess(arch)
    onnx = cached_onnx(f"{arch}-imagenet", weights_path(arch), lambda: build_torch(arch).net, pre, gem_p=None)
    return ImageNetClassifier(f"{arch}:imagenet", onnx, pre, threads=threads)

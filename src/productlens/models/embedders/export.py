"""Export a bundled torch backbone to ONNX once, cached by the hash of its weights.

The exported graph is the whole image model: uint8 RGB pixels (N x S x S x 3,
as :class:`~productlens.models.embedders.base.Preprocess` gives them with
``uint8=True``) -> per-channel normalisation -> backbone -> GeM pooling ->
N x C features. Doing the normalisation, the HWC->CHW transpose and the pooling
inside onnxruntime costs far less CPU than doing them in numpy.

The ONNX file lives in ``cache_dir()/onnx/<name>-<weights sha256[:16]>-gem<p>-v<N>.onnx``
(``-raw-`` in place of ``-gem<p>-`` for a model exported without pooling)
and is written to a temporary name and renamed, so an interrupted export never
leaves a broken model in the cache.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

from productlens.config import cache_dir, torch_threads
from productlens.fileio import atomic_path, file_hash
from productlens.models.embedders.base import Preprocess

EXPORT_VERSION = 2  # bump when the exported graph changes (2: uint8 NHWC input, GeM inside)


def file_sha256(path: Path) -> str:
    return file_hash(path, "sha256")


def image_model(backbone, preprocess: Preprocess, gem_p: float | None = 3.0, eps: float = 1e-6):
    """Wrap ``backbone`` (normalised N x 3 x S x S -> N x C x h x w) into the exported model.

    The result maps uint8 (or float 0..255) N x S x S x 3 RGB pixels to GeM-pooled
    N x C features: ``(x / 255 - mean) / std``, then the backbone, then
    ``mean(max(f, eps) ** p) ** (1 / p)`` over h x w (p = 1: average pooling;
    ``gem_p=None``: no pooling, the feature map itself).
    """
    import torch

    std = torch.tensor(preprocess.std, dtype=torch.float32)
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    shift = (-torch.tensor(preprocess.mean, dtype=torch.float32) / std).view(1, 3, 1, 1)

    class ImageModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.register_buffer("scale", scale)
            self.register_buffer("shift", shift)

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
            f = self.backbone(x)
            if gem_p is None:
                return f
            f = f.clamp(min=eps)
            if gem_p == 1.0:
                return f.mean(dim=(2, 3))
            return f.pow(gem_p).mean(dim=(2, 3)).pow(1.0 / gem_p)

    return ImageModel().eval()


def export_onnx(module, size: int, target: Path) -> Path:
    """Export an :func:`image_model` (uint8 N x size x size x 3 input) to ``target``, atomically."""
    return export_pixels_model(module, target, (size, size), ["features"],
                               {"pixels": {0: "batch"}, "features": {0: "batch"}})


def export_pixels_model(module, target: Path, size: tuple[int, int], outputs: list[str],
                        dynamic_axes: dict) -> Path:
    """Export ``module`` (uint8 ``pixels`` N x H x W x 3, traced at 1 x ``size`` x 3 -> ``outputs``) to
    ``target`` atomically: opset 17, the TorchScript exporter, torch on at most one thread per core."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    cores = min(torch.get_num_threads(), os.cpu_count() or 1)
    with torch_threads(cores), atomic_path(target) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constant folding are not the user's concern
        torch.onnx.export(module, (torch.zeros(1, *size, 3, dtype=torch.uint8),), str(tmp), input_names=["pixels"],
                          output_names=outputs, dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    return target


def cached_onnx(name: str, weights: Path, build: Callable[[], "object"], preprocess: Preprocess,
                gem_p: float | None = 3.0) -> Path:
    """Return the cached ONNX export of ``image_model(build(), preprocess, gem_p)``, exporting if needed.

    ``build`` returns the eval-mode torch module mapping normalised
    N x 3 x size x size to its last feature map (or, with ``gem_p=None``, to
    whatever it outputs, e.g. class logits); it is only called (and torch only
    imported) on a cache miss.
    """
    digest = file_sha256(weights)[:16]
    pooling = "raw" if gem_p is None else f"gem{gem_p:g}"
    target = cache_dir() / "onnx" / f"{name}-{digest}-{pooling}-v{EXPORT_VERSION}.onnx"
    if target.exists():
        return target
    return export_onnx(image_model(build(), preprocess, gem_p), preprocess.size, target)

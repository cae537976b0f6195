"""Export a torch backbone to ONNX once, cached by the hash of its weights.

The ONNX file lives in ``cache_dir()/onnx/<name>-<weights sha256[:16]>-v<N>.onnx``
and is written to a temporary name and renamed, so an interrupted export never
leaves a broken model in the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from productlens.config import cache_dir
from productlens.fileio import atomic_path

EXPORT_VERSION = 1  # bump when the exported graph changes


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_onnx(name: str, weights: Path, build: Callable[[], "object"], size: int) -> Path:
    """Return the cached ONNX export of ``build()`` (a torch module), exporting if needed.

    ``build`` returns an eval-mode torch module mapping N x 3 x size x size to
    the model's output; it is only called (and torch only imported) on a cache miss.
    """
    digest = file_sha256(weights)[:16]
    target = cache_dir() / "onnx" / f"{name}-{digest}-v{EXPORT_VERSION}.onnx"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    module = build()
    with atomic_path(target) as tmp, torch.no_grad():
        torch.onnx.export(
            module, (torch.zeros(1, 3, size, size),), str(tmp), input_names=["image"],
            output_names=["features"], dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    return target

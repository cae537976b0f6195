"""Image embedders, created by name with their preprocessing.

>>> from productlens.models.embedders import create_embedder, list_embedders
>>> emb = create_embedder("efficientnet-lite2")      # doctest: +SKIP
>>> vecs = emb.embed_images([pil_image])             # doctest: +SKIP

Names: ``efficientnet-lite2`` (default), ``efficientnet-lite0``, ``mobilenetv2``,
``ensemble:A+B+...`` for several of them concatenated (the classifier's default,
see :mod:`~productlens.models.embedders.ensemble`), and ``onnx:PATH`` for a
user's own ONNX model. Bundled backbones are exported
to ONNX on first use (needs the ``torch`` extra) and cached by weight hash.
"""

from __future__ import annotations

import os
from pathlib import Path

from productlens.models.embedders.base import Embedder, Preprocess
from productlens.registry import Registry
from productlens.types import ProductLensError

EMBEDDERS = Registry("embedder")
EMBEDDERS.register("efficientnet-lite2", "productlens.models.embedders.efficientnet_lite:efficientnet_lite2")
EMBEDDERS.register("efficientnet-lite0", "productlens.models.embedders.efficientnet_lite:efficientnet_lite0")
EMBEDDERS.register("mobilenetv2", "productlens.models.embedders.mobilenetv2:mobilenetv2")
EMBEDDERS.register_prefix("onnx", "productlens.models.embedders.onnx_file:onnx_model")
EMBEDDERS.register_prefix("ensemble", "productlens.models.embedders.ensemble:ensemble")

_CACHE: dict[str, Embedder] = {}


def create_embedder(name: str = "efficientnet-lite2", **kwargs) -> Embedder:
    """Create the embedder registered as ``name`` (see module docstring for names).

    Keyword arguments go to :class:`Embedder` (``gem_p``, ``threads``).
    Raises ProductLensError (:class:`~productlens.registry.UnknownName`, also a KeyError) for an unknown
    name, and for a bad ONNX file.
    """
    return EMBEDDERS.create(name, **kwargs)


def get_embedder(name: str = "efficientnet-lite2") -> Embedder:
    """A process-wide shared instance (one model per process). A user's ``onnx:PATH`` model is
    loaded again once its file or its preprocessing JSON changes (a long-running server or notebook
    never pairs a replaced model with vectors made by the old one)."""
    key = _cache_key(name)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k.startswith(name + "|")]:  # the same file, before it changed
            del _CACHE[old]
        _CACHE[key] = create_embedder(name)
    return _CACHE[key]


def _cache_key(name: str) -> str:
    """``name``, plus for an ``onnx:`` model the size and time of its file and of its JSON."""
    if not name.startswith("onnx:"):
        return name
    from productlens.models.embedders.onnx_file import preprocess_file

    model = Path(name[5:]).expanduser()
    try:
        stats = [f.stat() for f in (model, preprocess_file(model))]
    except (OSError, ProductLensError):  # missing: create_embedder says so
        return name
    return name + "|" + "|".join(f"{st.st_size}:{st.st_mtime_ns}" for st in stats)


def local_model_path(name: str, folder: str | os.PathLike[str] | None) -> Path | None:
    """The model file of a relative ``onnx:PATH`` name, relative to ``folder`` (a catalog or
    classifier folder that carries its own fine-tuned backbone); None for any other name."""
    if not name.startswith("onnx:") or Path(name[5:]).expanduser().is_absolute():
        return None
    if folder is None:
        raise ProductLensError(f"embedder {name} is relative to a model folder; open it from its folder")
    return Path(folder) / name[5:]


def embedder_in_folder(name: str, folder: str | os.PathLike[str] | None) -> Embedder:
    """The embedder recorded in a folder: a relative ``onnx:`` model inside it is loaded afresh
    (a retrain may have replaced it), any other name comes from the process-wide cache."""
    local = local_model_path(name, folder)
    return create_embedder(f"onnx:{local}") if local is not None else get_embedder(name)


def list_embedders() -> list[str]:
    return EMBEDDERS.names()


__all__ = ["Embedder", "Preprocess", "create_embedder", "embedder_in_folder", "get_embedder", "list_embedders",
           "local_model_path", "EMBEDDERS"]

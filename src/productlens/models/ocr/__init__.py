"""Optical character recognition: the print on packages -> words.

>>> from productlens.models.ocr import create_ocr
>>> ocr = create_ocr()                      # doctest: +SKIP
>>> [w.text for w in ocr.read(pil_image)]   # doctest: +SKIP
['BRAVO', 'APPLE']

Names: ``rapidocr`` (default; PP-OCRv4 detection and recognition run with
onnxruntime by ``rapidocr-onnxruntime``, needs the ``text`` extra).
"""

from __future__ import annotations

from productlens.models.ocr.base import OCR, Word
from productlens.registry import Registry

DEFAULT_OCR = "rapidocr"

OCR_ENGINES = Registry("OCR engine")
OCR_ENGINES.register("rapidocr", "productlens.models.ocr.rapid:rapidocr")

_CACHE: dict[str, OCR] = {}


def create_ocr(name: str = DEFAULT_OCR, **kwargs) -> OCR:
    """Create the OCR engine registered as ``name`` (ProductLensError when its package is missing)."""
    return OCR_ENGINES.create(name, **kwargs)


def get_ocr(name: str = DEFAULT_OCR) -> OCR:
    """A process-wide shared instance."""
    if name not in _CACHE:
        _CACHE[name] = create_ocr(name)
    return _CACHE[name]


__all__ = ["DEFAULT_OCR", "OCR", "OCR_ENGINES", "Word", "create_ocr", "get_ocr"]

"""RapidOCR: PP-OCRv4 text detection + recognition on onnxruntime (package ``rapidocr-onnxruntime``)."""

from __future__ import annotations

import numpy as np

from productlens.config import num_threads
from productlens.models.ocr.base import OCR, Word
from productlens.types import ProductLensError


def rapidocr(threads: int | None = None, min_score: float = 0.5, det_side: int = 736) -> OCR:
    """Create the RapidOCR engine.

    ``det_side``: the detector resizes the image's shorter side to this many
    pixels (the package's default, 736); smaller is faster and misses small print.
    """
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        raise ProductLensError(f"OCR needs the 'text' extra (pip install 'productlens[text]'): {e}") from None
    n = threads or num_threads()
    engine = RapidOCR(intra_op_num_threads=n, inter_op_num_threads=1, det_limit_side_len=det_side)

    def read_array(arr: np.ndarray) -> list[Word]:
        result, _ = engine(arr[:, :, ::-1].copy())  # the engine takes OpenCV's BGR order
        words = []
        for quad, text, score in result or ():
            q = np.asarray(quad, np.float32)
            words.append(Word(str(text), float(score), (float(q[:, 0].min()), float(q[:, 1].min()),
                                                        float(q[:, 0].max()), float(q[:, 1].max()))))
        return words

    return OCR("rapidocr", read_array, min_score=min_score)

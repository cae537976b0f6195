"""RapidOCR: PP-OCRv4 text detection + recognition on onnxruntime (package ``rapidocr-onnxruntime``)."""

from __future__ import annotations

import numpy as np

from productlens.config import num_threads
from productlens.models.ocr.base import OCR, Word
from productlens.types import ProductLensError

MAX_ASPECT = 8  # longer side over shorter side the detector is given (a thinner image is padded with white)


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
        h, w = arr.shape[:2]
        if max(h, w) > MAX_ASPECT * min(h, w):  # a banner: the detector's resize of its short side to det_side
            # made the long one too large to resize (ResizeImgError); white below or to the right keeps the
            # words where they are
            padded = np.full((max(h, -(-w // MAX_ASPECT)), max(w, -(-h // MAX_ASPECT)), 3), 255, np.uint8)
            padded[:h, :w] = arr
            arr = padded
        result, _ = engine(arr[:, :, ::-1].copy())  # the engine takes OpenCV's BGR order
        words = []
        for quad, text, score in result or ():
            q = np.asarray(quad, np.float32)
            words.append(Word(str(text), float(score), (float(q[:, 0].min()), float(q[:, 1].min()),
                                                        float(q[:, 0].max()), float(q[:, 1].max()))))
        return words

    return OCR("rapidocr", read_array, min_score=min_score)

"""The OCR contract: an RGB image -> the words printed in it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from productlens.progress import ITEM_REPORT, bar_disable
from productlens.types import ProductLensError

log = logging.getLogger(__name__)


class OCRError(ProductLensError):
    """The OCR engine failed on an image."""


@dataclass(frozen=True)
class Word:
    """One recognised line or word: its text, confidence in [0, 1] and box (x0, y0, x1, y1) in pixels."""

    text: str
    score: float
    box: tuple[float, float, float, float]


class OCR:
    """Reads text from images; ``min_score`` drops low-confidence recognitions."""

    def __init__(self, name: str, read_array: Callable[[np.ndarray], list[Word]], min_score: float = 0.5) -> None:
        self.name = name
        self._read_array = read_array
        self.min_score = min_score

    def read(self, image: Image.Image) -> list[Word]:
        """The words in ``image`` (a decoded PIL image), best-effort; raises OCRError when the engine fails."""
        from productlens.data.images import to_rgb

        if not isinstance(image, Image.Image):
            raise OCRError(f"OCR.read takes a decoded PIL image, got {type(image).__name__} (for files: read_many, "
                           "or productlens.data.images.load_image)")
        arr = np.asarray(to_rgb(image))  # transparent print on white, as load_image puts it
        if arr.shape[0] < 8 or arr.shape[1] < 8:
            return []
        try:
            words = self._read_array(arr)
        except Exception as e:  # the engine's own errors, whatever their type ("failed: " alone had said nothing)
            raise OCRError(f"OCR ({self.name}) failed on a {arr.shape[1]}x{arr.shape[0]} image: "
                           f"{type(e).__name__}: {e}") from e
        return [w for w in words if w.score >= self.min_score and w.text.strip()]

    def read_many(self, sources: Sequence[Any], *, progress: bool = False, desc: str = "OCR"
                  ) -> tuple[list[list[Word] | None], list[tuple[int, Any, str]]]:
        """OCR a batch of images (paths, bytes or PIL images); a bad item is reported and skipped.

        Returns (words per item, None for a skipped one; errors as (index, source, message)).
        """
        from tqdm import tqdm

        from productlens.data.images import MIN_SIDE, load_image

        out: list[list[Word] | None] = []
        errors: list[tuple[int, Any, str]] = []
        for i, src in enumerate(tqdm(sources, desc=desc, unit="image", disable=bar_disable(progress))):
            try:
                img = src if isinstance(src, Image.Image) else load_image(src, min_side=MIN_SIDE)  # 1x1: named
                try:
                    out.append(self.read(img))
                except OCRError as e:  # the engine's message does not name the file
                    raise OCRError(f"{src if not isinstance(src, Image.Image) else f'image #{i}'}: {e}") from e
            except ProductLensError as e:
                log.warning("skipped #%d %s", i, e, extra={ITEM_REPORT: True})  # the message names the file
                errors.append((i, src, str(e)))
                out.append(None)
        return out, errors


def words_text(words: Sequence[Word] | None) -> str:
    """The recognised words joined into one string (empty for None)."""
    return " ".join(w.text for w in words or ())

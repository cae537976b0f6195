"""The font for text drawn on images (tags on detections, captions on contact sheets).

Pillow's built-in font covers Latin only, so tags and titles in other scripts
would come out as empty boxes. ``font(size)`` takes the first of: Noto Sans CJK
(Chinese, Japanese, Korean and Latin; where the system has it), DejaVu Sans
(Latin, Greek, Cyrillic, Arabic; shipped with matplotlib and most Linux systems),
Pillow's default.
"""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import ImageFont

_SYSTEM = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
           "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
           "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
           "/usr/share/fonts/TTF/DejaVuSans.ttf")


@functools.lru_cache(maxsize=1)
def _font_file() -> str | None:
    candidates = list(_SYSTEM[:2])
    try:
        import matplotlib

        candidates.append(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"))
    except ImportError:  # the plot extra is optional
        pass
    candidates += _SYSTEM[2:]
    return next((c for c in candidates if Path(c).is_file()), None)


@functools.lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` pixels for ``ImageDraw.text`` (see the module docstring for which)."""
    path = _font_file()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()

"""The font for text drawn on images (tags on detections, captions on contact sheets).

Pillow's built-in font covers Latin only, so tags and titles in other scripts
would come out as empty boxes. ``font(size, text)`` takes the first of: Noto Sans CJK
(Chinese, Japanese, Korean and Latin; where the system has it), DejaVu Sans
(Latin, Greek, Cyrillic, Arabic; shipped with matplotlib and most Linux systems),
Pillow's default. When ``text`` has characters that font lacks (Thai, say), the
system's other fonts are searched for one that has them all (their character maps
read with fontTools); where none has, the text is drawn anyway, as boxes, and a
warning says which characters and how to get a font for them. The results keep
the text itself: only the picture lacks it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import unicodedata
from pathlib import Path

from PIL import ImageFont

log = logging.getLogger(__name__)

_SYSTEM = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
           "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
           "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
           "/usr/share/fonts/TTF/DejaVuSans.ttf")
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
              "/Library/Fonts", "/System/Library/Fonts", "~/Library/Fonts",
              os.path.join(os.environ.get("WINDIR", "C:/Windows"), "Fonts"))
_FONT_SUFFIXES = {".ttf", ".otf", ".ttc"}


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


@functools.lru_cache(maxsize=1)
def _other_files() -> tuple[str, ...]:
    """The system's font files, regular sans faces first (searched only for characters the default lacks)."""
    found = set()
    for d in _FONT_DIRS:
        root = Path(d).expanduser()
        if root.is_dir():
            found.update(str(f) for f in root.rglob("*") if f.suffix.lower() in _FONT_SUFFIXES and f.is_file())

    def rank(path: str) -> tuple:
        name = Path(path).stem.lower()
        styled = any(s in name for s in ("bold", "italic", "oblique", "light", "thin", "black", "mono", "condensed"))
        return styled, "sans" not in name, "noto" not in name, path

    return tuple(sorted(found, key=rank))


@functools.lru_cache(maxsize=8)  # the default's and the fallbacks' in use; a search does not keep every map
def _characters(path: str) -> frozenset[int]:
    """The code points ``path``'s font has glyphs for (its first face); empty if fontTools cannot read it."""
    try:
        from fontTools.ttLib import TTFont

        with TTFont(path, fontNumber=0, lazy=True) as f:
            return frozenset((f.getBestCmap() or {}).keys())
    except Exception:  # noqa: BLE001 - a broken or unusual font file is just not a candidate
        return frozenset()


#: Characters no font search is made for: pictographs and emoji (Pillow draws no colour emoji; a title with one
#: would otherwise read the character map of every font on the system), format and private-use characters.
_UNSEARCHED = {"So", "Cf", "Co", "Cs", "Cn", "Cc"}


def _needed(text: str) -> frozenset[int]:
    return frozenset(ord(c) for c in text if not c.isspace() and unicodedata.category(c) not in _UNSEARCHED
                     and not 0xFE00 <= ord(c) <= 0xFE0F)  # variation selectors (emoji presentation)


@functools.lru_cache(maxsize=256)
def _file_for(needed: frozenset[int]) -> tuple[str | None, bool]:
    """(The default font file if it has every character of ``needed``, else the first system font that has
    them all, else the default; whether that font has them all)."""
    default = _font_file()
    if importlib.util.find_spec("fontTools") is None:  # a dependency; without it the default draws everything
        return default, True
    if not needed or (default is not None and needed <= _characters(default)):
        return default, True
    for path in _other_files()[:MAX_SCANNED]:
        if needed <= _characters(path):
            return path, True
    return default, False


#: Fonts whose character maps are read, at most, for one text (regular sans faces first): a system with the
#: whole Noto set holds over a thousand files.
MAX_SCANNED = 300


_WARNED: set[frozenset[int]] = set()


@functools.lru_cache(maxsize=64)
def _truetype(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def font(size: int, text: str = "") -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` pixels for ``ImageDraw.text`` that can draw ``text`` (all the text that will be drawn
    with it; see the module docstring for which font)."""
    needed = _needed(text)
    path, complete = _file_for(needed)
    if not complete and needed not in _WARNED:
        _WARNED.add(needed)
        lacking = needed - (_characters(path) if path else frozenset())
        shown = "".join(dict.fromkeys(c for c in text if ord(c) in lacking))
        log.warning("no installed font has the characters %r: they are drawn as boxes (the results' text keeps "
                    "them). Install a font for that script, e.g. Noto (Debian: fonts-noto-core, fonts-noto-cjk)",
                    shown[:20])
    return _truetype(path, size)

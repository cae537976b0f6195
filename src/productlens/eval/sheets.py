"""Contact sheets: results to look at rather than read, as one PNG of captioned thumbnails.

``contact_sheet(rows, path)`` lays out rows of :class:`Tile` s left to right. A
tile is an image (a path, URL, bytes, or an already drawn PIL image), an optional
box drawn on it, a caption of up to two lines and a border colour (``RIGHT``
green, ``WRONG`` red, ``FLAG`` orange). An image that cannot be read becomes a
grey tile that says so: one bad file never costs the whole sheet. Pillow only.

The evaluation commands build on it: ``eval retrieval --plot`` (each query and
its top results), ``eval detect --plot`` (test photos with their ground truth
and detections) and ``audit labels --plot`` (the flagged photos with their given
and suggested labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from productlens.fileio import atomic_path
from productlens.types import Box, InvalidBox, ProductLensError

RIGHT = (34, 150, 60)
WRONG = (205, 40, 40)
FLAG = (235, 140, 0)
_BOX = (255, 200, 0)
_GREY = (200, 200, 200)
_CAPTION_LINES = 2


@dataclass(frozen=True)
class Tile:
    """One thumbnail: ``source`` (path, URL, bytes or PIL image), ``caption`` ("\\n" splits
    its two lines), ``border`` (an RGB colour or None) and ``box`` (drawn, original pixels)."""

    source: Any
    caption: str = ""
    border: tuple[int, int, int] | None = None
    box: Box | None = None


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fit(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def thumbnail(tile: Tile, size: int) -> Image.Image:
    """The tile's image shrunk into a ``size`` x ``size`` white square, box drawn; a grey
    square naming the problem when the image cannot be read."""
    from productlens.data.images import load_image
    from productlens.types import ImageError

    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    try:
        img = tile.source if isinstance(tile.source, Image.Image) else load_image(tile.source, target=size)
    except (ImageError, OSError) as exc:
        canvas.paste(_GREY, (0, 0, size, size))
        draw = ImageDraw.Draw(canvas)
        font = _font(max(9, size // 14))
        words, lines = str(exc).split(), [""]
        for w in words:  # wrap the message
            if draw.textlength(f"{lines[-1]} {w}", font=font) > size - 8 and lines[-1]:
                lines.append(w)
            else:
                lines[-1] = f"{lines[-1]} {w}".strip()
        draw.multiline_text((4, 4), "\n".join(["unreadable:"] + lines[:8]), fill=(60, 60, 60), font=font)
        return canvas
    img = img.convert("RGB")
    f = size / max(img.size)
    small = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
    x0, y0 = (size - small.width) // 2, (size - small.height) // 2
    canvas.paste(small, (x0, y0))
    b = tile.box
    if b is not None and not isinstance(b, InvalidBox) and b.w > 0 and b.h > 0:
        draw = ImageDraw.Draw(canvas)
        draw.rectangle((x0 + b.x * f, y0 + b.y * f, x0 + (b.x + b.w) * f, y0 + (b.y + b.h) * f),
                       outline=_BOX, width=max(2, size // 80))
    return canvas


def sheet_path(path: str | Path) -> Path:
    """``path`` as a Path if a sheet can be written there (.png or .jpg, not a folder); checked
    before long work starts, so a typo does not cost the run."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ProductLensError(f"{path}: a sheet is written as .png or .jpg")
    if path.is_dir():
        raise ProductLensError(f"{path} is a folder; give a file name ending in .png")
    return path


def chart_path(path: str | Path) -> Path:
    """``path`` as a Path if a chart (always PNG) can be written there; checked before long work."""
    path = sheet_path(path)
    if path.suffix.lower() != ".png":
        raise ProductLensError(f"{path}: a chart is written as .png")
    return path


def contact_sheet(rows: Sequence[Sequence[Tile]], path: str | Path, *, title: str = "", size: int = 160) -> Path:
    """Write ``rows`` of tiles as one image at ``path`` (PNG or JPEG, from the suffix), atomically.

    Each tile is a ``size`` pixel thumbnail with its border and a caption of up to
    two lines below it; rows may differ in length. Returns ``path``.
    """
    path = sheet_path(path)
    if not rows or not any(rows):
        raise ProductLensError("nothing to draw: the sheet has no tiles")
    pad, border = 8, max(3, size // 40)
    font = _font(max(10, size // 13))
    line_h = font.getbbox("Ag")[3] + 3
    cell_w, cell_h = size + 2 * border + pad, size + 2 * border + _CAPTION_LINES * line_h + pad
    head = line_h + 2 * pad if title else pad
    width = pad + cell_w * max(len(r) for r in rows)
    sheet = Image.new("RGB", (width, head + cell_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), _fit(title, draw, font, width - 2 * pad), fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            x, y = pad + c * cell_w, head + r * cell_h
            if tile.border is not None:
                draw.rectangle((x, y, x + size + 2 * border - 1, y + size + 2 * border - 1), fill=tile.border)
            sheet.paste(thumbnail(tile, size), (x + border, y + border))
            for i, line in enumerate(tile.caption.split("\n")[:_CAPTION_LINES]):
                draw.text((x, y + size + 2 * border + 2 + i * line_h), _fit(line, draw, font, size + 2 * border),
                          fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG" if path.suffix.lower() == ".png" else "JPEG", quality=90)
    return path

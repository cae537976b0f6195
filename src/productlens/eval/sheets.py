"""Contact sheets: results to look at rather than read, as one PNG of captioned thumbnails.

``contact_sheet(rows, path)`` lays out rows of :class:`Tile` s left to right. A
tile is an image (a path, URL, bytes, or an already drawn PIL image), an optional
box drawn on it, a caption of up to two lines and a border colour (``RIGHT``
green, ``WRONG`` red, ``FLAG`` orange). An image that cannot be read becomes a
grey tile that says so: one bad file never costs the whole sheet. Pillow only.

The commands build on it: ``eval retrieval --plot`` (each query and its top
results), ``eval detect --plot`` (test photos with their ground truth and
detections), ``audit labels --plot`` (the flagged photos with their given and
suggested labels), ``search --plot`` and ``demo`` (``make run``'s demo.png).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from productlens import fonts
from productlens.fileio import atomic_path, check_output_file
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


def _fit(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels; words longer than a line (paths) are split."""
    lines, line = [], ""
    for word in text.split():
        pieces = []
        while len(word) > 1 and draw.textlength(word, font=font) > width:
            cut = 1
            while cut < len(word) and draw.textlength(word[:cut + 1], font=font) <= width:
                cut += 1
            pieces.append(word[:cut])
            word = word[cut:]
        for piece in pieces + [word]:
            if line and draw.textlength(f"{line} {piece}", font=font) > width:
                lines.append(line)
                line = piece
            else:
                line = f"{line} {piece}".strip()
    return lines + [line] if line else lines


def _unreadable(tile: Tile, exc: Exception, size: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), _GREY)
    draw = ImageDraw.Draw(canvas)
    name = Path(str(tile.source)).name if isinstance(tile.source, (str, Path)) else "image"
    font = fonts.font(max(9, size // 14), f"unreadable: {name} {exc}")
    lines = ["unreadable:"] + _wrap(name, draw, font, size - 8) + _wrap(str(exc), draw, font, size - 8)
    draw.multiline_text((4, 4), "\n".join(lines[:10]), fill=(60, 60, 60), font=font)
    return canvas


def thumbnail(tile: Tile, size: int) -> Image.Image:
    """The tile's image shrunk into a ``size`` x ``size`` white square, box drawn; a grey
    square naming the file and the problem when the image cannot be read."""
    from productlens.data.images import image_size, load_image
    from productlens.types import ImageError

    try:
        if isinstance(tile.source, Image.Image):
            img, original = tile.source, tile.source.size
        else:  # JPEGs shrink while decoding: the box is scaled from the original size
            img = load_image(tile.source, target=size)
            original = image_size(tile.source) if tile.box is not None else img.size
    except (ImageError, OSError) as exc:
        return _unreadable(tile, exc, size)
    img = img.convert("RGB")
    f = size / max(img.size)
    small = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    x0, y0 = (size - small.width) // 2, (size - small.height) // 2
    canvas.paste(small, (x0, y0))
    b = tile.box
    if b is not None and not isinstance(b, InvalidBox) and b.w > 0 and b.h > 0:
        fx, fy = small.width / original[0], small.height / original[1]
        ImageDraw.Draw(canvas).rectangle((x0 + b.x * fx, y0 + b.y * fy, x0 + (b.x + b.w) * fx, y0 + (b.y + b.h) * fy),
                                         outline=_BOX, width=max(2, size // 80))
    return canvas


def placeholder(text: str) -> list[list[Tile]]:
    """The rows of a sheet with nothing to show: one blank tile saying ``text``."""
    return [[Tile(Image.new("RGB", (8, 8), (255, 255, 255)), text)]]


#: What the pictures productlens draws say they are (PNG text / EXIF "Software"): a file that does not say so
#: is never replaced by one (it may be a photo the command reads).
SOFTWARE = "productlens"


def drawn_here(path: str | Path) -> bool:
    """Whether ``path`` is a picture productlens drew (a sheet or chart, by its "Software" mark)."""
    try:
        with Image.open(path) as im:
            mark = im.info.get("Software") or im.getexif().get(0x0131) or ""
    except Exception:  # noqa: BLE001 - not an image we can read: not ours
        return False
    return str(mark).startswith(SOFTWARE)


def sheet_path(path: str | Path) -> Path:
    """``path`` as a Path if a sheet can be written there (.png or .jpg, not a folder, and not a file
    productlens did not draw: a photo, say); checked before long work starts, so a typo does not cost the run."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ProductLensError(f"{path}: a sheet is written as .png or .jpg")
    if path.is_file() and not drawn_here(path):
        raise ProductLensError(f"{path} exists and is not a picture productlens drew (a photo?): it is never "
                               "replaced; name a new file, or remove it first")
    return check_output_file(path)


def chart_path(path: str | Path) -> Path:
    """``path`` as a Path if a chart (always PNG) can be written there; checked before long work."""
    if Path(path).suffix.lower() != ".png":
        raise ProductLensError(f"{path}: a chart is written as .png")
    return sheet_path(path)


def save_chart(fig: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG at ``path``, atomically, and close it; a failed
    write is a ProductLensError naming ``path``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": SOFTWARE})
    except OSError as exc:
        raise ProductLensError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
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
    font = fonts.font(max(10, size // 13), title + "".join(t.caption for row in rows for t in row))
    line_h = font.getbbox("Ag")[3] + 3
    cell_w, cell_h = size + 2 * border + pad, size + 2 * border + _CAPTION_LINES * line_h + pad
    width = pad + cell_w * max(len(r) for r in rows)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    head_lines = _wrap(title, measure, font, max(width, 640) - 2 * pad) if title else []
    if head_lines:  # a narrow sheet widens to show its title, up to 640 pixels
        width = max(width, 2 * pad + max(round(measure.textlength(line, font=font)) for line in head_lines))
    head = len(head_lines) * line_h + 2 * pad if head_lines else pad
    sheet = Image.new("RGB", (width, head + cell_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(head_lines):
        draw.text((pad, pad + i * line_h), line, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            x, y = pad + c * cell_w, head + r * cell_h
            if tile.border is not None:
                draw.rectangle((x, y, x + size + 2 * border - 1, y + size + 2 * border - 1), fill=tile.border)
            sheet.paste(thumbnail(tile, size), (x + border, y + border))
            for i, line in enumerate(tile.caption.split("\n")[:_CAPTION_LINES]):
                draw.text((x, y + size + 2 * border + 2 + i * line_h), _fit(line, draw, font, size + 2 * border),
                          fill=(0, 0, 0), font=font)
    try:
        with atomic_path(path) as tmp:
            if path.suffix.lower() == ".png":
                info = PngImagePlugin.PngInfo()
                info.add_text("Software", SOFTWARE)
                sheet.save(tmp, format="PNG", pnginfo=info)
            else:
                exif = Image.Exif()
                exif[0x0131] = SOFTWARE
                sheet.save(tmp, format="JPEG", quality=90, exif=exif)
    except OSError as exc:
        raise ProductLensError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path

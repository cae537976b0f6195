"""Robust image decoding: files, URLs or bytes to an RGB ``PIL.Image``.

Every failure raises :class:`~productlens.types.ImageError` naming the source.
Boxes are given in the coordinates of the image as a person sees it (after the
EXIF orientation is applied), in original pixels.
"""

from __future__ import annotations

import io
import math
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from productlens.types import Box, BoxError, ImageError, InvalidBox

Source = Union[str, "os.PathLike[str]", bytes]

#: Seconds to wait for an image URL, and the most bytes read from one.
URL_TIMEOUT = 30.0
MAX_URL_BYTES = 64 * 1024 * 1024

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that turns stored pixels into what a person sees.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Images (or box crops) with a side shorter than this many pixels are refused for
#: embedding: a 1x1 placeholder or a sliver shows no product, and its vector would
#: match everything alike.
MIN_SIDE = 8
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_WHITE = (255, 255, 255)


def load_image(
    source: Source,
    *,
    box: Box | None = None,
    target: int | None = None,
    max_pixels: int = 100_000_000,
    min_side: int = 0,
) -> Image.Image:
    """Decode ``source`` (path, ``http(s)://``/``file://`` URL, bytes, or a PIL image) to an RGB image.

    ``box`` (original, EXIF-oriented pixels) is clipped to the image and cropped.
    ``target`` lets JPEGs shrink while decoding (Pillow's ``draft``) by the largest
    power-of-two factor that keeps the cropped region at least ``target`` pixels on
    both sides; the result is not resized to ``target``. Images with more than
    ``max_pixels`` pixels are refused from the header, before decoding; Pillow's own
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is enforced too.
    A result (after the crop) with a side under ``min_side`` pixels is refused
    (:data:`MIN_SIDE` is the bar for embedding). A PIL image is taken as decoded: turned upright by
    its EXIF orientation if it comes straight from ``Image.open``, made RGB, cropped to ``box``.
    """
    if isinstance(source, Image.Image):
        img = decoded_rgb(source)
        raw_box = _clip_box(box, img.size, 1, "<image>")
        if raw_box is not None:
            img = img.crop(_scaled_crop(raw_box, 1.0, img.size))
        return big_enough(img, "<image>", min_side)
    if isinstance(box, InvalidBox) and isinstance(source, str) and not source:
        raise ImageError(box.reason)  # a manifest row that names no photo (read_queries): its file and line
    name, fp = _open_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_image(fp, name) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{name}: {width}x{height} image has more than {max_pixels} pixels"
                    )
                orientation = _header_orientation(img)
                raw_box = _clip_box(box, (width, height), orientation, name)
                scale = _draft(img, raw_box, (width, height), int(target)) if target else 1.0
                _decode(img, name)
                decoded_orientation = _orientation(img)  # PNG may keep EXIF after the pixels
                if decoded_orientation != orientation:
                    orientation = decoded_orientation
                    raw_box = _clip_box(box, (width, height), orientation, name)
                out = img
                if raw_box is not None:
                    out = img.crop(_scaled_crop(raw_box, scale, img.size))
                if orientation in _TRANSPOSE:
                    out = out.transpose(_TRANSPOSE[orientation])
                return big_enough(to_rgb(out), name, min_side)
    except (ImageError, BoxError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: decompression bomb refused ({exc})") from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageError(
            f"{name}: image exceeds PIL.Image.MAX_IMAGE_PIXELS ({exc})"
        ) from exc
    except Exception as exc:  # Pillow plugins raise many types on corrupt data
        raise ImageError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def big_enough(img: Image.Image, name: str | None, min_side: int = MIN_SIDE) -> Image.Image:
    """``img`` itself, or :class:`ImageError` naming ``name`` (when given) if a side is under ``min_side`` pixels."""
    if min(img.size) < min_side:
        w, h = img.size
        why = f"{w}x{h} pixels is too small to show a product (under {min_side} on a side)"
        raise ImageError(f"{name}: {why}" if name else why)
    return img


#: Modes Pillow's ``reduce`` takes (``P``, ``1`` and 16-bit ones are left as they are).
_REDUCIBLE = {"RGB", "RGBA", "L", "LA", "CMYK", "I", "F"}


def reduce_for(img: Image.Image, side: int) -> Image.Image:
    """``img`` shrunk by the largest whole factor that keeps its shorter side at least ``side``
    pixels (a box filter: Pillow's ``reduce``), or ``img`` itself when that factor is 1.

    ``load_image(..., target=side)`` decodes a JPEG file at a fraction of its size already;
    this does the same for an image that arrives decoded (an upload to the service, a video
    frame, a PNG), so that the resizes after it start from under twice the pixels they need
    rather than from the whole photo. On a decoded 12 MP photo the seven search views took
    about 300 ms of resizing, about 10 ms after it. Images under twice ``side`` come back
    unchanged, so a JPEG decoded with that target gives the same pixels as before.
    """
    f = min(img.size) // max(1, int(side))
    if f < 2 or img.mode not in _REDUCIBLE:
        return img
    return img.reduce(f)


def image_size(source: Source) -> tuple[int, int]:
    """Return ``(width, height)`` as a person sees the image, read from the header."""
    name, fp = _open_source(source)
    try:
        with _open_image(fp, name) as img:
            width, height = img.size
            if _header_orientation(img) in (5, 6, 7, 8):
                return height, width
            return width, height
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{name}: cannot read image header ({type(exc).__name__}: {exc})") from exc


class NamedBytes(bytes):
    """Image bytes that keep the name they came from (a URL), for messages: a source like any bytes."""

    name: str

    def __new__(cls, data: bytes, name: str) -> "NamedBytes":
        obj = super().__new__(cls, data)
        obj.name = name
        return obj


def read_once(source: Source) -> Source:
    """``source`` as it is, but an http(s) URL downloaded now (:class:`NamedBytes`): for a query that
    several steps decode (detection, search, categories), so that the photo is fetched once."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and urllib.parse.urlsplit(text).scheme.lower() in ("http", "https"):
            return NamedBytes(_fetch_url(text), text)
    return source


def upright(img: Image.Image) -> Image.Image:
    """A PIL image as ``Image.open`` gives it, turned as its EXIF orientation says (what
    :func:`load_image` does for a path). An image without a file format (decoded by productlens, a
    video frame, one built in memory) is returned as it is: its pixels are taken as shown."""
    if img.format is None:
        return img
    orientation = _orientation(img)
    return img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img


def decoded_rgb(img: Image.Image) -> Image.Image:
    """A PIL image given by a caller, ready for a model: upright (:func:`upright`) and 8-bit RGB
    (:func:`to_rgb`: alpha on white, 16-bit scaled)."""
    return to_rgb(upright(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Alpha (and palette/colour-key transparency) is composited over white; 16-bit,
    32-bit and float grayscale are scaled to 0..255 rather than clipped.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode.startswith("F"):
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode == "La":
        img, mode = img.convert("LA"), "LA"
    rgba_palette = mode == "P" and img.palette is not None and img.palette.mode == "RGBA"
    if mode in _ALPHA_MODES or rgba_palette or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit/32-bit/float grayscale array to uint8."""
    a = np.nan_to_num(arr.astype(np.float64, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(a.min()), float(a.max())
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        a = a / 257.0  # full 16-bit range
    elif lo >= 0 and hi <= 1 and arr.dtype.kind == "f":
        a = a * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _open_source(source: Source) -> tuple[str, "io.BytesIO | Path"]:
    """Resolve ``source`` to (display name, path or in-memory bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = getattr(source, "name", "<bytes>")
        if not data:
            raise ImageError(f"{name}: empty image data")
        return name, io.BytesIO(data)
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"unsupported image source of type {type(source).__name__}")
    text = os.fspath(source)
    if isinstance(text, str) and not text.strip():
        raise ImageError("no image path given (an empty path)")
    scheme = urllib.parse.urlsplit(text).scheme.lower() if isinstance(text, str) else ""
    if scheme in ("http", "https"):
        return text, io.BytesIO(_fetch_url(text))
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(text).path))
        name = text
    elif len(scheme) > 1 and "://" in text:  # ftp://, s3://, ... (a one-letter scheme is a Windows drive)
        raise ImageError(f"{text}: cannot read {scheme}:// addresses; give an http(s) or file URL, or a path")
    else:
        path = Path(text)
        name = str(path)
    if not path.exists():
        raise ImageError(f"{name}: {FILE_NOT_FOUND}")
    if not path.is_file():
        raise ImageError(f"{name}: not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"{name}: empty (zero-byte) file")
    return name, path


def _fetch_url(url: str) -> bytes:
    """Read an http(s) image into memory with a timeout and a size cap."""
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as resp:
            data = resp.read(MAX_URL_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ImageError(f"{url}: download failed ({exc})") from exc
    if len(data) > MAX_URL_BYTES:
        raise ImageError(f"{url}: larger than {MAX_URL_BYTES} bytes")
    if not data:
        raise ImageError(f"{url}: empty response")
    return data


#: the end of the message for a photo whose file is missing (a share not mounted yet: worth trying again)
FILE_NOT_FOUND = "file not found"

#: ISO media brands of HEIF photos (HEIC from phones, and still images in other HEIF codecs)
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"})


def is_heif(fp: "io.BytesIO | Path | bytes") -> bool:
    """Whether the file or bytes start as a HEIF (HEIC, AVIF) photo: an ``ftyp`` box of a HEIF brand."""
    try:
        if isinstance(fp, bytes):
            head = fp[:12]
        elif isinstance(fp, io.BytesIO):
            head = fp.getvalue()[:12]
        else:
            with open(fp, "rb") as f:
                head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def _open_image(fp: "io.BytesIO | Path", name: str) -> Image.Image:
    """``Image.open`` with errors turned into ImageError (lazy: only the header is read)."""
    try:
        return Image.open(fp)
    except Image.UnidentifiedImageError as exc:
        if is_heif(fp):  # an image, in a format Pillow does not read: say which
            raise ImageError(f"{name}: a HEIC/HEIF photo (the iPhone camera's default), which cannot be read here; "
                             "convert it to JPEG or PNG") from exc
        raise ImageError(f"{name}: not an image (unrecognised format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:
        raise ImageError(f"{name}: cannot open image ({type(exc).__name__}: {exc})") from exc


def _decode(img: Image.Image, name: str) -> None:
    """Force a full decode so truncated or corrupt data fails here, not later."""
    try:
        img.load()
    except OSError as exc:
        raise ImageError(f"{name}: corrupt or truncated image data ({exc})") from exc


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent or unreadable)."""
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _header_orientation(img: Image.Image) -> int:
    """Orientation without decoding pixels (PNG's getexif would decode the image)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return _orientation(img)


def _clip_box(
    box: Box | None, raw_size: tuple[int, int], orientation: int, name: str
) -> Box | None:
    """Clip an oriented-coordinates box and map it to stored (raw) pixel coordinates."""
    if box is None:
        return None
    w, h = raw_size
    swapped = orientation in (5, 6, 7, 8)
    try:
        b = box.clip(*((h, w) if swapped else (w, h)))
    except BoxError as exc:
        raise BoxError(f"{name}: {exc}") from None
    x0, y0, x1, y1 = b.x, b.y, b.x + b.w, b.y + b.h
    if orientation == 2:
        x0, x1 = w - x1, w - x0
    elif orientation == 3:
        x0, x1, y0, y1 = w - x1, w - x0, h - y1, h - y0
    elif orientation == 4:
        y0, y1 = h - y1, h - y0
    elif orientation == 5:
        x0, x1, y0, y1 = y0, y1, x0, x1
    elif orientation == 6:
        x0, x1, y0, y1 = y0, y1, h - x1, h - x0
    elif orientation == 7:
        x0, x1, y0, y1 = w - y1, w - y0, h - x1, h - x0
    elif orientation == 8:
        x0, x1, y0, y1 = w - y1, w - y0, x0, x1
    return Box(x0, y0, x1 - x0, y1 - y0)


def _draft(img: Image.Image, raw_box: Box | None, raw_size: tuple[int, int], target: int) -> float:
    """Ask the decoder to shrink while decoding; return the applied scale (new/old).

    Pillow's JPEG draft reduces by 1, 2, 4 or 8 with ``min(W // w, H // h)`` as the
    bound, and changes ``img.size`` to the rounded-up reduced size. The request is
    chosen so the region of interest keeps at least ``target`` pixels per side.
    """
    w, h = raw_size
    rw, rh = (raw_box.w, raw_box.h) if raw_box is not None else (w, h)
    request = (
        max(1, math.ceil(target * w / rw)),
        max(1, math.ceil(target * h / rh)),
    )
    result = img.draft("RGB", request)
    if not result:
        return 1.0
    _, region = result  # (0, 0, W / factor, H / factor) in the reduced image
    return float(region[2]) / w if w else 1.0


def _scaled_crop(
    raw_box: Box, scale: float, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Integer crop rectangle covering ``raw_box`` scaled by ``scale``, within ``size``."""
    x0 = math.floor(raw_box.x * scale + 1e-6)
    y0 = math.floor(raw_box.y * scale + 1e-6)
    x1 = math.ceil((raw_box.x + raw_box.w) * scale - 1e-6)
    y1 = math.ceil((raw_box.y + raw_box.h) * scale - 1e-6)
    x0, y0 = min(max(x0, 0), size[0] - 1), min(max(y0, 0), size[1] - 1)
    x1, y1 = max(min(x1, size[0]), x0 + 1), max(min(y1, size[1]), y0 + 1)
    return x0, y0, x1, y1

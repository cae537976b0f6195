"""Tests for productlens.data.images: decoding, modes, EXIF, draft, boxes, failures."""

from __future__ import annotations

import http.server
import io
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from productlens.data.images import image_size, load_image, reduce_for, to_rgb
from productlens.types import Box, BoxError, ImageError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _mean(img: Image.Image) -> tuple[float, ...]:
    return tuple(np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0))


def _close(color: tuple[float, ...], expected: tuple[int, int, int], tol: float = 12) -> bool:
    return all(abs(c - e) <= tol for c, e in zip(color, expected))


def _scene(size: tuple[int, int], square: tuple[int, int, int, int]) -> Image.Image:
    """A blue image with a red rectangle (x0, y0, x1, y1)."""
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, square)
    return img


def _forged_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


# --- EXIF orientation -------------------------------------------------------


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> Path:
    """JPEG stored 120x80 with EXIF orientation 6: seen as 80x120, red square at (10, 20)-(40, 50)."""
    seen = _scene((80, 120), (10, 20, 40, 50))
    stored = seen.transpose(Image.Transpose.ROTATE_90)  # inverse of orientation 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=_exif(6))
    return path


def test_exif_orientation_rotates_size_and_box(rotated_jpeg: Path) -> None:
    img = load_image(rotated_jpeg)
    assert img.mode == "RGB" and img.size == (80, 120)
    assert image_size(rotated_jpeg) == (80, 120)
    crop = load_image(rotated_jpeg, box=Box(14, 24, 22, 22))
    assert crop.size == (22, 22)
    assert _close(_mean(crop), RED)
    assert _close(_mean(load_image(rotated_jpeg, box=Box(50, 70, 20, 40))), BLUE)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_exif_transpose(tmp_path: Path, orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    path = tmp_path / f"o{orientation}.png"
    stored.save(path, exif=_exif(orientation))
    reference = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert load_image(path).tobytes() == reference.tobytes()
    box = Box(3, 5, 17, 11)
    got = load_image(path, box=box)
    want = reference.crop((3, 5, 20, 16))
    assert got.size == want.size and got.tobytes() == want.tobytes()


# --- draft ------------------------------------------------------------------


@pytest.fixture
def big_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "big.jpg"
    _scene((1000, 800), (400, 320, 600, 480)).save(path, quality=95)
    return path


def test_draft_shrinks_while_decoding_but_keeps_target(big_jpeg: Path) -> None:
    img = load_image(big_jpeg, target=100)
    assert img.size == (125, 100)  # reduced by 8, both sides still >= 100
    img = load_image(big_jpeg, target=260)
    assert img.size == (500, 400)  # 1000 // 260 == 3 -> reduced by 2
    assert min(img.size) >= 260
    assert load_image(big_jpeg, target=2000).size == (1000, 800)


def test_draft_scales_box_from_original_pixels(big_jpeg: Path) -> None:
    full = load_image(big_jpeg, box=Box(400, 320, 200, 160))
    assert full.size == (200, 160) and _close(_mean(full), RED)
    crop = load_image(big_jpeg, box=Box(400, 320, 200, 160), target=50)
    assert crop.size == (100, 80)  # the crop (not the image) keeps >= target
    assert _close(_mean(crop), RED)
    small = load_image(big_jpeg, box=Box(400, 320, 200, 160), target=20)
    assert small.size == (25, 20) and _close(_mean(small), RED)


def test_draft_with_exif_rotation(tmp_path: Path) -> None:
    seen = _scene((800, 1000), (100, 600, 300, 900))
    path = tmp_path / "rot_big.jpg"
    seen.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=_exif(6))
    img = load_image(path, target=100)
    assert img.size == (100, 125)
    crop = load_image(path, box=Box(100, 600, 200, 300), target=25)
    # 200x300 original pixels / 8, widened to whole decoded pixels that cover the box
    assert crop.size[0] in (25, 26) and crop.size[1] in (38, 39)
    assert _close(_mean(crop), RED, tol=20)


def test_draft_ignored_for_png(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _scene((400, 300), (0, 0, 10, 10)).save(path)
    assert load_image(path, target=50).size == (400, 300)


# --- modes ------------------------------------------------------------------


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    assert img.mode == "RGB" and _close(_mean(img), RED)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 64 * 16).astype(np.uint16).reshape(16, 64)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    arr = np.asarray(load_image(path))[..., 0].astype(int)
    assert arr.min() == 0 and arr.max() == 255
    assert (np.diff(arr.ravel()) >= 0).all()  # still a ramp
    assert (arr == 255).mean() < 0.1


def test_float_and_int32_grayscale() -> None:
    f = Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), mode="F")
    arr = np.asarray(to_rgb(f))
    assert arr.min() == 0 and arr.max() == 255
    i = Image.fromarray(np.linspace(-5000, 90000, 100).astype(np.int32).reshape(10, 10), mode="I")
    arr = np.asarray(to_rgb(i))
    assert arr.min() == 0 and arr.max() == 255


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (20, 10), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (10, 0, 20, 10))
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    out = load_image(path)
    assert out.getpixel((2, 2)) == WHITE
    assert out.getpixel((15, 5)) == BLUE


@pytest.mark.parametrize(
    "mode,color,expected",
    [
        ("RGBA", (255, 0, 0, 0), WHITE),
        ("RGBA", (255, 0, 0, 255), RED),
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),
        ("LA", (0, 0), WHITE),
        ("LA", (0, 255), (0, 0, 0)),
        ("L", 77, (77, 77, 77)),
        ("1", 1, WHITE),
        ("1", 0, (0, 0, 0)),
    ],
)
def test_modes_to_rgb(tmp_path: Path, mode: str, color: object, expected: tuple) -> None:
    path = tmp_path / f"img_{mode}.png"
    Image.new(mode, (8, 8), color).save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert all(abs(a - b) <= 1 for a, b in zip(out.getpixel((3, 3)), expected))


def test_min_side_refuses_tiny_images_and_crops(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), RED).save(path)
    assert load_image(path).size == (1, 1)  # decoding alone has no bar
    with pytest.raises(ImageError, match=r"tiny.png: 1x1 pixels is too small .*under 8"):
        load_image(path, min_side=8)
    _scene((30, 20), (0, 0, 5, 5)).save(path)
    assert load_image(path, box=Box(0, 0, 8, 8), min_side=8).size == (8, 8)
    with pytest.raises(ImageError, match="7x12 pixels"):
        load_image(path, box=Box(0, 0, 7, 12), min_side=8)


# --- sources ----------------------------------------------------------------


def test_bytes_and_file_url(tmp_path: Path) -> None:
    path = tmp_path / "a b.png"
    _scene((30, 20), (0, 0, 5, 5)).save(path)
    assert load_image(path.read_bytes()).size == (30, 20)
    assert load_image(path.as_uri()).size == (30, 20)
    assert load_image(str(path)).size == (30, 20)
    assert image_size(path.read_bytes()) == (30, 20)


def test_other_url_schemes_are_named_not_taken_for_paths() -> None:
    with pytest.raises(ImageError, match="ftp://x/y.jpg: cannot read ftp:// addresses"):
        load_image("ftp://x/y.jpg")


def test_http_url(tmp_path: Path) -> None:
    _scene((30, 20), (0, 0, 5, 5)).save(tmp_path / "web.png")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert load_image(f"{base}/web.png").size == (30, 20)
        with pytest.raises(ImageError, match="missing.png"):
            load_image(f"{base}/missing.png")
    finally:
        server.shutdown()
        server.server_close()


# --- failures ---------------------------------------------------------------


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(path)
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(path.read_bytes())


def test_zero_byte_text_missing_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg.*zero-byte"):
        load_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("hello, I am not a picture\n")
    with pytest.raises(ImageError, match="notes.jpg.*not an image"):
        load_image(text)
    heic = tmp_path / "IMG_0001.HEIC"  # an iPhone photo's first box: the CLI had said "unrecognised format"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    for source in (heic, heic.read_bytes()):
        with pytest.raises(ImageError, match="a HEIC/HEIF photo .* convert it to JPEG or PNG"):
            load_image(source)
    with pytest.raises(ImageError, match="nope.jpg.*not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(b"garbage")
    with pytest.raises(ImageError, match="notes.jpg"):
        image_size(text)


def test_decompression_bomb_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_forged_png(40000, 40000))
    with pytest.raises(ImageError, match="bomb.png"):
        load_image(path)
    with pytest.raises(ImageError, match="bomb.png"):
        load_image(path, max_pixels=10**10)  # Pillow's own limit still applies


def test_max_pixels_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "claims_big.png"
    path.write_bytes(_forged_png(3000, 3000))  # no real pixel data behind the header
    with pytest.raises(ImageError, match=r"claims_big.png: 3000x3000 image has more than"):
        load_image(path, max_pixels=1_000_000)
    assert image_size(path) == (3000, 3000)  # header only: no decode


# --- boxes ------------------------------------------------------------------


@pytest.fixture
def small_png(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    _scene((64, 48), (0, 0, 20, 20)).save(path)
    return path


def test_box_partly_outside_is_clipped(small_png: Path) -> None:
    crop = load_image(small_png, box=Box(-10, -10, 30, 30))
    assert crop.size == (20, 20) and _close(_mean(crop), RED, tol=0)
    assert load_image(small_png, box=Box(50, 40, 100, 100)).size == (14, 8)


@pytest.mark.parametrize("box, why", [(Box(0, 0, 0, 10), "zero area"), (Box(5, 5, 10, -1), "zero area"),
                                      (Box(100, 100, 10, 10), "lies outside"),
                                      (Box(0.5, 0.5, 0.4, 0.4), "covers less than one pixel"),
                                      (Box(float("nan"), 0, 10, 10), "not 4 finite numbers")])
def test_bad_boxes_raise_box_error(small_png: Path, box: Box, why: str) -> None:
    with pytest.raises(BoxError, match=f"small.png.*{why}"):
        load_image(small_png, box=box)
    with pytest.raises(BoxError, match="finite"):
        Box.parse("nan,0,10,10")


@pytest.mark.parametrize("text, why", [("1_0,0,5,5", "4 numbers"), ("0,0,-50,-50", "cannot be negative"),
                                       ("0,0,5,-1", "cannot be negative")])
def test_box_text_that_float_would_misread_is_refused(text: str, why: str) -> None:
    with pytest.raises(BoxError, match=why):
        Box.parse(text)


def test_reduce_for_shrinks_by_whole_factors_past_twice_the_need() -> None:
    img = Image.new("RGB", (1000, 800), RED)
    small = reduce_for(img, 260)
    assert small.size == (334, 267)  # factor 3: the shorter side stays at least 260
    assert _mean(small) == pytest.approx(RED)
    assert reduce_for(img, 401) is img  # under twice the need: unchanged
    palette = img.convert("P")
    assert reduce_for(palette, 100) is palette  # a mode Pillow cannot reduce: left as it is

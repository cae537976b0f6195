"""embed_items: overlapped decoding + inference, order, skipped bad images."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from productlens.data.images import load_image
from productlens.pipeline.embed import EmbedResult, _load_into, embed_items, iter_embeddings
from productlens.types import Box, ImageError, Item

N_GOOD = 20
BATCH = 8


@pytest.fixture(scope="module")
def embedder():
    from productlens.models.embedders import create_embedder

    try:
        return create_embedder("efficientnet-lite0")  # exported once into the user cache
    except ImportError as exc:  # the weight packages / torch extra are not installed
        pytest.skip(f"efficientnet-lite0 unavailable: {exc}")


def _photo(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    """A smooth random 'photo': a colour gradient plus a rectangle plus noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1, c2 = rng.uniform(0, 255, 3), rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
    arr = c0 + c1 * xx[..., None] * (128 / w) + c2 * yy[..., None] * (128 / h)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0, 255, 3)
    arr += rng.normal(0, 8, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img.convert(mode) if mode != "RGB" else img


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """20 good images (JPEG/PNG, RGB/L/RGBA, several sizes), a duplicate, 3 bad items."""
    d = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    sources, boxes = [], []
    for i in range(N_GOOD - 1):
        w, h = int(rng.integers(48, 320)), int(rng.integers(48, 320))
        mode = ("RGB", "L", "RGBA")[i % 3]
        ext = "png" if mode == "RGBA" or i % 4 == 1 else "jpg"
        path = d / f"img_{i:02d}.{ext}"
        _photo(rng, w, h, mode).save(path, quality=90)
        sources.append(str(path))
        boxes.append(Box(w * 0.1, h * 0.2, w * 0.6, h * 0.5) if i % 5 == 2 else None)
    shutil.copy(sources[0], d / "dup_of_00.jpg")  # the same image again, much later
    sources.append(str(d / "dup_of_00.jpg"))
    boxes.append(None)
    corrupt = d / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    missing = d / "missing.jpg"
    bad_box = d / "bad_box.jpg"
    _photo(rng, 64, 64).save(bad_box)
    # Bad items at 3, 9 and 21: inside the first batch, the second, and the last.
    for pos, (src, box) in sorted({3: (str(corrupt), None), 9: (str(missing), None),
                                   21: (str(bad_box), Box(500, 500, 20, 20))}.items()):
        sources.insert(pos, src)
        boxes.insert(pos, box)
    bad = {3: "corrupt.jpg", 9: "missing.jpg", 21: "bad_box.jpg"}
    return sources, boxes, bad


@pytest.fixture(scope="module")
def result(embedder, gallery) -> EmbedResult:
    sources, boxes, _ = gallery
    return embed_items(embedder, sources, boxes=boxes, batch_size=BATCH, workers=1, progress=False)


def _reference(embedder, sources, boxes, indices) -> np.ndarray:
    pre = embedder.preprocess
    arrays = [pre(load_image(sources[i], box=boxes[i], target=pre.size)) for i in indices]
    return embedder.embed(np.stack(arrays))


def test_shapes_order_and_errors(embedder, gallery, result):
    sources, _, bad = gallery
    good = [i for i in range(len(sources)) if i not in bad]
    assert result.vectors.shape == (N_GOOD, embedder.dim)
    assert result.vectors.dtype == np.float32 and result.vectors.flags.c_contiguous
    assert result.ok.tolist() == good and len(result) == N_GOOD
    assert [e[0] for e in result.errors] == sorted(bad)
    for index, source, message in result.errors:
        assert source == sources[index]
        assert bad[index] in message, message
    assert "not found" in result.errors[1][2]
    assert "box" in result.errors[2][2]


def test_unit_norm_and_duplicates(result, gallery):
    sources, _, _ = gallery
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    row = {int(i): r for r, i in enumerate(result.ok)}
    first, dup = row[0], row[len(sources) - 1]  # img_00 and its copy, in different batches
    assert np.abs(result.vectors[first] - result.vectors[dup]).max() < 1e-6
    # Different images give different vectors.
    assert np.abs(result.vectors[first] - result.vectors[row[1]]).max() > 1e-3


def test_matches_embedder_embed(embedder, gallery, result):
    sources, boxes, _ = gallery
    ref = _reference(embedder, sources, boxes, result.ok)
    assert np.abs(result.vectors - ref).max() < 1e-5


def test_preprocessing_is_bit_identical(embedder, gallery):
    """What the decode threads write into a batch equals Preprocess.__call__ exactly."""
    sources, boxes, bad = gallery
    pre = embedder.preprocess
    for i, (src, box) in enumerate(zip(sources, boxes)):
        if i in bad:
            continue
        out = np.empty(pre.shape, pre.dtype)
        _load_into(pre, src, box, out)
        assert np.array_equal(out, pre(load_image(src, box=box, target=pre.size))), src


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_float_preprocessing_into_batch(gallery, resize):
    """A float (user-model) Preprocess writes the same array into a batch row as it returns."""
    from productlens.models.embedders.base import Preprocess

    sources, boxes, bad = gallery
    pre = Preprocess(size=40, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), resize=resize)
    for i in [i for i in range(len(sources)) if i not in bad][:6]:
        out = np.empty(pre.shape, pre.dtype)
        _load_into(pre, sources[i], boxes[i], out)
        assert out.shape == (3, 40, 40) and np.array_equal(out, pre(load_image(sources[i], box=boxes[i], target=40)))


def test_bad_files_logged(embedder, gallery, caplog):
    sources, boxes, bad = gallery
    idx = [0, 3, 9, 21]
    with caplog.at_level(logging.WARNING, logger="productlens.pipeline.embed"):
        res = embed_items(embedder, [sources[i] for i in idx], boxes=[boxes[i] for i in idx],
                          progress=False)
    assert res.ok.tolist() == [0] and len(res.errors) == 3
    text = caplog.text
    assert "skipped 3 of 4" in text
    for name in bad.values():
        assert name in text


def test_items_workers_and_batch_size(embedder, gallery, result):
    """Item sources (with their boxes), 2 decode threads and another batch size agree."""
    sources, boxes, _ = gallery
    idx = [int(i) for i in result.ok[:10]]
    items = [Item(id=k, image=sources[i], box=boxes[i]) for k, i in enumerate(idx)]
    res = embed_items(embedder, items, batch_size=3, workers=2, progress=False)
    assert res.ok.tolist() == list(range(10)) and not res.errors
    assert np.abs(res.vectors - result.vectors[:10]).max() < 1e-5


def test_iter_embeddings_batches_and_early_stop(embedder, gallery):
    sources, boxes, bad = gallery
    gen = iter_embeddings(embedder, sources, boxes=boxes, batch_size=BATCH, workers=1)
    idx, vecs, errs = next(gen)
    assert idx.tolist() == [i for i in range(BATCH) if i not in bad]
    assert vecs.shape == (len(idx), embedder.dim)
    assert [e[0] for e in errs] == [3]
    gen.close()  # stops the decoders without waiting for the whole gallery


def test_empty_and_all_bad(embedder, tmp_path):
    res = embed_items(embedder, [], progress=False)
    assert res.vectors.shape == (0, embedder.dim) and res.ok.shape == (0,) and not res.errors
    res = embed_items(embedder, [str(tmp_path / "nope.jpg"), b"garbage"], progress=False)
    assert res.vectors.shape == (0, embedder.dim) and [e[0] for e in res.errors] == [0, 1]
    assert "nope.jpg" in res.errors[0][2] and "<bytes>" in res.errors[1][2]


def test_boxes_length_mismatch(embedder):
    with pytest.raises(ValueError):
        embed_items(embedder, ["a.jpg", "b.jpg"], boxes=[None], progress=False)


def test_embedder_with_its_own_embed(gallery):
    """Any object with ``preprocess``, ``dim`` and ``embed`` works (embed is called as is)."""
    from productlens.models.embedders.base import Preprocess

    class Mean:
        preprocess = Preprocess(size=16)
        dim = 3

        def embed(self, batch):
            return batch.mean(axis=(2, 3))

    sources, boxes, bad = gallery
    res = embed_items(Mean(), sources, boxes=boxes, batch_size=5, progress=False)
    assert res.ok.tolist() == [i for i in range(len(sources)) if i not in bad]
    ref = np.stack([Mean.preprocess(load_image(sources[i], box=boxes[i], target=16)).mean(axis=(1, 2))
                    for i in res.ok])
    assert np.abs(res.vectors - ref).max() < 1e-6


def test_images_too_small_to_show_a_product_are_skipped_and_named(embedder, tmp_path):
    """A 1x1 placeholder, a 4-pixel sliver and a 5x5 box are refused; 8 pixels a side is enough."""
    rng = np.random.default_rng(3)
    names = {"pixel.png": (1, 1), "sliver.png": (300, 4), "small_ok.png": (8, 8), "photo.jpg": (64, 48)}
    for name, (w, h) in names.items():
        _photo(rng, max(w, 2), max(h, 2)).resize((w, h)).save(tmp_path / name)
    sources = [str(tmp_path / n) for n in names] + [str(tmp_path / "photo.jpg")]
    boxes = [None] * 4 + [Box(10, 10, 5, 5)]
    res = embed_items(embedder, sources, boxes=boxes, progress=False)
    assert res.ok.tolist() == [2, 3] and [e[0] for e in res.errors] == [0, 1, 4]
    assert "pixel.png: 1x1 pixels is too small" in res.errors[0][2]
    assert "sliver.png: 300x4 pixels" in res.errors[1][2] and "photo.jpg: 5x5 pixels" in res.errors[2][2]
    frame = Image.new("RGB", (6, 40))  # an already decoded image (a video frame) meets the same bar
    with pytest.raises(ImageError, match="6x40 pixels is too small"):
        _load_into(embedder.preprocess, frame, None, np.zeros(embedder.preprocess.shape, embedder.preprocess.dtype))


def test_default_workers_one_per_core_capped_and_overridable(monkeypatch):
    """One decode thread per usable core (PRODUCTLENS_THREADS), at most MAX_WORKERS; the env var wins."""
    from productlens.pipeline.embed import MAX_WORKERS, default_workers

    monkeypatch.delenv("PRODUCTLENS_DECODE_WORKERS", raising=False)
    for cores, expected in ((1, 1), (2, 2), (5, 5), (64, MAX_WORKERS)):
        monkeypatch.setenv("PRODUCTLENS_THREADS", str(cores))
        assert default_workers() == expected
    monkeypatch.setenv("PRODUCTLENS_DECODE_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("PRODUCTLENS_DECODE_WORKERS", "0")
    assert default_workers() == 1

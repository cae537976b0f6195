"""Spatial verification: local features, inlier counts, re-ranking, and its place in catalog search."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers import write_dataset
from productlens.data.readers import read_gallery, read_queries
from productlens.pipeline import verify
from productlens.pipeline.catalog_build import build_catalog
from productlens.pipeline.rank import rank_queries
from productlens.types import ProductLensError

pytest.importorskip("cv2")


def label_photo(seed: int, size: int = 200) -> Image.Image:
    """A printed-package stand-in: many small random shapes, rich in corners."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (240, 240, 235))
    d = ImageDraw.Draw(img)
    for _ in range(160):
        x, y = rng.integers(0, size - 12, 2)
        w, h = rng.integers(3, 14, 2)
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        if rng.random() < 0.5:
            d.rectangle([x, y, x + w, y + h], fill=colour)
        else:
            d.ellipse([x, y, x + w, y + h], fill=colour)
    return img


def shopper_view(img: Image.Image) -> Image.Image:
    """The same print seen by a phone: smaller, slanted, on a grey background."""
    w, h = img.size
    warped = img.transform((w, h), Image.Transform.PERSPECTIVE,
                           (1.05, 0.08, -8, 0.04, 1.0, -5, 0.0004, 0.0002), fillcolor=(90, 90, 90))
    out = Image.new("RGB", (w + 60, h + 40), (90, 90, 90))
    out.paste(warped.resize((int(w * 0.9), int(h * 0.9))), (30, 20))
    return out


def test_inliers_separate_the_same_print_from_another() -> None:
    shop, other = label_photo(1), label_photo(2)
    q = verify.local_features(shopper_view(shop))
    same = verify.inliers(q, verify.local_features(shop))
    different = verify.inliers(q, verify.local_features(other))
    assert same >= verify.MIN_INLIERS + 10 > different
    assert verify.boost(np.array([0, verify.MIN_INLIERS, verify.MIN_INLIERS + verify.FULL_AT, 500])).tolist() == \
        pytest.approx([0.0, 0.0, verify.WEIGHT, verify.WEIGHT])


def test_featureless_and_huge_photos() -> None:
    blank = verify.local_features(Image.new("RGB", (120, 80), (128, 128, 128)))
    assert len(blank) == 0 and verify.inliers(blank, blank) == 0
    big = verify.local_features(label_photo(3, size=200).resize((2000, 2000)))
    assert len(big) > 0 and big.points.max() <= verify.LONG_SIDE  # described at LONG_SIDE pixels


def test_rerank_moves_the_verified_item_up_and_survives_missing_files(tmp_path) -> None:
    paths = {}
    for i in range(4):
        paths[i] = tmp_path / f"g{i}.png"
        label_photo(10 + i).save(paths[i])
    paths[4] = tmp_path / "gone.png"  # never written
    calls = []

    def metadata(ids):
        calls.append(list(ids))
        return [{"image": str(paths[i])} for i in ids]

    v = verify.SpatialVerifier(metadata)
    query = shopper_view(label_photo(12))  # shows gallery item 2
    scores = np.array([[0.60, 0.59, 0.58, 0.57, 0.56, -np.inf]], np.float32)
    ids = np.array([[4, 0, 1, 3, 2, -1]])
    s2, i2 = v.rerank(scores, ids, [query])
    assert i2[0, 0] == 2 and s2[0, 0] > 0.56
    assert i2[0, -1] == -1 and np.isneginf(s2[0, -1])  # padding stays last
    assert sorted(i2[0, :5].tolist()) == [0, 1, 2, 3, 4]  # the unreadable item keeps a place
    assert np.all(np.diff(s2[0, :5]) <= 0)
    # a row without a query image is left alone; cached gallery features are not read again
    s3, i3 = v.rerank(scores, ids, [None])
    assert i3.tolist() == ids.tolist()
    v.rerank(scores, ids, [query])
    assert len(calls) == 1


def test_resolve_without_opencv(monkeypatch) -> None:
    def missing():
        raise ProductLensError("spatial verification needs OpenCV")

    monkeypatch.setattr(verify, "_cv2", missing)
    assert verify.resolve(None) is False and verify.resolve(False) is False
    with pytest.raises(ProductLensError, match="OpenCV"):
        verify.resolve(True)


def test_catalog_search_and_batch_rank_with_verification(tmp_path) -> None:
    ds = write_dataset(tmp_path / "ds")
    gallery = read_gallery(ds["gallery"])
    cat, _ = build_catalog(gallery, tmp_path / "cat", embedder="efficientnet-lite0", progress=False)
    with cat:
        queries = read_queries(ds["queries"])
        rerank, calls = cat.verifier.rerank, []
        cat.verifier.rerank = lambda scores, ids, images: calls.append(images) or rerank(scores, ids, images)
        on = cat.search(queries[0].image, k=3, verify=True)
        assert len(calls) == 1 and len(calls[0]) == 1 and calls[0][0].size[0] > 0  # the query photo, verified
        off = cat.search(queries[0].image, k=3, verify=False)
        assert len(calls) == 1  # not verified
        assert {h.id for h in on} == {h.id for h in off}
        assert on[0].score >= off[0].score - 1e-6
        r_on, err = rank_queries(cat, queries, k=4, progress=False, verify=True)
        r_off, _ = rank_queries(cat, queries, k=4, progress=False, verify=False)
        assert err == [] and r_on.shape == r_off.shape == (len(queries), 4)
        assert all(set(a) == set(b) for a, b in zip(r_on.tolist(), r_off.tolist()))

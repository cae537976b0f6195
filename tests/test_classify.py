"""Classification building blocks on synthetic features and a tiny fake embedder (no ONNX)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import product_photo
from productlens.data.augment import PooledViewEmbedder, View, ViewEmbedder, view_set
from productlens.models.classifiers.calibration import (expected_calibration_error, fit_temperature,
                                                        softmax, view_probs)
from productlens.models.classifiers.head import HeadConfig, likely_clean, small_loss_keep, train_head
from productlens.models.classifiers.hierarchy import HierarchyError, build_hierarchy
from productlens.models.classifiers.model import Classifier, load_classifier, top_k
from productlens.models.embedders.base import Preprocess, l2_normalize
from productlens.types import ProductLensError


class FakeEmbedder:
    """4 x 4 x 3 average colours of a 16 px image: 48-d, instant, deterministic."""

    name = "fake-tiny"
    dim = 48

    def __init__(self) -> None:
        self.preprocess = Preprocess(size=16, uint8=True)
        self.calls = 0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.calls += len(batch)
        x = np.asarray(batch, np.float32).reshape(len(batch), 4, 4, 4, 4, 3).mean(axis=(2, 4))
        return l2_normalize(x.reshape(len(batch), -1) - 128.0)

    def embed_images(self, images) -> np.ndarray:
        return self.embed(np.stack([self.preprocess(im) for im in images]))


def clusters(n_classes=6, per_class=40, dim=32, spread=0.6, seed=0, sizes=None, noise_seed=None):
    """Gaussian clusters: features (N x D) and labels (``noise_seed``: new samples of the same clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    sizes = sizes or [per_class] * n_classes
    y = np.repeat(np.arange(n_classes), sizes)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    return l2_normalize(x).astype(np.float32), y


def test_views_keys_sets_and_pixels() -> None:
    for v in view_set("train") + view_set("tta"):
        assert View.parse(v.key) == v
    assert len(view_set("train")) == 12 and view_set("train")[0].is_identity
    assert [len(view_set(n)) for n in ("none", "flip", "tta")] == [1, 2, 4]
    with pytest.raises(ProductLensError, match="unknown view set"):
        view_set("lots")
    with pytest.raises(ProductLensError, match="bad view crop"):
        View(0.5, 0, 0.4, 1)
    img = product_photo(2, 0, shop=False, size=40)
    emb = FakeEmbedder()
    whole = emb.preprocess(img)
    mirrored = ViewEmbedder(emb, View(flip=True)).preprocess(img)
    assert np.array_equal(mirrored, whole[:, ::-1])
    crop = ViewEmbedder(emb, View(0.5, 0.0, 1.0, 0.5)).preprocess(img)
    assert np.array_equal(crop, emb.preprocess(img.crop((20, 0, 40, 20))))
    assert ViewEmbedder(emb, View(0.1, 0.1, 0.6, 0.6)).preprocess.size == 32  # draft keeps 2x the pixels


def test_pooled_views_sum_the_views_vectors() -> None:
    """The pooled embedder's vector is the L2-normalised sum of each view's own vector, batched in one run."""
    views = view_set("regions")
    assert len(views) == 7 and views[0].is_identity and len({v.key for v in views}) == 7
    imgs = [product_photo(p, 0, shop=False, size=40) for p in range(3)]
    emb = FakeEmbedder()
    pooled = PooledViewEmbedder(emb, views)
    assert pooled.preprocess.shape == (7, 16, 16, 3) and pooled.preprocess.size == 32  # 0.5 crop: 2x pixels
    got = pooled.embed_images(imgs)
    assert emb.calls == 21 and got.shape == (3, emb.dim)
    per_view = np.stack([ViewEmbedder(emb, v).embed(np.stack([ViewEmbedder(emb, v).preprocess(im) for im in imgs]))
                         for v in views], 1)
    np.testing.assert_allclose(got, l2_normalize(per_view.sum(1)), atol=1e-6)
    assert pooled.embed(np.zeros((0, *pooled.preprocess.shape), np.uint8)).shape == (0, emb.dim)


def test_tiled_views_and_the_shelf_set() -> None:
    """A tile view crops a mosaic of k x k shrunk copies of the image; ``shelf`` is regions then regions of a
    2 x 2 mosaic, pooled as two groups of equal weight."""
    from productlens.data.augment import tiled, view_groups

    img = product_photo(2, 0, shop=True, size=40)
    mosaic = tiled(img, 2)
    assert mosaic.size == (40, 40) and tiled(img, 1) is img
    quarter = np.asarray(img.resize((20, 20), Image.Resampling.BILINEAR))
    for x, y in ((0, 0), (20, 0), (0, 20), (20, 20)):
        assert np.array_equal(np.asarray(mosaic)[y:y + 20, x:x + 20], quarter)
    odd = tiled(Image.new("RGB", (7, 3), (9, 9, 9)), 3)  # sides that do not divide: whole tiles of at least 1 px
    assert odd.size == (6, 3) and np.asarray(odd).min() == 9
    palette = Image.new("RGB", (9, 7), (255, 0, 0)).convert("P")
    assert tiled(palette, 2).convert("RGB").getpixel((0, 0)) == (255, 0, 0)  # the palette is kept
    v = View(0.5, 0.0, 1.0, 0.5, flip=True, tile=2)
    assert v.key == "0.500,0.000,1.000,0.500,flip,tile2" and View.parse(v.key) == v
    for bad in ("tile2", "tile0", "0,0,1,1,tile", "0,0,1,1,tilex", "0,0,1,1,tile\u00b2", "0,0,1,1,tile\u0663",
                "0,0,1,1,tile2,flip", "0,0,1,1,mirror", "0,0,1", ""):
        with pytest.raises(ProductLensError, match="bad view key|tile"):
            View.parse(bad)
    assert View.parse(View(tile=3).key) == View(tile=3) and View().key == "0.000,0.000,1.000,1.000"
    for bad in (0, 9, 1.5, True):
        with pytest.raises(ProductLensError, match="tile"):
            View(tile=bad)
    emb = FakeEmbedder()
    assert np.array_equal(ViewEmbedder(emb, View(0.5, 0.0, 1.0, 0.5, tile=2)).preprocess(img),
                          emb.preprocess(mosaic.crop((20, 0, 40, 20))))
    shelf, groups = view_set("shelf"), view_groups("shelf")
    assert len(shelf) == 14 and [len(g) for g in groups] == [7, 7] and groups[0] == view_set("regions")
    assert [v.tile for v in shelf] == [1] * 7 + [2] * 7 and view_groups("regions") == [view_set("regions")]
    imgs = [product_photo(p, 0, shop=True, size=40) for p in range(3)]
    got = PooledViewEmbedder(emb, shelf, [7, 7]).embed_images(imgs)
    halves = [PooledViewEmbedder(emb, g).embed_images(imgs) for g in groups]
    np.testing.assert_allclose(got, l2_normalize(halves[0] + halves[1]), atol=1e-6)
    with pytest.raises(ProductLensError, match="do not split"):
        PooledViewEmbedder(emb, shelf, [7, 6])


def test_head_learns_clusters_and_predicts_with_numpy() -> None:
    x, y = clusters()
    test_x, test_y = clusters(per_class=10, noise_seed=5)  # new samples of the same clusters
    head = train_head(x, y, 6, HeadConfig(epochs=15))
    assert (head.logits(test_x).argmax(1) == test_y).mean() > 0.9
    assert head.kept.all()  # a clean set loses (almost) nothing to the noise filter


def test_noise_filter_drops_flipped_labels() -> None:
    x, y = clusters(n_classes=5, per_class=60, spread=0.5, seed=1)
    rng = np.random.default_rng(2)
    flipped = rng.random(len(y)) < 0.2
    noisy = np.where(flipped, (y + rng.integers(1, 5, len(y))) % 5, y)
    head = train_head(x, noisy, 5, HeadConfig(epochs=20))
    dropped = ~head.kept
    assert dropped[flipped].mean() > 0.7  # most flipped labels left out
    assert dropped[~flipped].mean() < 0.1  # few clean ones
    assert (head.logits(x).argmax(1) == y).mean() > 0.95
    # the filter alone (run before fine-tuning a backbone) is the same selection
    np.testing.assert_array_equal(likely_clean(x, noisy, 5, HeadConfig(epochs=20)), head.kept)
    assert likely_clean(x, y, 5, HeadConfig(epochs=20)).all()  # clean labels: nothing left out


def test_final_head_trains_longer_only_when_the_labels_look_clean(monkeypatch) -> None:
    import productlens.models.classifiers.head as head_mod

    seen = []
    real = head_mod._train

    def spy(x, y, n_classes, cfg, parents, progress):
        seen.append((cfg.noise_filter, cfg.epochs))
        return real(x, y, n_classes, cfg, parents, progress)

    monkeypatch.setattr(head_mod, "_train", spy)
    x, y = clusters(n_classes=5, per_class=60, spread=0.5, seed=1)
    cfg = HeadConfig(epochs=6, clean_epochs=9)
    train_head(x, y, 5, cfg)
    assert seen == [(True, 6), (False, 9)]  # selection head, then the final head for clean_epochs
    rng = np.random.default_rng(2)
    noisy = np.where(rng.random(len(y)) < 0.2, (y + rng.integers(1, 5, len(y))) % 5, y)
    seen.clear()
    head = train_head(x, noisy, 5, HeadConfig(epochs=20, clean_epochs=30))
    assert not head.kept.all() and seen == [(True, 20), (False, 20)]  # flagged labels: the usual epochs
    seen.clear()
    train_head(x, y, 5, HeadConfig(epochs=6, clean_epochs=9, noise_filter=False))
    assert seen == [(False, 6)]  # no filter, no evidence that the labels are clean


def test_head_trains_on_every_core_unless_told_and_restores_torch_threads(monkeypatch) -> None:
    import torch

    import productlens.models.classifiers.head as head_mod

    seen = []
    real = head_mod._train

    def spy(x, y, n_classes, cfg, parents, progress):
        seen.append(torch.get_num_threads())
        return real(x, y, n_classes, cfg, parents, progress)

    monkeypatch.setattr(head_mod, "_train", spy)
    monkeypatch.setenv("PRODUCTLENS_THREADS", "2")
    before = torch.get_num_threads()
    x, y = clusters(n_classes=3, per_class=20)
    train_head(x, y, 3, HeadConfig(epochs=2))
    assert seen == [2, 2] and torch.get_num_threads() == before  # the default: every usable core
    seen.clear()
    likely_clean(x, y, 3, HeadConfig(epochs=2, threads=1))
    assert seen == [1] and torch.get_num_threads() == before


def test_small_loss_keep_limits() -> None:
    losses = np.r_[np.full(90, 0.1), np.full(10, 3.0)] + np.linspace(0, 0.01, 100)
    keep = small_loss_keep(losses, max_drop=0.5)
    assert keep[:90].all() and not keep[90:].any()
    assert small_loss_keep(losses, max_drop=0.05).sum() == 95
    agree = np.zeros(100, bool)
    agree[95:] = True  # predicted right: never dropped
    assert small_loss_keep(losses, 0.5, agree)[95:].all()
    assert small_loss_keep(np.ones(50), 0.5).all()


def test_logit_adjustment_favours_rare_classes() -> None:
    x, y = clusters(n_classes=3, spread=2.0, sizes=[200, 200, 12], seed=3)
    new_x, _ = clusters(n_classes=3, spread=2.0, seed=3, noise_seed=9)  # fresh photos, 40 per class
    plain = train_head(x, y, 3, HeadConfig(epochs=10, balance="none", noise_filter=False))
    adjusted = train_head(x, y, 3, HeadConfig(epochs=10, balance="logit-adjust", noise_filter=False))
    weighted = train_head(x, y, 3, HeadConfig(epochs=10, balance="class-weight", noise_filter=False))
    rare = lambda h: (h.logits(new_x).argmax(1) == 2).sum()  # noqa: E731
    assert rare(adjusted) > rare(plain) and rare(weighted) > rare(plain)
    with pytest.raises(ProductLensError, match="balance must be one of"):
        HeadConfig(epochs=1, balance="oversample")


def test_temperature_recovers_the_true_one() -> None:
    rng = np.random.default_rng(0)
    z = 3.0 * rng.normal(size=(4000, 10))
    p = softmax(z / 2.5)
    y = np.array([rng.choice(10, p=row) for row in p])
    t = fit_temperature(z, y)
    assert 2.2 < t < 2.8
    assert expected_calibration_error(view_probs(z, t), y) < expected_calibration_error(view_probs(z, 1.0), y)
    assert view_probs(np.stack([z, z]), t).shape == (4000, 10)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    assert fit_temperature(z, y, prior_sd=None) == pytest.approx(t, rel=0.01)  # 4,000 photos outweigh the prior


def test_a_few_held_out_photos_all_right_do_not_make_every_prediction_certain() -> None:
    """Separable held-out logits pull the likelihood's temperature to its lower bound (T 0.02: every
    prediction 100%); the prior on log T keeps it where a handful of photos can say something."""
    z = np.array([[4.0, 1.0, 0.0], [0.5, 3.0, 0.0], [0.0, 1.0, 2.5], [3.0, 0.0, 1.0]])
    y = np.array([0, 1, 2, 0])
    assert fit_temperature(z, y, prior_sd=None) < 0.05
    t = fit_temperature(z, y)
    assert 0.3 < t < 1.0
    assert view_probs(z, t).max(axis=1).min() < 0.99  # the least clear photo is not called certain


def test_hierarchy_sums_children_and_refuses_two_parents() -> None:
    h = build_hierarchy("sku", ["b", "a", "c", "a"], {"dept": ["x", "y", "y", "y"]})
    assert h.labels == ["a", "b", "c"] and h.levels[0].labels == ["x", "y"]
    p = np.array([[0.2, 0.5, 0.3]])
    assert np.allclose(h.probs(p, "dept"), [[0.5, 0.5]])
    assert h.probs(p, None) is p and h.labels_of("dept") == ["x", "y"]
    with pytest.raises(ProductLensError, match="unknown level"):
        h.probs(p, "aisle")
    with pytest.raises(HierarchyError, match="two parents"):
        build_hierarchy("sku", ["a", "a"], {"dept": ["x", "y"]})
    assert build_hierarchy("n", ["10", "9", "2"], {}).labels == ["2", "9", "10"]


def test_top_k_order_and_bounds() -> None:
    p = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert top_k(p, ["a", "b", "c"], 2) == [[("b", 0.6), ("c", 0.3)], [("a", 0.5), ("c", 0.3)]]
    assert [lab for lab, _ in top_k(p, ["a", "b", "c"], 10)[0]] == ["b", "c", "a"]


def test_classifier_folder_roundtrip(tmp_path) -> None:
    x, y = clusters(n_classes=4, dim=48)
    head = train_head(x, y, 4, HeadConfig(epochs=5, hidden=16))
    h = build_hierarchy("sku", ["0", "1", "2", "3"], {"dept": ["a", "a", "b", "b"]})
    clf = Classifier("fake-tiny", head, x.mean(0), h, temperature=1.7, views=[View().key],
                     config={"training": {"x": 1}}, metrics={"holdout_top1": 0.5})
    clf.save(tmp_path / "m")
    clf.save(tmp_path / "m")  # replacing an existing folder
    back = load_classifier(tmp_path / "m")
    assert back.temperature == pytest.approx(1.7) and back.labels == ["0", "1", "2", "3"]
    assert back.metrics == {"holdout_top1": 0.5} and back.config["training"] == {"x": 1}
    assert np.allclose(back.probs_from_features(x[:5]), clf.probs_from_features(x[:5]), atol=1e-6)
    assert np.allclose(back.probs_from_features(x[:5], "dept").sum(1), 1, atol=1e-5)
    with pytest.raises(ProductLensError, match="trained on 'fake-tiny' features, not 'mobilenetv2'"):
        load_classifier(tmp_path / "m", embedder="mobilenetv2")
    with pytest.raises(ProductLensError, match="not a productlens classifier"):
        load_classifier(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left
    # the oldest format that describes the folder: 1 here; 3 with a mosaic view, which older versions refuse
    assert json.loads((tmp_path / "m" / "config.json").read_text())["format"] == 1
    Classifier("fake-tiny", head, x.mean(0), h, views=[View().key, View(tile=2).key]).save(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["format"] == 3
    assert load_classifier(tmp_path / "t").views == [View().key, View(tile=2).key]


def test_classifier_checks_embedder_dimension(monkeypatch) -> None:
    from productlens.models import embedders

    x, y = clusters(n_classes=2, dim=8)
    h = build_hierarchy("c", ["a", "b"], {})
    clf = Classifier("fake-tiny", train_head(x, y, 2, HeadConfig(epochs=1)), x.mean(0), h)
    monkeypatch.setitem(embedders._CACHE, "fake-tiny", FakeEmbedder())
    with pytest.raises(ProductLensError, match="gives 48-d features; this classifier expects 8"):
        clf.predict(Image.new("RGB", (20, 20)))
    for k in (0, -3, 2.5):  # 0 and -3 had given the top 1
        with pytest.raises(ProductLensError, match="k must be a whole number of at least 1"):
            clf.predict(Image.new("RGB", (20, 20)), k=k)
    x48, _ = clusters(n_classes=2, dim=48)
    fits = Classifier("fake-tiny", train_head(x48, y, 2, HeadConfig(epochs=1)), x48.mean(0), h)
    assert len(fits.predict(Image.new("RGB", (20, 20)))[0]) == 2
    with pytest.raises(ProductLensError, match="1x1 pixels is too small"):  # refused as search refuses it
        fits.predict(Image.new("RGB", (1, 1)))


def test_large_decoded_photos_are_reduced_before_their_views() -> None:
    """A decoded photo many times larger than its views need (an upload, a video frame) is reduced
    once by a whole factor, then each view to under twice its own need, before it is cut and resized:
    close to resizing each view from the whole photo, and unchanged under twice every view's need."""
    emb = FakeEmbedder()
    pre = PooledViewEmbedder(emb, view_set("regions")).preprocess  # needs 32 px: the 0.5 crop of a 16 px input
    base = emb.preprocess
    g = Image.linear_gradient("L")  # a smooth photo: a box filter and a triangle one agree on it
    big = Image.merge("RGB", (g, Image.radial_gradient("L"), g.rotate(90))).resize((320, 320))
    got = pre(big)
    np.testing.assert_array_equal(got, np.stack([v(big.reduce(10)) for v in pre.views]))  # reduced once first
    np.testing.assert_array_equal(pre.views[0](big), base(big))  # the identity view is the base preprocessing
    np.testing.assert_array_equal(base(big), base.to_array(base.pixels(big.reduce(20))))
    direct = np.stack([base.to_array(base.pixels(v.view.crop(big))) for v in pre.views])  # from the whole photo
    assert np.abs(got.astype(int) - direct).mean(axis=(1, 2, 3)).max() < 2
    small = product_photo(2, 0, shop=False, size=30)  # under twice every view's need: as before
    np.testing.assert_array_equal(pre(small), np.stack([base.to_array(base.pixels(v.view.crop(small)))
                                                        for v in pre.views]))


def test_confusion_plot_of_many_classes_shows_those_with_most_errors(tmp_path) -> None:
    """1,000 classes made a 21,000-px canvas (3.4 GB) and killed eval classify after its training."""
    from PIL import Image

    from productlens.eval.classification import MAX_PLOT_CLASSES, plot_confusion

    rng = np.random.default_rng(0)
    y = rng.integers(0, 1000, 3000)
    pred = np.where(rng.random(3000) < 0.7, y, rng.integers(0, 1000, 3000))
    out = plot_confusion(y, pred, [f"c{i}" for i in range(1000)], tmp_path / "cm.png")
    w, h = Image.open(out).size
    assert max(w, h) <= (0.18 * MAX_PLOT_CLASSES + 2) * 120 + 10


def test_coarse_levels_that_do_not_nest_are_said(caplog) -> None:
    with caplog.at_level("WARNING", logger="productlens.models.classifiers.hierarchy"):
        build_hierarchy("product", ["a", "b", "c", "d"], {"dept": ["d0", "d0", "d1", "d1"],
                                                          "root": ["food", "food", "toys", "toys"]})
        assert caplog.text == ""  # dept nests in root
        build_hierarchy("product", ["a", "b", "c", "d"], {"dept": ["d0", "d0", "d1", "d1"],
                                                          "root": ["food", "toys", "toys", "toys"]})
    assert "levels dept and root do not nest: dept 'd0' falls under root 'food' and 'toys'" in caplog.text

"""Training and prediction end to end: feature cache, bad images, hierarchy, onnx:PATH backbones."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from helpers import product_photo
from productlens.data.augment import View, view_set
from productlens.data.labelled import LabelError, read_labelled
from productlens.models import embedders
from productlens.models.classifiers.head import HeadConfig
from productlens.models.classifiers.model import load_classifier
from productlens.pipeline import features_cache
from productlens.pipeline.classify import TrainOptions, block_holdout, train_classifier
from productlens.pipeline.features_cache import FeatureCache, embed_views, source_key
from productlens.types import ImageError, ProductLensError
from test_classify import FakeEmbedder

FAST = HeadConfig(epochs=8)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private feature cache and the fake backbone registered as 'fake-tiny'."""
    monkeypatch.setenv("PRODUCTLENS_FEATURE_CACHE", str(tmp_path / "features"))
    monkeypatch.setitem(embedders._CACHE, "fake-tiny", FakeEmbedder())


def write_set(root, n_products=6, per_product=6, corrupt=False, name="train.csv", offset=0):
    """Generated photos of products 0..n-1 in a csv: image, sku, dept (sku // 3)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_products):
        for v in range(per_product):
            img = f"img/{name[:-4]}_{p}_{v}.jpg"
            product_photo(p, v + offset, shop=False, size=64).save(root / img)
            rows.append({"image": img, "sku": f"s{p:02d}", "dept": f"d{p // 3}"})
    if corrupt:
        (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        rows.append({"image": "img/broken.jpg", "sku": "s00", "dept": "d0"})
        rows.append({"image": "img/missing.jpg", "sku": "s01", "dept": "d0"})
    with open(root / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / name


def test_embed_views_caches_and_reports_bad_images_once(tmp_path) -> None:
    emb = embedders.get_embedder("fake-tiny")
    csv_path = write_set(tmp_path, 2, 3, corrupt=True)
    items = read_labelled(csv_path, label="sku").items
    views = view_set("flip")
    first = embed_views(emb, items, views, progress=False)
    assert first.vectors.shape == (2, 6, 48) and first.ok.tolist() == [0, 1, 2, 3, 4, 5]
    assert len(first.errors) == 2 and "broken.jpg" in first.errors[0][2] and "missing.jpg" in first.errors[1][2]
    calls = emb.calls
    again = embed_views(emb, items, views, progress=False)
    assert emb.calls == calls and np.array_equal(again.vectors, first.vectors)  # all from the cache
    assert np.allclose(first.vectors[1], embed_views(emb, items[:6], [View(flip=True)], cache=False,
                                                     progress=False).vectors[0])
    copy = tmp_path / "copy"  # the same photos in another folder, with other modification times
    copy.mkdir()
    moved = []
    for i, item in enumerate(items[:6]):
        target = copy / f"renamed_{i}.jpg"
        target.write_bytes(open(item.image, "rb").read())
        os.utime(target, ns=(10**9 * (i + 7), 10**9 * (i + 7)))
        moved.append(str(target))
    calls = emb.calls
    from_copy = embed_views(emb, moved, views, progress=False)
    assert emb.calls == calls and np.array_equal(from_copy.vectors, first.vectors)  # keyed by content
    calls = emb.calls
    product_photo(5, 9, shop=False, size=64).save(items[0].image)  # a changed file misses the cache
    os.utime(items[0].image, ns=(1, 1))
    changed = embed_views(emb, items, views, progress=False)
    assert emb.calls == calls + 2 and len(changed.errors) == 2  # the changed file, under both views
    assert not np.array_equal(changed.vectors[:, 0], first.vectors[:, 0])
    assert np.array_equal(changed.vectors[:, 1:], first.vectors[:, 1:])
    assert source_key("https://x/y.jpg") is None and source_key(b"bytes") is None


def test_embed_views_decodes_each_image_once_and_keeps_cached_views(tmp_path, monkeypatch) -> None:
    """Every view of an image comes from one decode (a 12 MP phone photo costs more to decode than to
    embed under one view); views already cached keep their vectors when others are added."""
    from productlens.data.augment import ViewEmbedder
    from productlens.pipeline import embed as embed_module

    emb = embedders.get_embedder("fake-tiny")
    items = read_labelled(write_set(tmp_path, 2, 3), label="sku").items
    decoded = []
    real_load = embed_module.load_image
    monkeypatch.setattr(embed_module, "load_image", lambda src, **kw: decoded.append(src) or real_load(src, **kw))
    views = view_set("regions")
    feats = embed_views(emb, items, views, cache=False, progress=False)
    assert len(decoded) == len(items) and feats.vectors.shape == (7, 6, 48)
    size = max(ViewEmbedder(emb, view).preprocess.size for view in views)  # the closest crop's draft size
    photos = [real_load(it.image, target=size) for it in items]
    for v, view in enumerate(views):  # the same vectors as embedding each view of that decode on its own
        one = ViewEmbedder(emb, view)
        assert np.allclose(feats.vectors[v], one.embed(np.stack([one.preprocess(im) for im in photos])), atol=2e-3)

    first = embed_views(emb, items[:4], views[:1], progress=False)  # the whole photo cached alone
    decoded.clear()
    calls = emb.calls
    both = embed_views(emb, items, views[:2], progress=False)
    # only what is missing runs: the second view of the four cached photos, both views of the two others
    assert sorted(decoded) == sorted(it.image for it in items) and emb.calls == calls + 4 + 2 * 2
    assert np.array_equal(both.vectors[0, :4], first.vectors[0])  # the cached view is kept as cached
    decoded.clear()
    again = embed_views(emb, items, views[:2], progress=False)
    assert decoded == [] and np.array_equal(again.vectors, both.vectors)


def test_embed_views_groups_images_by_the_views_they_miss() -> None:
    from productlens.pipeline.features_cache import MAX_VIEW_GROUPS, _missing_groups

    have = np.array([[1, 1, 0, 1, 0], [0, 1, 0, 0, 1], [0, 1, 0, 0, 1]], bool)  # 3 views x 5 images
    assert [(v, m.tolist()) for v, m in _missing_groups(have)] == [([1, 2], [0, 3]), ([0, 1, 2], [2]), ([0], [4])]
    assert _missing_groups(np.ones((2, 3), bool)) == []
    n = MAX_VIEW_GROUPS + 1  # more patterns than that: every view of every image that misses one
    have = ~np.eye(n, dtype=bool)
    (views, todo), = _missing_groups(have)
    assert views == list(range(n)) and todo.tolist() == list(range(n))


def test_feature_cache_misses_when_an_onnx_models_preprocessing_changes(tmp_path) -> None:
    """A user's onnx:PATH model keeps its preprocessing in a JSON file beside it: editing that file
    (not the model) must not bring back vectors made under the old preprocessing."""
    from helpers import tiny_embedder

    name = tiny_embedder(tmp_path)
    photo = tmp_path / "a.jpg"
    product_photo(1, 0, shop=False, size=48).save(photo)
    before = embed_views(embedders.create_embedder(name), [str(photo)], [View()], progress=False).vectors
    (tmp_path / "tiny.json").write_text(json.dumps({"size": 16, "resize": "pad", "mean": [0.1, 0.2, 0.3]}))
    emb = embedders.create_embedder(name)
    after = embed_views(emb, [str(photo)], [View()], progress=False).vectors
    fresh = embed_views(emb, [str(photo)], [View()], cache=False, progress=False).vectors
    assert np.array_equal(after, fresh) and not np.allclose(after, before)


def test_feature_cache_merges_shards(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(features_cache, "MAX_SHARDS", 3)
    emb = FakeEmbedder()
    cache = FeatureCache(emb, tmp_path / "c")
    keys = [f"{i:040x}" for i in range(10)]
    vecs = np.random.default_rng(0).normal(size=(10, 48)).astype(np.float16)
    for i in range(0, 10, 2):
        cache.put("v", keys[i:i + 2], vecs[i:i + 2])
    assert len(list(cache._view_dir("v").glob("shard-*.npz"))) <= 3
    found, got = FeatureCache(emb, tmp_path / "c").get("v", keys + [None, "f" * 40])
    assert found.tolist() == [True] * 10 + [False, False] and np.array_equal(got, vecs.astype(np.float32))


def test_block_holdout_takes_contiguous_files_of_each_class() -> None:
    y = np.array([0] * 8 + [1] * 2 + [2] * 40)
    names = [f"a{i}" for i in range(8)][::-1] + ["b0", "b1"] + [f"c{i:02d}" for i in range(40)]
    held = block_holdout(names, y, 0.25)
    assert held[:8].sum() == 2 and not held[8:10].any() and held[10:].sum() == 10
    order = np.argsort(names[:8])  # the two held 'a' files are neighbours in name order (or wrap round)
    pos = sorted(np.flatnonzero(held[:8][order]))
    assert pos[1] - pos[0] in (1, 7)
    runs = np.flatnonzero(np.diff(np.r_[held[10:], held[10]].astype(int)))  # one block, maybe wrapping
    assert len(runs) <= 2
    starts = {int(np.flatnonzero(block_holdout(names, y, 0.25, seed=s)[10:])[0]) for s in range(8)}
    assert len(starts) > 1  # not always the last files


def test_train_predict_save_load_with_hierarchy(tmp_path) -> None:
    train = read_labelled(write_set(tmp_path, corrupt=True), label="sku", parents=["dept"])
    res = train_classifier(train, tmp_path / "model", TrainOptions("fake-tiny", views="flip", tta="flip", head=FAST),
                           progress=False)
    assert len(res.errors) == 2
    m = res.classifier.metrics
    assert m["classes"] == 6 and m["train_images"] == 36 and m["holdout_images"] == 6 and m["skipped_images"] == 2
    clf = load_classifier(tmp_path / "model")
    assert clf.embedder_name == "fake-tiny" and len(clf.views) == 2
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["embedder"] == "fake-tiny" and config["training"]["head"]["epochs"] == 8
    assert config["format"] == 1  # no companions: every version reads it
    test_csv = write_set(tmp_path, name="test.csv", offset=50)
    test = read_labelled(test_csv, label="sku")
    pred = clf.predict_batch(test.items)
    assert (np.array(pred.labels)[pred.probs.argmax(1)] == np.array(test.labels)).mean() > 0.5  # chance: 0.17
    assert np.allclose(pred.probs.sum(1), 1, atol=1e-4)
    top = clf.predict(test.items[0].image, k=3)
    assert len(top) == 1 and len(top[0]) == 3 and top[0][0][1] >= top[0][1][1] >= top[0][2][1]
    fine, coarse = clf.predict(test.items[0].image, k=6)[0], clf.predict(test.items[0].image, k=2, level="dept")[0]
    parent = {f"s{p:02d}": f"d{p // 3}" for p in range(6)}
    assert coarse[0][1] == pytest.approx(sum(p for lab, p in fine if parent[lab] == coarse[0][0]), abs=1e-4)
    with pytest.raises(ImageError, match="missing.jpg"):
        clf.predict([test.items[0].image, str(tmp_path / "img" / "missing.jpg")])


def test_training_refuses_single_example_classes_after_bad_images(tmp_path) -> None:
    csv_path = tmp_path / "t.csv"
    write_set(tmp_path, 2, 3)
    (tmp_path / "img" / "bad.jpg").write_bytes(b"")
    csv_path.write_text("image,c\nimg/train_0_0.jpg,a\nimg/train_0_1.jpg,a\nimg/train_1_0.jpg,b\nimg/bad.jpg,b\n")
    with pytest.raises(LabelError, match="'b' \\(1\\)"):
        train_classifier(read_labelled(csv_path, label="c"), options=TrainOptions("fake-tiny", views="none",
                                                                                  tta="none", head=FAST),
                         progress=False)


def test_a_temperature_fitted_on_few_classes_is_said(tmp_path, caplog) -> None:
    """Classes under 4 photos give no held-out photo: with none, the probabilities had stayed uncalibrated
    (temperature 1.0) without a word."""
    write_set(tmp_path, 4, 3)
    options = TrainOptions("fake-tiny", views="none", tta="none", head=FAST)
    with caplog.at_level("WARNING", logger="productlens.pipeline.classify"):
        res = train_classifier(read_labelled(tmp_path / "train.csv", label="sku"), options=options, progress=False)
    assert res.classifier.temperature == 1.0
    assert "held-out photos of 0 of 4 classes" in caplog.text and "stays 1.0, uncalibrated" in caplog.text


def test_onnx_backbone_is_recorded_and_recreated(tmp_path) -> None:
    from test_embedders import _tiny_onnx

    model = tmp_path / "tower.onnx"
    _tiny_onnx(model)
    (tmp_path / "tower.json").write_text(json.dumps({"size": 16, "resize": "squash"}))
    name = f"onnx:{model}"
    train = read_labelled(write_set(tmp_path, 3, 5), label="sku")
    train_classifier(train, tmp_path / "m", TrainOptions(name, views="flip", tta="none", head=FAST), progress=False)
    clf = load_classifier(tmp_path / "m")
    assert clf.embedder_name == name and clf.fingerprint
    assert len(clf.predict(train.items[0].image, k=2)[0]) == 2
    with pytest.raises(ProductLensError, match="not 'efficientnet-lite2'"):
        load_classifier(tmp_path / "m", embedder="efficientnet-lite2")
    (tmp_path / "tower.json").write_text(json.dumps({"size": 16, "resize": "pad"}))  # only the preprocessing
    with pytest.raises(ProductLensError, match="preprocessing of .*tower.onnx changed"):
        load_classifier(tmp_path / "m").predict(train.items[0].image)
    (tmp_path / "tower.json").write_text(json.dumps({"size": 16, "resize": "squash"}))
    assert len(load_classifier(tmp_path / "m").predict(train.items[0].image, k=2)[0]) == 2  # restored
    _tiny_onnx(model, out_map=True)  # the model file changes in place
    with pytest.raises(ProductLensError, match="changed since this classifier was trained"):
        load_classifier(tmp_path / "m").predict(train.items[0].image)


def test_default_views_are_the_seven_regions_for_training_and_prediction(tmp_path) -> None:
    from productlens.data.augment import view_set

    train = read_labelled(write_set(tmp_path, 3, 6), label="sku")
    clf = train_classifier(train, None, TrainOptions("fake-tiny", head=FAST), progress=False).classifier
    regions = [v.key for v in view_set("regions")]
    assert clf.views == regions and clf.config["training"]["views"] == "regions"
    assert TrainOptions(finetune=True).train_views == "regions"  # fine-tuned features too


def test_default_backbone_is_the_ensemble_and_lite2_when_fine_tuning() -> None:
    from productlens.config import CLASSIFIER_EMBEDDER, DEFAULT_EMBEDDER

    assert TrainOptions().backbone == CLASSIFIER_EMBEDDER
    assert CLASSIFIER_EMBEDDER.startswith("ensemble:") and DEFAULT_EMBEDDER in CLASSIFIER_EMBEDDER
    assert TrainOptions(finetune=True).backbone == DEFAULT_EMBEDDER  # an ensemble is not fine-tuned
    assert TrainOptions("mobilenetv2", finetune=True).backbone == "mobilenetv2"
    assert TrainOptions().to_json()["embedder"] == CLASSIFIER_EMBEDDER


def test_training_refuses_a_class_whose_photos_are_all_unreadable(tmp_path) -> None:
    """The per-class check runs again after decoding: a class with no readable photo is named, not kept."""
    (tmp_path / "onecls" / "a").mkdir(parents=True)
    (tmp_path / "onecls" / "a" / "x.jpg").write_text("not a photo")
    (tmp_path / "onecls" / "a" / "y.jpg").write_bytes(b"")
    for p, c in enumerate("bc"):
        for v in range(2):
            path = tmp_path / "onecls" / c / f"{v}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            product_photo(p, v, shop=False, size=64).save(path)
    options = TrainOptions("fake-tiny", views="none", tta="none", head=FAST)
    with pytest.raises(LabelError, match="fewer than 2 readable images: 'a' \\(0\\)"):
        train_classifier(read_labelled(tmp_path / "onecls"), tmp_path / "m", options, progress=False)
    assert not (tmp_path / "m").exists()
    for c in "bc":  # no readable photo at all
        for f in (tmp_path / "onecls" / c).iterdir():
            f.write_bytes(b"")
    with pytest.raises(LabelError, match="no training image could be read \\(6 skipped\\): .*x.jpg"):
        train_classifier(read_labelled(tmp_path / "onecls"), options=options, progress=False)


def test_finetune_checks_readable_classes_before_fine_tuning(tmp_path, monkeypatch) -> None:
    """A class left with fewer than two readable photos was named only after minutes of fine-tuning."""
    from productlens.pipeline import classify as classify_mod

    csv_path = write_set(tmp_path, 3, 3)
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    with open(csv_path, "a") as f:
        f.write("img/empty.jpg,s99,d9\nimg/missing.jpg,s99,d9\n")

    def never(*a, **k):
        raise AssertionError("fine-tuned before the photos were checked")

    monkeypatch.setattr(classify_mod, "_finetuned_backbone", never)
    data = read_labelled(csv_path, label="sku")
    with pytest.raises(ProductLensError, match="s99"):
        classify_mod.train_classifier(data, None, classify_mod.TrainOptions(embedder="efficientnet-lite2",
                                                                            finetune=True), progress=False)

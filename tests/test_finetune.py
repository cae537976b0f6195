"""Fine-tuning the last backbone blocks: a model every part of productlens can load."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import product_photo, write_dataset
from productlens.data.readers import read_gallery, read_labelled_csv, read_queries
from productlens.models.embedders import create_embedder
from productlens.models.finetune import FinetuneConfig, finetune_backbone
from productlens.models.finetune.augment import random_crop, random_view
from productlens.models.finetune.train import CLASSIFIER_RECIPES, RECIPES
from productlens.pipeline.catalog import Catalog
from productlens.pipeline.catalog_build import FINETUNE_SELLER_REPEATS, build_catalog
from productlens.types import Item, ProductLensError

MODEL = "efficientnet-lite0"
TINY = FinetuneConfig(backbone=MODEL, views=2, epochs=2, batch_size=8)


def test_random_views_stay_inside_and_vary() -> None:
    img = product_photo(1, 0, shop=False, size=120)
    rng = random.Random(0)
    crops = [random_crop(img, rng) for _ in range(20)]
    assert all(0 < c.width <= 120 and 0 < c.height <= 120 for c in crops)
    assert len({c.size for c in crops}) > 1
    views = [np.asarray(random_view(img, random.Random(s))) for s in range(3)]
    assert all(v.ndim == 3 and v.shape[2] == 3 for v in views)
    assert not np.array_equal(views[0], views[1])


@pytest.mark.slow
def test_finetune_writes_a_loadable_model_and_skips_bad_photos(tmp_path) -> None:
    import torch

    items, labels = [], []
    for p in range(3):
        for v in range(4):
            path = tmp_path / f"{p}_{v}.jpg"
            product_photo(p, v, shop=False).save(path)
            items.append(Item(id=len(items), image=str(path)))
            labels.append(f"product-{p}")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    items.append(Item(id=99, image=str(tmp_path / "bad.jpg")))
    labels.append("product-0")
    repeats = [3] + [1] * 12  # the first photo counts three times; the bad one is skipped
    state = torch.random.get_rng_state()
    res = finetune_backbone(items, labels, tmp_path / "model", TINY, progress=False, repeats=repeats)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded inside; the caller's state is left alone
    assert [s[0] for s in res.skipped] == [12] and "bad.jpg" in res.skipped[0][1]
    assert res.path.is_file() and (tmp_path / "model" / "model.json").is_file()
    meta = json.loads((tmp_path / "model" / "finetune.json").read_text())
    assert meta["photos"] == 12 and meta["photos_with_repeats"] == 14 and meta["labels"] == 3
    assert (meta["train_from_block"], meta["views"], meta["epochs"]) == (RECIPES[MODEL][0], 2, 2)  # TINY's own
    assert np.isfinite(meta["final_loss"])
    emb = create_embedder(res.embedder_name)
    base = create_embedder(MODEL)
    img = [Image.open(items[0].image)]
    tuned, plain = emb.embed_images(img), base.embed_images(img)
    assert tuned.shape == plain.shape == (1, 1280)
    assert not np.allclose(tuned, plain, atol=1e-4)  # the last blocks changed


def test_finetune_refuses_unsupported_backbone_and_single_label(tmp_path) -> None:
    path = tmp_path / "a.jpg"
    product_photo(0, 0, shop=False).save(path)
    items = [Item(id=0, image=str(path)), Item(id=1, image=str(path))]
    with pytest.raises(ProductLensError, match="supports"):
        finetune_backbone(items, [0, 1], tmp_path / "m", FinetuneConfig(backbone="mobilenetv2"), progress=False)
    with pytest.raises(ProductLensError, match="2 labels"):
        finetune_backbone(items, [0, 0], tmp_path / "m", TINY, progress=False)
    with pytest.raises(ProductLensError, match="labels for"):
        finetune_backbone(items, [0], tmp_path / "m", TINY, progress=False)
    with pytest.raises(ProductLensError, match="repeats"):
        finetune_backbone(items, [0, 1], tmp_path / "m", TINY, progress=False, repeats=[1, 0])


def test_config_takes_the_backbones_recipe_where_a_setting_is_unset(tmp_path) -> None:
    cfg = FinetuneConfig().resolved()
    assert (cfg.train_from, cfg.views, cfg.epochs) == RECIPES[cfg.backbone] and cfg.backbone == "efficientnet-lite2"
    mine = FinetuneConfig(backbone="efficientnet-lite0", views=1, train_from=14).resolved()
    assert (mine.train_from, mine.views, mine.epochs) == (14, 1, RECIPES["efficientnet-lite0"][2])
    clf = FinetuneConfig.for_classifier("efficientnet-lite2").resolved()  # a classifier trains deeper
    assert (clf.train_from, clf.views, clf.epochs) == CLASSIFIER_RECIPES["efficientnet-lite2"] != RECIPES[clf.backbone]
    lite0 = FinetuneConfig.for_classifier("efficientnet-lite0").resolved()  # no recipe of its own: search's
    assert (lite0.train_from, lite0.views, lite0.epochs) == RECIPES["efficientnet-lite0"]
    path = tmp_path / "a.jpg"
    product_photo(0, 0, shop=False).save(path)
    items = [Item(id=0, image=str(path)), Item(id=1, image=str(path))]
    with pytest.raises(ProductLensError, match="train_from must be in"):
        finetune_backbone(items, [0, 1], tmp_path / "m", dataclasses.replace(TINY, train_from=99), progress=False)


@pytest.mark.parametrize("catalog_mode", [False, True])
def test_catalog_finetuning_reads_seller_labels_only_in_catalog_mode(tmp_path, monkeypatch, catalog_mode) -> None:
    from productlens.models import finetune

    ds = write_dataset(tmp_path / "ds", n_products=3, per_product=2)
    gallery = read_gallery(ds["gallery"])
    if not catalog_mode:  # as `eval retrieval` hands a challenge gallery over
        gallery = [dataclasses.replace(g, product_id=None) for g in gallery]
    seen = {}

    def spy(items, labels, out_dir, config=None, progress=True, repeats=None):
        seen.update(images=[str(it.image) for it in items], labels=list(labels), repeats=list(repeats),
                    recipe=(config.train_from, config.views, config.epochs))
        raise ProductLensError("stop after the call")

    monkeypatch.setattr(finetune, "finetune_backbone", spy)
    monkeypatch.setitem(CLASSIFIER_RECIPES, MODEL, (14, 3, 2))  # a classifier recipe for the test's backbone
    train = [t for t in read_labelled_csv(ds["train"]) if t.product_id != 2]  # product 2: a seller photo only
    with pytest.raises(ProductLensError, match="stop after"):
        build_catalog(gallery, tmp_path / "cat", embedder=MODEL, train=train,
                      finetune=True, use_gallery_labels=catalog_mode, progress=False)
    shop = [i for i, name in enumerate(seen["images"]) if "shop_" in name]
    assert len(seen["images"]) == 4 + len(shop)
    assert [seen["labels"][i] for i in shop] == ([0, 1] if catalog_mode else [])
    assert all(seen["repeats"][i] == FINETUNE_SELLER_REPEATS for i in shop)
    assert sum(seen["repeats"]) == 4 + len(shop) * FINETUNE_SELLER_REPEATS
    # catalog mode learns the catalog's products as a classifier does; challenge mode keeps search's recipe
    assert seen["recipe"] == ((14, 3, 2) if catalog_mode else (None, None, None))
    assert not (tmp_path / "cat").exists()  # nothing half-written


@pytest.mark.slow
def test_catalog_with_finetuned_backbone_moves_and_reopens(tmp_path) -> None:
    ds = write_dataset(tmp_path / "ds")
    gallery = read_gallery(ds["gallery"])
    train = read_labelled_csv(ds["train"])
    cat, errors = build_catalog(gallery, tmp_path / "cat", embedder=MODEL, train=train, finetune=True,
                                progress=False)
    assert errors == [] and (tmp_path / "cat" / "backbone" / "model.onnx").is_file()
    assert cat.store.get_info("embedder") == "onnx:backbone/model.onnx"
    query = read_queries(ds["queries"])[0]
    hits = [(h.id, round(h.score, 5)) for h in cat.search(query.image, k=3)]
    cat.close()
    shutil.move(tmp_path / "cat", tmp_path / "moved")  # the model path is relative to the catalog
    with Catalog.open(tmp_path / "moved") as again:
        assert [(h.id, round(h.score, 5)) for h in again.search(query.image, k=3)] == hits
    with pytest.raises(ProductLensError, match="labelled training photos"):
        build_catalog(gallery, tmp_path / "c2", embedder=MODEL, finetune=True, progress=False)

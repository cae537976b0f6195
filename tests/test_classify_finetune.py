"""A classifier trained with a fine-tuned backbone carries it (and its frozen companions) in its folder."""

from __future__ import annotations

import gc
import json
import logging
import shutil

import numpy as np
import pytest

from productlens.data.labelled import read_labelled
from productlens.models import embedders
from productlens.models.classifiers.head import HeadConfig
from productlens.models.classifiers.model import load_classifier
from productlens.pipeline.classify import TrainOptions, train_classifier
from productlens.types import ProductLensError
from test_classify import FakeEmbedder
from test_classify_pipeline import write_set


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRODUCTLENS_FEATURE_CACHE", str(tmp_path / "features"))


@pytest.mark.slow
def test_finetuned_classifier_is_moved_and_reloaded_with_identical_predictions(tmp_path) -> None:
    write_set(tmp_path, n_products=3, per_product=6)
    data = read_labelled(tmp_path / "train.csv", label="sku")
    options = TrainOptions(embedder="efficientnet-lite0", views="flip", tta="flip", finetune=True,
                           head=HeadConfig(epochs=5))
    res = train_classifier(data, tmp_path / "model", options, progress=False)
    folder = tmp_path / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["embedder"] == "onnx:backbone/model.onnx" and config["training"]["finetune"] is True
    assert (folder / "backbone" / "model.onnx").is_file() and (folder / "backbone" / "model.json").is_file()
    # the other bundled backbones join the fine-tuned one, frozen, and are recorded with it
    assert config["companions"] == ["efficientnet-lite2", "mobilenetv2"] and config["training"]["companions"] is True
    assert config["format"] == 2  # versions that predate companions refuse it by its format
    assert config["dim"] == res.classifier.embedder.dim == sum(embedders.get_embedder(m).dim for m in
                                                                   ["efficientnet-lite0", *config["companions"]])
    tuned = res.classifier.metrics["finetune"]
    # the calibration hold-out (and any label the noise filter suspects) is kept out of fine-tuning
    m = res.classifier.metrics
    assert tuned["photos"] == m["train_images"] - m["holdout_images"] - tuned["left_out_as_noisy"]
    assert tuned["left_out_as_noisy"] == 0  # clean labels
    images = [it.image for it in data.items[::5]]
    before = res.classifier.predict(images, k=2)
    temp_root = res.classifier.root
    assert temp_root.is_dir() and temp_root != folder
    del res
    gc.collect()
    assert not temp_root.exists()  # the temporary copy goes with the trained object
    shutil.move(str(folder), str(tmp_path / "moved"))
    after = load_classifier(tmp_path / "moved").predict(images, k=2)
    assert [[lab for lab, _ in p] for p in before] == [[lab for lab, _ in p] for p in after]
    np.testing.assert_allclose([[pr for _, pr in p] for p in before], [[pr for _, pr in p] for p in after],
                               atol=1e-5)


def test_finetune_on_a_backbone_it_cannot_tune_trains_frozen(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(embedders._CACHE, "fake-tiny", FakeEmbedder())
    write_set(tmp_path, n_products=3, per_product=6)
    data = read_labelled(tmp_path / "train.csv", label="sku")
    with caplog.at_level(logging.WARNING):
        res = train_classifier(data, tmp_path / "model", TrainOptions(embedder="fake-tiny", views="flip",
                               tta="none", finetune=True, head=HeadConfig(epochs=3)), progress=False)
    assert "cannot be fine-tuned" in caplog.text
    assert res.classifier.embedder_name == "fake-tiny" and not (tmp_path / "model" / "backbone").exists()
    assert load_classifier(tmp_path / "model").predict(data.items[0].image, k=1)[0][0][0] in data.classes()


def test_relative_backbone_needs_the_classifier_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(embedders._CACHE, "fake-tiny", FakeEmbedder())
    write_set(tmp_path, n_products=2, per_product=4)
    data = read_labelled(tmp_path / "train.csv", label="sku")
    clf = train_classifier(data, None, TrainOptions(embedder="fake-tiny", views="none", tta="none",
                                                     head=HeadConfig(epochs=2)), progress=False).classifier
    clf.embedder_name, clf._embedder = "onnx:backbone/model.onnx", None
    with pytest.raises(ProductLensError, match="relative to a classifier folder"):
        clf.embedder

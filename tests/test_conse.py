"""ImageNet concepts (ConSE) for zero-shot categories: class names, the classifier, the mix."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import product_photo
from productlens.heads.conse import imagenet_classes, mix, standardise


def test_imagenet_class_names_ship_in_model_order():
    names = imagenet_classes()
    assert len(names) == 1000
    assert names[0].startswith("tench") and names[954].startswith("banana") and names[-1].startswith("toilet tissue")


def test_standardise_and_mix():
    a = np.array([[0.1, 0.3, 0.2], [0.5, 0.5, 0.5]], np.float32)
    z = standardise(a)
    np.testing.assert_allclose(z.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(z[0].std(), 1, atol=1e-5)
    assert not z[1].any()  # a row with no spread stays flat instead of dividing by zero
    noise = np.array([[0.4213, 0.4213 + 3e-8, 0.4213 - 3e-8]], np.float32)  # "Banana", "banana", "BANANA"
    assert not standardise(noise).any()  # float32 noise is no spread: it had become 1.2 / -1.2
    c = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    assert (mix(a, c, 0.0).argmax(1) == [1, 0]).all()  # weight 0: the alignment's order
    assert mix(a, c, 10.0).argmax(1).tolist() == [0, 2]  # a large weight: the concepts' order
    with pytest.raises(ValueError, match="shape"):
        mix(a, c[:, :2], 0.5)


@pytest.mark.slow
def test_concepts_from_the_imagenet_classifier(tmp_path):
    pytest.importorskip("sentence_transformers")
    from productlens.heads.conse import get_concepts

    con = get_concepts()
    probs = con.classifier.embed_images([product_photo(0, 0, shop=True), product_photo(1, 0, shop=False)])
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    onehot = np.zeros((1, 1000), np.float32)
    onehot[0, 954] = 1.0
    v = con.from_probabilities(onehot)[0]
    np.testing.assert_allclose(v, con.class_vectors[954] / np.linalg.norm(con.class_vectors[954]), atol=1e-5)
    good = tmp_path / "p.png"
    product_photo(2, 0, shop=True).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = con.embed([str(bad), str(good)])
    assert res.ok.tolist() == [1] and res.vectors.shape == (1, con.class_vectors.shape[1])
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    assert len(res.errors) == 1 and "bad.jpg" in res.errors[0][2]

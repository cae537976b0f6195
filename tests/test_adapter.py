"""The catalog adapter: fit, transform, persistence, backbone check."""

import numpy as np
import pytest

from productlens.heads.adapter import Adapter, fit_adapter
from productlens.models.embedders.base import l2_normalize
from productlens.types import ProductLensError


def _domains(seed=0, n_prod=6, per=10, dim=32):
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(n_prod, dim))
    shift_q, shift_g = rng.normal(size=dim) * 3, rng.normal(size=dim) * 3  # domain offsets
    yq = np.repeat(np.arange(n_prod), per)
    q = l2_normalize(protos[yq] + shift_q + rng.normal(scale=0.7, size=(len(yq), dim)))
    g = l2_normalize(protos + shift_g + rng.normal(scale=0.3, size=(n_prod, dim)))
    return q, yq, g


def test_adapter_improves_cross_domain_matching() -> None:
    q, yq, g = _domains()
    train, test = np.arange(len(q)) % 2 == 0, np.arange(len(q)) % 2 == 1
    ad = fit_adapter("bb", q[train], yq[train], gallery_vectors=g)
    plain = (np.argmax(q[test] @ g.T, 1) == yq[test]).mean()
    adapted = (np.argmax(ad.transform(q[test], "query") @ ad.transform(g, "gallery").T, 1) == yq[test]).mean()
    assert adapted > plain and adapted >= 0.9
    out = ad.transform(q[:3], "query")
    assert out.shape == (3, 32 + 6) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_adapter_round_trip_and_backbone_check(tmp_path) -> None:
    q, yq, g = _domains(1)
    ad = fit_adapter("bb", q, yq, gallery_vectors=g, gallery_labels=np.arange(len(g)))
    ad.save(tmp_path / "adapter")
    ad.save(tmp_path / "adapter")  # replacing an existing adapter works
    back = Adapter.load(tmp_path / "adapter", backbone="bb")
    assert np.allclose(back.transform(q, "query"), ad.transform(q, "query"))
    with pytest.raises(ProductLensError, match="fitted on 'bb'"):
        Adapter.load(tmp_path / "adapter", backbone="other")
    with pytest.raises(ProductLensError, match="cannot read adapter"):
        Adapter.load(tmp_path / "nowhere")


def test_whitening_evens_out_the_principal_axes_and_is_saved() -> None:
    from productlens.heads.adapter import whitening

    rng = np.random.default_rng(3)
    X = rng.normal(size=(4000, 3)) * [10.0, 1.0, 0.1]  # variances 100, 1, 0.01 along the axes
    spread = np.sqrt(np.diag(np.cov((X @ whitening([(X, X.mean(axis=0))], power=0.5, shrink=0.0)).T)))
    assert spread.max() / spread.min() < 1.1  # full whitening: every axis alike
    partial = np.sort(np.sqrt(np.diag(np.cov((X @ whitening([(X, X.mean(axis=0))], power=0.15, shrink=0.3)).T))))
    assert 1 < partial[2] / partial[1] < 9.5 and partial[1] > partial[0]  # the strong axis weighs less, order kept
    q, yq, g = _domains(2)
    assert fit_adapter("bb", q, yq, gallery_vectors=g, whiten=0).whitening is None
    ad = fit_adapter("bb", q, yq, gallery_vectors=g)
    assert ad.whitening is not None and ad.whitening.shape == (32, 32)
    manual = l2_normalize((q[:4] - ad.query_mean) @ ad.whitening)
    assert np.allclose(ad.transform(q[:4], "query")[:, :32] * np.sqrt(1 + ad.weight), manual, atol=1e-5)


def test_adapters_without_whitening_still_load_and_newer_ones_are_refused(tmp_path) -> None:
    import json

    q, yq, g = _domains(4)
    old = fit_adapter("bb", q, yq, gallery_vectors=g, whiten=0)
    old.save(tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / "adapter.json").read_text())["version"] == 1
    back = Adapter.load(tmp_path / "v1")
    assert back.whitening is None and np.allclose(back.transform(q, "query"), old.transform(q, "query"))
    new = fit_adapter("bb", q, yq, gallery_vectors=g)
    new.save(tmp_path / "v2")
    config = json.loads((tmp_path / "v2" / "adapter.json").read_text())
    assert config["version"] == 2 and np.allclose(Adapter.load(tmp_path / "v2").whitening, new.whitening)
    config["version"] = 3
    (tmp_path / "v2" / "adapter.json").write_text(json.dumps(config))
    with pytest.raises(ProductLensError, match="newer productlens"):
        Adapter.load(tmp_path / "v2")


def test_adapter_needs_two_products() -> None:
    q, yq, _ = _domains()
    with pytest.raises(ProductLensError, match="at least 2"):
        fit_adapter("bb", q[:5], np.zeros(5, int))


def test_catalog_mode_leaves_products_without_shopper_photos_out_of_the_classifier() -> None:
    q, yq, g = _domains(2, n_prod=8)
    fit = yq < 4  # products 4-7 are new: the catalog has only their seller photos
    labels = np.arange(len(g))
    labels[0] = -1  # a distractor
    ad = fit_adapter("bb", q[fit], yq[fit], gallery_vectors=g, gallery_labels=labels)
    assert ad.classes.tolist() == [0, 1, 2, 3] and ad.weight == 2.0
    # the seller photos of products 1-3 trained it: not the challenge-mode classifier
    challenge = fit_adapter("bb", q[fit], yq[fit], gallery_vectors=g)
    assert not np.allclose(ad.coef, challenge.coef)
    # a catalog of products without shopper photos (or distractors only) adds nothing
    alone = fit_adapter("bb", q[fit], yq[fit], gallery_vectors=g, gallery_labels=np.full(len(g), 9))
    assert np.allclose(alone.coef, challenge.coef, atol=1e-4) and alone.classes.tolist() == [0, 1, 2, 3]

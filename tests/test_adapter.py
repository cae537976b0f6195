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


def test_adapter_needs_two_products() -> None:
    q, yq, _ = _domains()
    with pytest.raises(ProductLensError, match="at least 2"):
        fit_adapter("bb", q[:5], np.zeros(5, int))

"""Label audit: confident-learning flags, cross-class near-duplicates, the command."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from productlens.cli.main import app
from productlens.data.labelled import read_labelled
from productlens.eval.audit import audit_labels, confident_issues, near_duplicates
from productlens.models import embedders
from productlens.models.classifiers.head import HeadConfig
from productlens.pipeline.classify import TrainOptions
from test_classify import FakeEmbedder
from test_classify_pipeline import write_set


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PRODUCTLENS_FEATURE_CACHE", str(tmp_path / "features"))
    monkeypatch.setitem(embedders._CACHE, "fake-tiny", FakeEmbedder())


def test_confident_issues_flags_confidently_other_class() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0],   # labelled 0, 0, 0
                      [0.2, 0.8, 0.0], [0.15, 0.85, 0.0], [0.3, 0.3, 0.4]])  # labelled 1, 1, 2
    y = np.array([0, 0, 0, 1, 1, 2])
    idx, suggested = confident_issues(probs, y)
    assert idx.tolist() == [2] and suggested.tolist() == [1]
    probs[5] = [0.9, 0.05, 0.05]  # item 5 labelled 2 but confidently class 0 (threshold of 2 is its own 0.05)
    idx, suggested = confident_issues(probs, y)
    assert idx.tolist() == [5, 2] and suggested.tolist() == [0, 1]  # ranked by margin 0.85 > 0.8


def test_near_duplicates_across_classes_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 16))
    x[1] = x[0] + 0.01 * rng.normal(size=16)
    x[3] = x[2] + 0.01 * rng.normal(size=16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = near_duplicates(x, ["a", "b", "c", "c", "d", "e"], threshold=0.95)
    assert [(a, b) for a, b, _ in pairs] == [(0, 1)] and pairs[0][2] > 0.99
    assert near_duplicates(x[:1], ["a"]) == []


def test_audit_finds_swapped_labels_and_copies(tmp_path) -> None:
    csv_path = write_set(tmp_path, n_products=4, per_product=10)
    rows = list(csv.DictReader(csv_path.open()))
    swapped = [3, 14, 25]
    for i in swapped:  # three photos given the next product's label
        rows[i]["sku"] = f"s{(int(rows[i]['sku'][1:]) + 1) % 4:02d}"
    shutil.copy(tmp_path / rows[0]["image"], tmp_path / "img" / "copy.jpg")
    rows.append({"image": "img/copy.jpg", "sku": "s03", "dept": "d1"})  # an exact copy under another label
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = read_labelled(csv_path, label="sku")
    report = audit_labels(data, TrainOptions("fake-tiny", views="flip", tta="flip", head=HeadConfig(epochs=10)),
                          folds=4, progress=False)
    flagged = {s.index for s in report.suspects}
    assert len(flagged & set(swapped)) >= 2 and len(flagged) <= 8
    assert {s.by for s in report.suspects} <= {"confident learning", "small loss", "confident learning + small loss"}
    assert [s.margin for s in report.suspects] == sorted((s.margin for s in report.suspects), reverse=True)
    for s in report.suspects:
        if s.index in swapped:
            assert s.suggested == f"s{s.index // 10:02d}" and s.suggested_prob > s.given_prob
    assert any({d.first, d.second} == {0, 40} and d.cosine > 0.999 for d in report.duplicates)
    json.dumps(report.to_json())
    r = CliRunner().invoke(app, ["audit", "labels", str(csv_path), "--label", "sku", "--model", "fake-tiny",
                                 "--views", "flip", "--tta", "flip", "--folds", "4", "--out", str(tmp_path / "flags.csv"),
                                 "--plot", str(tmp_path / "flags.png"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["images"] == 41 and len(out["suspects"]) >= 2 and out["duplicates"]
    assert "probably mislabelled" in r.output and "near-duplicate pairs across classes" in r.output
    assert (tmp_path / "flags.csv").read_text().startswith("rank,image,given,suggested")
    flagged_rows = list(csv.DictReader(open(tmp_path / "flags.csv")))  # named as the training csv names them
    assert flagged_rows and {f["image"] for f in flagged_rows} <= {row["image"] for row in rows}
    assert Image.open(tmp_path / "flags.png").format == "PNG"


def test_audit_refuses_fewer_than_two_folds_and_reports_the_folds_used(tmp_path) -> None:
    from productlens.eval.audit import out_of_fold_probs
    from productlens.types import ProductLensError

    csv_path = write_set(tmp_path, n_products=3, per_product=3)
    for folds in ("0", "-1", "1"):
        r = CliRunner().invoke(app, ["audit", "labels", str(csv_path), "--label", "sku", "--model", "fake-tiny",
                                     "--folds", folds])
        assert r.exit_code == 2 and "--folds" in r.output and "fold out-of-fold" not in r.output
    options = TrainOptions("fake-tiny", views="none", tta="none", head=HeadConfig(epochs=5))
    data = read_labelled(csv_path, label="sku")
    with pytest.raises(ProductLensError, match="folds must be at least 2.*got 0"):
        audit_labels(data, options, folds=0, progress=False)
    with pytest.raises(ProductLensError, match="folds must be at least 2.*got 1"):
        out_of_fold_probs(None, None, options, folds=1)
    assert audit_labels(data, options, folds=5, progress=False).folds == 3  # the smallest class has 3 photos
    r = CliRunner().invoke(app, ["audit", "labels", str(csv_path), "--label", "sku", "--model", "fake-tiny",
                                 "--views", "none", "--tta", "none", "--folds", "5"])
    assert r.exit_code == 0, r.output
    assert "3-fold (5 asked; the smallest class has 3 images) out-of-fold probabilities" in r.output


def test_audit_names_a_class_whose_photos_are_all_unreadable(tmp_path) -> None:
    from productlens.data.labelled import LabelError

    csv_path = write_set(tmp_path, n_products=3, per_product=3)
    for v in range(3):
        (tmp_path / "img" / f"train_1_{v}.jpg").write_bytes(b"")
    with pytest.raises(LabelError, match="fewer than 2 readable images: 's01' \\(0\\)"):
        audit_labels(read_labelled(csv_path, label="sku"), TrainOptions("fake-tiny", views="none", tta="none"),
                     progress=False)

"""Classification on real grocery photos (a subset of ../shared/data/grocery; skipped when absent)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from productlens.cli.main import app

PRODUCTS = ("0", "3", "7", "12", "20", "31", "45", "60")  # spread over apples, juices, milk, vegetables...


def _subset(src, dst, per_product):
    rows = [r for r in csv.DictReader(src.open()) if r["product_id"] in PRODUCTS]
    kept, seen = [], {}
    for r in rows:
        seen[r["product_id"]] = seen.get(r["product_id"], 0) + 1
        if seen[r["product_id"]] <= per_product:
            kept.append({**r, "image": str((src.parent / r["image"]).resolve())})
    with dst.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    return dst, len(kept)


@pytest.mark.shared
@pytest.mark.slow
def test_eval_classify_and_audit_on_grocery_subset(shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRODUCTLENS_FEATURE_CACHE", str(tmp_path / "features"))
    grocery = shared_data / "grocery"
    if not (grocery / "train.csv").is_file():
        pytest.skip("grocery data not found")
    train, n_train = _subset(grocery / "train.csv", tmp_path / "train.csv", 12)
    val, n_val = _subset(grocery / "val.csv", tmp_path / "val.csv", 100)
    fast = ["--model", "efficientnet-lite0", "--views", "flip", "--tta", "flip", "--epochs", "15"]
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(val), "--label", "product_id",
                            "--json", *fast])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output.strip().splitlines()[-1])
    assert m["classes"] == 8 and m["train"] == n_train and m["test"] == n_val
    assert m["top1"] >= 0.7 and m["top5"] >= 0.95  # chance: 0.125 / 0.625
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(val), "--label", "category_id",
                            "--fine", "product_id", "--json", *fast])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["top1"] >= 0.7
    r = runner.invoke(app, ["audit", "labels", str(train), "--label", "product_id", "--model", "efficientnet-lite0",
                            "--views", "flip", "--tta", "flip", "--folds", "3", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    assert report["images"] == n_train and len(report["suspects"]) <= n_train // 5

"""Detection on real street-fashion photos (../shared/data/ccp; skipped when absent)."""

from __future__ import annotations

import json

import pytest

from productlens.data.coco import CocoSet, read_coco


@pytest.mark.shared
def test_ccp_annotations_read_cleanly(shared_data):
    train = read_coco(shared_data / "ccp" / "train.json")
    val = read_coco(shared_data / "ccp" / "val.json", categories=train.categories)
    assert len(train.categories) == 56 and not train.problems
    assert val.problems == [f"{val.path}: 1 image(s) with no boxes, kept as background: 0536.jpg"]
    assert (len(train.images), train.n_boxes) == (603, 3696)
    assert (len(val.images), val.n_boxes) == (201, 1283)
    assert all(im.path.is_file() for im in train.images[:20])


@pytest.mark.shared
@pytest.mark.slow
def test_train_and_detect_on_a_ccp_subset(shared_data, tmp_path):
    """The whole path on real photos, kept small: 24 photos, 2 epochs, 256 px."""
    from typer.testing import CliRunner

    from productlens.cli.main import app
    from productlens.models.detectors import load_detector
    from productlens.models.detectors.fcos import HeadConfig
    from productlens.pipeline.detect_train import DetectTrainOptions, train_detector

    full = read_coco(shared_data / "ccp" / "train.json")
    subset = CocoSet(full.path, full.categories, full.images[:24])
    opts = DetectTrainOptions(size=256, scales=(1.0,), epochs=2, head=HeadConfig(width=32, convs=1))
    metrics = train_detector(subset, tmp_path / "det", opts, progress=False)
    assert metrics["views"] == 48 and not metrics["skipped"]
    det = load_detector(tmp_path / "det")
    assert len(det.labels) == 56
    photo = str(full.images[30].path)
    res = CliRunner().invoke(app, ["detect", photo, "--model", str(tmp_path / "det"), "--min-score", "0.0",
                                   "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output.strip().splitlines()[-1])[0]
    assert rec["width"] == full.images[30].width and rec["detections"]
    assert all(d["tag"] in det.labels for d in rec["detections"])

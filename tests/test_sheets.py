"""Pictures of results: contact sheets, one box per object, and the --plot options behind them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import product_photo, write_coco
from productlens.eval.sheets import RIGHT, WRONG, Tile, chart_path, contact_sheet, sheet_path
from productlens.models.detectors.runtime import Detection, one_per_object
from productlens.types import Box, InvalidBox, ProductLensError


def test_contact_sheet_draws_every_tile_and_survives_bad_files(tmp_path) -> None:
    product_photo(0, 0, shop=True).save(tmp_path / "a.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    rows = [[Tile(tmp_path / "a.jpg", "query 1\nproduct 0", box=Box(24, 20, 48, 56)),
             Tile(tmp_path / "a.jpg", "#1", border=RIGHT), Tile(tmp_path / "broken.jpg", "#2", border=WRONG)],
            [Tile(Image.new("RGB", (40, 20), (0, 0, 255)), "a very long caption " * 10,
                  box=InvalidBox.because("bad"))]]
    out = contact_sheet(rows, tmp_path / "sheet.png", title="t", size=64)
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape[0] > 2 * 64 and sheet.shape[1] > 3 * 64
    # borders: green around the right result, red around the unreadable one, which is grey inside
    assert (np.abs(sheet.reshape(-1, 3) - RIGHT).sum(1) < 30).sum() > 4 * 64
    assert (np.abs(sheet.reshape(-1, 3) - WRONG).sum(1) < 30).sum() > 4 * 64
    assert (np.abs(sheet.reshape(-1, 3) - 200).sum(1) < 6).sum() > 64 * 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "broken.jpg", "sheet.png"]  # no temp left


@pytest.mark.parametrize("name", ["sheet.gif", "folder.png"])
def test_sheet_paths_are_checked_before_work(tmp_path, name: str) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ProductLensError):
        sheet_path(tmp_path / name)
    with pytest.raises(ProductLensError, match="no tiles"):
        contact_sheet([], tmp_path / "x.png")
    with pytest.raises(ProductLensError, match="chart is written as .png"):
        chart_path(tmp_path / "chart.jpg")  # matplotlib charts: PNG only
    assert chart_path(tmp_path / "chart.PNG") == tmp_path / "chart.PNG"


def test_one_per_object_folds_other_tags_into_alternatives() -> None:
    dets = [Detection(Box(102, 10, 40, 40), "purse", 0.5, 1), Detection(Box(100, 10, 40, 40), "bag", 0.9, 0),
            Detection(Box(0, 0, 20, 20), "hat", 0.4, 2), Detection(Box(101, 11, 40, 40), "wallet", 0.3, 3)]
    out = one_per_object(dets, iou=0.6, alternatives=1)
    assert [(d.tag, d.alternatives) for d in out] == [("bag", (("purse", 0.5),)), ("hat", ())]
    assert out[0].as_json()["alternatives"] == [{"tag": "purse", "score": 0.5}]
    assert "alternatives" not in out[1].as_json()


def test_per_query_ap_is_what_map_averages() -> None:
    from productlens.eval.metrics import per_query_ap, retrieval_metrics

    rankings = np.array([[0, 1, 2], [2, 1, 0], [1, 2, -1]])
    gallery, queries = np.array([5, 6, 5]), np.array([5, 6, 7])
    ap = per_query_ap(rankings, gallery, queries, 3)
    assert np.allclose(ap, [(1 + 2 / 3) / 2, 0.5, 0.0])
    assert retrieval_metrics(rankings, gallery, queries, 3)["map@3"] == pytest.approx(ap.mean())


def test_plot_rankings_shows_the_worst_queries_first(tmp_path, monkeypatch) -> None:
    from productlens.eval import retrieval, sheets
    from productlens.types import Item

    for p in range(3):
        product_photo(p, 0, shop=True).save(tmp_path / f"g{p}.jpg")
    queries = [Item(i, str(tmp_path / f"g{i % 3}.jpg"), product_id=i % 3) for i in range(30)]
    rankings = np.array([[i % 3, (i + 1) % 3, -1] if i % 4 else [(i + 1) % 3, i % 3, -1] for i in range(30)])
    rankings[7] = -1  # a skipped query
    ap = np.where(np.arange(30) % 4 == 0, 0.5, 1.0)
    ap[7] = 0.0
    seen = {}
    real = sheets.contact_sheet
    monkeypatch.setattr(sheets, "contact_sheet",
                        lambda rows, path, **kw: seen.update(rows=rows) or real(rows, path, **kw))
    out = retrieval.plot_rankings(queries, rankings, ap, {0: 0, 1: 1, 2: 2}, {g: str(tmp_path / f"g{g}.jpg")
                                                                           for g in range(3)}, tmp_path / "r.png")
    rows = seen["rows"]
    assert out.is_file() and len(rows) == 16
    assert rows[0][0].caption.startswith("query 7: skipped") and len(rows[0]) == 1
    assert [r[0].caption.split()[1] for r in rows[1:8]] == ["0", "4", "8", "12", "16", "20", "24"]  # AP 0.5
    assert [t.border for t in rows[1][1:]] == [WRONG, RIGHT]  # query 0: right product second
    assert all(r[1].border == RIGHT for r in rows[8:])


def test_detection_plots(tmp_path) -> None:
    from productlens.data.coco import read_coco
    from productlens.eval.detection import coco_map, examples_path, plot_examples, plot_per_class_ap

    data = read_coco(write_coco(tmp_path, "test", 5, seed=4))
    preds = {im.id: [Detection(Box(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])),
                               data.names[int(lab)], 0.9, int(lab)) for b, lab in zip(im.boxes, im.labels)]
             for im in data.images}
    m = coco_map(data, preds)
    chart = plot_per_class_ap(m["per_class"], {"square": 3, "disc": 4}, tmp_path / "ap.png")
    sheet = plot_examples(data, preds, examples_path(chart), photos=4)
    assert sheet == tmp_path / "ap_examples.png"
    assert Image.open(chart).format == "PNG" and Image.open(sheet).size[0] > 8 * 220


def test_plot_audit_with_nothing_flagged(tmp_path) -> None:
    from productlens.eval.audit import AuditReport, plot_audit

    assert Image.open(plot_audit(AuditReport([], [], images=3), tmp_path / "a.png")).format == "PNG"

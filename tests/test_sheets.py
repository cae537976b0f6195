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
    twice = dets + [Detection(Box(99, 10, 40, 40), "purse", 0.45, 1), Detection(Box(100, 11, 40, 40), "bag", 0.4, 0)]
    assert one_per_object(twice)[0].alternatives == (("purse", 0.5), ("wallet", 0.3))  # each other tag once
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


def test_the_box_lands_on_the_product_in_a_photo_shrunk_while_decoding(tmp_path) -> None:
    from PIL import ImageDraw

    from productlens.eval.sheets import thumbnail

    photo = Image.new("RGB", (640, 480), (255, 255, 255))
    ImageDraw.Draw(photo).rectangle((100, 100, 199, 199), fill=(0, 0, 255))
    photo.save(tmp_path / "p.jpg", quality=95)  # JPEG: decoded at a quarter of its size for 160 px
    thumb = np.asarray(thumbnail(Tile(tmp_path / "p.jpg", box=Box(100, 100, 100, 100)), 160)).astype(int)
    yellow = (np.abs(thumb - (255, 200, 0)).sum(-1) < 60)
    ys, xs = np.nonzero(yellow)
    # 640 -> 160: the square spans x 25..50, y 20 + 25..50 (the photo is centred vertically)
    assert abs(xs.min() - 25) <= 2 and abs(xs.max() - 50) <= 2 and abs(ys.min() - 45) <= 2 and abs(ys.max() - 70) <= 2


def test_sheet_paths_under_a_file_or_nowhere_writable_are_refused(tmp_path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ProductLensError, match="not a folder"):
        sheet_path(tmp_path / "afile" / "deeper" / "s.png")
    assert sheet_path(tmp_path / "new" / "deeper" / "s.png")  # folders that do not exist yet are made


def test_empty_sheets_say_why_and_titles_are_not_cut(tmp_path, monkeypatch) -> None:
    from productlens.eval import retrieval, sheets

    title = "queries.csv vs gallery.csv: mAP@1000 0.000"
    out = retrieval.plot_rankings([], np.zeros((0, 5), int), np.zeros(0), {}, {}, tmp_path / "none.png", title=title)
    assert Image.open(out).size[0] > 160 + 2 * 4 + 2 * 8  # one tile wide, widened for its title
    drawn = []
    monkeypatch.setattr(sheets.ImageDraw.ImageDraw, "text", lambda self, xy, text, **kw: drawn.append(text))
    retrieval.plot_rankings([], np.zeros((0, 5), int), np.zeros(0), {}, {}, tmp_path / "none.png", title=title)
    assert drawn == [title, "no queries"]
    drawn.clear()
    sheets.contact_sheet(sheets.placeholder("nothing flagged"), tmp_path / "x.png", title="t " * 100)
    assert drawn[-1] == "nothing flagged" and sum(t.count("t") for t in drawn[:-1]) == 100  # wrapped, not cut


def test_detected_boxes_are_drawn_for_queries_without_one(tmp_path, monkeypatch) -> None:
    """eval retrieval --detect detects each query once; the sheet draws the box that was searched."""
    from helpers import write_dataset
    from test_detect import _write_user_detector

    from productlens.eval import retrieval, sheets
    from productlens.models.detectors import load_detector

    ds = write_dataset(tmp_path / "ds", n_products=3, per_product=2)
    detector = load_detector(f"onnx:{_write_user_detector(tmp_path / 'd.onnx', square=False)}")
    calls, real_detect = [], detector.detect
    monkeypatch.setattr(detector, "detect", lambda img, **kw: calls.append(1) or real_detect(img, **kw))
    seen = {}
    real = sheets.contact_sheet
    monkeypatch.setattr(sheets, "contact_sheet",
                        lambda rows, path, **kw: seen.update(rows=rows) or real(rows, path, **kw))
    m = retrieval.evaluate_retrieval(ds["gallery"], ds["queries"], embedder="efficientnet-lite0", detector=detector,
                                     plot=tmp_path / "r.png", progress=False, verify=False)
    assert m["queries"] == 6 and len(calls) == 6  # once per query, not again for the sheet
    assert all(row[0].box is not None for row in seen["rows"]) and (tmp_path / "r.png").is_file()


def test_detection_plots_without_test_boxes(tmp_path) -> None:
    from productlens.data.coco import read_coco
    from productlens.eval.detection import _plots

    data = read_coco(write_coco(tmp_path, "test", 2, seed=4))
    m = {"per_class": {}, "problems": [], "map50": 0.0}
    written = _plots(m, data, {im.id: [] for im in data.images}, tmp_path / "ap.png", "test.json")
    assert written == [tmp_path / "ap_examples.png"] and "no AP chart" in m["problems"][0]


def test_a_distractor_is_never_the_right_product() -> None:
    from productlens.eval.metrics import same_product

    assert same_product(3, 3) and not same_product(-1, -1) and not same_product(3, None)
    assert not same_product(None, 3) and not same_product(2, 3)


def test_drawn_text_uses_a_font_with_more_than_latin() -> None:
    from PIL import ImageFont

    from productlens import fonts

    pytest.importorskip("matplotlib")  # ships DejaVu Sans
    f = fonts.font(14)
    assert isinstance(f, ImageFont.FreeTypeFont) and f.getname()[0].startswith(("DejaVu", "Noto"))


def test_search_plot_names_untitled_results_by_product_or_item(tmp_path, monkeypatch) -> None:
    from productlens.cli import search_cmd
    from productlens.eval import sheets
    from productlens.types import Hit

    product_photo(0, 0, shop=True).save(tmp_path / "g.jpg")
    g = str(tmp_path / "g.jpg")
    seen = {}
    real = sheets.contact_sheet
    monkeypatch.setattr(sheets, "contact_sheet",
                        lambda rows, path, **kw: seen.update(rows=rows) or real(rows, path, **kw))
    hits = [Hit(3, 0.9, None, "", g), Hit(4, 0.8, 0, "", g), Hit(5, 0.7, 2, "Oat milk", g), Hit(6, 0.6, -1, "", g)]
    search_cmd._plot_hits([(g, None, None, hits)], tmp_path / "h.png", title="t")
    assert [t.caption.split("\n")[1] for t in seen["rows"][0][1:]] == ["item 3", "product 0", "Oat milk", "item 6"]


def _font_with(path, chars: str, name: str):
    """A TrueType font whose character map holds ``chars`` (empty glyphs: enough for a font search)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    glyphs = [".notdef"] + [f"g{ord(c):x}" for c in chars]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(glyphs)
    fb.setupCharacterMap({ord(c): f"g{ord(c):x}" for c in chars})
    empty = TTGlyphPen(None).glyph()
    fb.setupGlyf({g: empty for g in glyphs})
    fb.setupHorizontalMetrics({g: (500, 0) for g in glyphs})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": name, "styleName": "Regular"})
    fb.setupOS2()
    fb.setupPost()
    fb.save(str(path))
    return str(path)


def test_text_in_a_script_the_default_font_lacks_finds_a_font_that_has_it(tmp_path, monkeypatch, caplog) -> None:
    pytest.importorskip("fontTools")
    from productlens import fonts

    latin = _font_with(tmp_path / "latin.ttf", "abcdefghijklmnopqrstuvwxyz0123456789.", "Latinish")
    thai = _font_with(tmp_path / "thai.ttf", "abcdefghijklmnopqrstuvwxyz0123456789.ชุดเรส", "Thaiish")
    monkeypatch.setattr(fonts, "_font_file", lambda: latin)
    monkeypatch.setattr(fonts, "_other_files", lambda: (latin, thai))
    fonts._file_for.cache_clear()
    monkeypatch.setattr(fonts, "_WARNED", set())
    try:
        assert fonts.font(14, "dress 0.93").getname()[0] == "Latinish"
        assert fonts.font(14, "ชุดเดรส dress 0.93").getname()[0] == "Thaiish"  # the tag's own script
        with caplog.at_level("WARNING", logger="productlens.fonts"):
            assert fonts.font(14, "连衣裙 dress").getname()[0] == "Latinish"  # no font has it: drawn, and said
            fonts.font(16, "连衣裙 dress")
            assert fonts.font(14, "dress \U0001F457\ufe0f").getname()[0] == "Latinish"  # emoji: no search
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and "characters '连衣裙'" in warned[0] and "fonts-noto-cjk" in warned[0]
    finally:
        fonts._file_for.cache_clear()

"""The classify / eval classify / audit labels commands on generated photos (fake backbone)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from helpers import product_photo
from productlens.cli.main import app
from productlens.models import embedders
from productlens.types import ProductLensError
from test_classify import FakeEmbedder
from test_classify_pipeline import write_set

runner = CliRunner()
FAST = ["--model", "fake-tiny", "--views", "flip", "--tta", "flip", "--epochs", "8"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PRODUCTLENS_FEATURE_CACHE", str(tmp_path / "features"))
    monkeypatch.setitem(embedders._CACHE, "fake-tiny", FakeEmbedder())


def _shopee(root, n=4, per=6):
    for c in range(n):
        for v in range(per):
            path = root / "train" / f"{c:02d}" / f"{c}_{v}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            product_photo(c, v, shop=False, size=64).save(path)
    (root / "test").mkdir()
    names = []
    for c in range(n):
        names.append(f"t{c}.jpg")
        product_photo(c, 70, shop=False, size=64).save(root / "test" / names[-1])
    (root / "test" / "bad.jpg").write_bytes(b"garbage")
    names.append("bad.jpg")
    (root / "test.csv").write_text("filename,category\n" + "".join(f"{n},43\n" for n in names))
    return names


def test_shopee_train_predict_submission(tmp_path, caplog) -> None:
    names = _shopee(tmp_path / "shopee")
    r = runner.invoke(app, ["classify", "train", str(tmp_path / "shopee"), "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 0, r.output
    assert "trained 4 classes on 24 images" in r.output
    sub, preds = tmp_path / "sub.csv", tmp_path / "preds.json"
    with caplog.at_level("WARNING"):
        r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "shopee"), "-k", "2",
                                "--submission", str(sub), "--out", str(preds)])
    assert r.exit_code == 0, r.output
    assert "skipped: " in r.output and "bad.jpg" in r.output and "predicted 4 images; skipped 1" in r.output
    # the command names the bad file itself: the log keeps the batch's summary, not a second line for it
    assert "skipped 1 of 5 images" in caplog.text and "bad.jpg" not in caplog.text
    rows = list(csv.DictReader(sub.open()))
    assert [row["filename"] for row in rows] == names  # test.csv order, every row
    assert all(len(row["category"]) == 2 for row in rows[:4]) and rows[4]["category"] == ""
    records = json.loads(preds.read_text())
    assert len(records) == 4 and len(records[0]["predictions"]) == 2
    assert sum(r["predictions"][0]["label"] == f"{i:02d}" for i, r in enumerate(records)) >= 2
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "shopee" / "test" / "t1.jpg"),
                            "--json", "--out", str(tmp_path / "one.csv")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out[0]["image"] == "t1.jpg" and len(out[0]["predictions"]) == 4
    header = (tmp_path / "one.csv").read_text().splitlines()[0]
    assert header == "image,label_1,prob_1,label_2,prob_2,label_3,prob_3,label_4,prob_4"
    # outputs that would destroy an input, the model or each other are refused before any work
    model, test_csv = tmp_path / "m", tmp_path / "shopee" / "test.csv"
    before = {f: f.read_bytes() for f in (test_csv, model / "labels.json")}
    for args, message in ((["--out", str(test_csv)], "--out " + str(test_csv) + " is this command's input"),
                          (["--submission", str(test_csv)], "is this command's input"),
                          (["--out", str(model / "labels.json")], "is inside " + str(model)),
                          (["--out", str(sub), "--submission", str(sub)], "--out and --submission both name")):
        r = runner.invoke(app, ["classify", "predict", str(model), str(tmp_path / "shopee"), *args])
        assert r.exit_code == 1 and message in r.output, r.output
    shopee = tmp_path / "shopee"
    r = runner.invoke(app, ["audit", "labels", str(shopee), "--out", str(shopee / "train.csv")])
    assert r.exit_code == 1 and "is this command's input" in r.output
    assert {f: f.read_bytes() for f in before} == before
    (tmp_path / "header.csv").write_text("image,sku\n")  # a csv of no rows is no input, not "predicted 0 images"
    r = runner.invoke(app, ["classify", "predict", str(model), str(tmp_path / "header.csv")])
    assert r.exit_code == 1 and "header.csv: no rows" in r.output


def test_eval_classify_json_plot_and_hierarchy(tmp_path) -> None:
    train = write_set(tmp_path)
    test = write_set(tmp_path, name="test.csv", offset=40)
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(test), "--label", "sku",
                            "--json", "--plot", str(tmp_path / "cm.png"), *FAST])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output.strip().splitlines()[-1])
    assert set(m) == {"top1", "top5", "macro_f1", "classes", "train", "test", "seconds", "balanced_accuracy",
                      "per_class", "skipped"}
    assert set(m["per_class"]) <= {f"s{p:02d}" for p in range(6)}
    assert m["classes"] == 6 and m["train"] == 36 and m["test"] == 36 and m["top1"] > 0.4 and m["top5"] >= m["top1"]
    assert "per-class accuracy: " in r.output and (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(test), "--label", "dept",
                            "--fine", "sku", "--json", *FAST])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output.strip().splitlines()[-1])
    assert m["classes"] == 2 and m["top5"] == 1.0 and "(trained on sku)" in r.output


def test_a_chart_that_cannot_be_written_keeps_the_figures(tmp_path, monkeypatch) -> None:
    import contextlib

    from productlens.eval import sheets

    @contextlib.contextmanager
    def disk_full(target):
        raise OSError(28, "No space left on device")
        yield

    train = write_set(tmp_path)
    test = write_set(tmp_path, name="test.csv", offset=40)
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(test), "--label", "sku",
                            "--plot", str(tmp_path / "cm.gif"), *FAST])
    assert r.exit_code == 1 and "chart is written as .png" in r.output and "top-1" not in r.output  # before training
    monkeypatch.setattr(sheets, "atomic_path", disk_full)  # the disk fills up during training
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(test), "--label", "sku",
                            "--json", "--plot", str(tmp_path / "cm.png"), *FAST])
    assert r.exit_code == 0, r.output
    assert "warning: cannot write" in r.output and "No space left on device" in r.output
    assert json.loads(r.output.strip().splitlines()[-1])["classes"] == 6 and not (tmp_path / "cm.png").exists()


def test_clear_errors(tmp_path) -> None:
    train = write_set(tmp_path)
    with open(tmp_path / "other.csv", "w") as f:
        f.write("image,sku\nimg/train_0_0.jpg,s99\n")
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(tmp_path / "other.csv"),
                            "--label", "sku", *FAST])
    assert r.exit_code == 1 and "never seen in training: 's99'" in r.output
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "brand", "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 1 and "missing column(s) brand" in r.output
    (tmp_path / "one.csv").write_text("image,sku\nimg/train_0_0.jpg,a\nimg/train_0_1.jpg,a\nimg/train_1_0.jpg,b\n")
    r = runner.invoke(app, ["classify", "train", str(tmp_path / "one.csv"), "--label", "sku", "--out",
                            str(tmp_path / "m"), *FAST])
    assert r.exit_code == 1 and "fewer than 2 images: 'b' (1)" in r.output
    assert not (tmp_path / "m").exists()
    r = runner.invoke(app, ["classify", "predict", str(tmp_path), str(train)])
    assert r.exit_code == 1 and "not a productlens classifier folder" in r.output
    r = runner.invoke(app, ["audit", "labels", str(train), "--label", "nope", "--model", "fake-tiny"])
    assert r.exit_code == 1 and "missing column(s) nope" in r.output
    for option, message in ((["--balance", "bogus"], "balance must be one of"), (["--holdout", "1.5"], "(0, 0.5]")):
        r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"),
                                *FAST, *option])
        assert r.exit_code == 1 and message in r.output and not (tmp_path / "m").exists()


def test_an_unknown_test_label_fails_before_training(tmp_path, monkeypatch) -> None:
    from productlens.pipeline import classify

    train = write_set(tmp_path)
    (tmp_path / "other.csv").write_text("image,sku\nimg/train_0_0.jpg,s99\n")
    monkeypatch.setattr(classify, "train_classifier", lambda *a, **k: pytest.fail("trained first"))
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(tmp_path / "other.csv"),
                            "--label", "sku", *FAST])
    assert r.exit_code == 1 and "never seen in training: 's99'" in r.output


def test_companions_switch_reaches_the_training_options(tmp_path, monkeypatch) -> None:
    from productlens.pipeline import classify

    train = write_set(tmp_path)
    seen = []

    def fake_train(data, out, options, **kw):
        seen.append((options.finetune, options.companions))
        raise classify.ProductLensError("stopped before training")

    monkeypatch.setattr(classify, "train_classifier", fake_train)
    for flags, expected in (([], (False, True)), (["--finetune"], (True, True)),
                            (["--finetune", "--no-companions"], (True, False))):
        r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"),
                                *flags])
        assert r.exit_code == 1 and "stopped before training" in r.output
        assert seen.pop() == expected


def test_out_never_wipes_a_users_folder(tmp_path, monkeypatch) -> None:
    from productlens.pipeline import classify

    train = write_set(tmp_path)
    user = tmp_path / "victim"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    real = classify.fit_on_features
    monkeypatch.setattr(classify, "fit_on_features", lambda *a, **k: pytest.fail("trained first") or real(*a, **k))
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(user), *FAST])
    assert r.exit_code == 1 and "did not write (notes.txt)" in r.output
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    monkeypatch.setattr(classify, "fit_on_features", real)
    model = tmp_path / "m"
    for _ in range(2):  # a folder it wrote is replaced whole
        r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(model), *FAST])
        assert r.exit_code == 0, r.output
    assert oct(model.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_predict_k_is_bounded_by_the_classes(tmp_path) -> None:
    train = write_set(tmp_path)  # 6 classes
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 0, r.output
    photo = str(tmp_path / "img" / "train_0_0.jpg")
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), photo, "-k", "9", "--out",
                            str(tmp_path / "p.csv"), "--json"])
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows[0].split(",")) == len(rows[1].split(",")) == 1 + 2 * 6
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), photo, "-k", "0"])
    assert r.exit_code != 0 and "at least 1" in r.output
    (tmp_path / "folder").mkdir()
    for flag in ("--out", "--submission"):  # a folder where the file goes: refused before predicting
        r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), photo, flag, str(tmp_path / "folder")])
        assert r.exit_code == 1 and "is a folder; give the name of a file" in r.output and "predicted" not in r.output


def test_classifier_attached_to_a_catalog(tmp_path) -> None:
    train = write_set(tmp_path)
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(train.open()))
    (tmp_path / "gallery.csv").write_text("seller_img_id,img_path,product_id\n" + "".join(
        f"{i},{row['image']},{int(row['sku'][1:])}\n" for i, row in enumerate(rows)))
    r = runner.invoke(app, ["index", "build", str(tmp_path / "gallery.csv"), "--out", str(tmp_path / "cat"),
                            "--model", "fake-tiny"])
    assert r.exit_code == 0, r.output
    query = str(tmp_path / "img" / "train_2_1.jpg")
    r = runner.invoke(app, ["search", str(tmp_path / "cat"), query, "-k", "2"])
    assert r.exit_code == 0 and "categories:" not in r.output
    r = runner.invoke(app, ["index", "attach-classifier", str(tmp_path / "cat"), str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", "info", str(tmp_path / "cat")])
    assert "classifier: 6 classes (fake-tiny)" in r.output
    r = runner.invoke(app, ["search", str(tmp_path / "cat"), query, "-k", "2"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("categories: "))
    assert line.split()[1] == "s02" and len(line.split(", ")) == 4
    r = runner.invoke(app, ["index", "attach-classifier", str(tmp_path / "cat"), str(tmp_path / "nowhere")])
    assert r.exit_code != 0 and "not a productlens classifier folder" in r.output


def _classifier_and_catalog(tmp_path) -> None:
    """A classifier of the generated set in tmp_path/m, and a catalog of its photos in tmp_path/cat."""
    train = write_set(tmp_path)
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", "build", str(tmp_path / "img"), "--out", str(tmp_path / "cat"),
                            "--model", "fake-tiny"])
    assert r.exit_code == 0, r.output


def test_catalog_classify_decodes_a_large_photo_reduced(tmp_path, monkeypatch) -> None:
    """A catalog's top categories for a large JPEG come from a draft decode (not the whole photo),
    and are those ``classify predict`` gives for the same file; a box is cropped in original pixels."""
    from productlens.data import images
    from productlens.pipeline import catalog as catalog_mod
    from productlens.pipeline.catalog import Catalog
    from productlens.models.classifiers import load_classifier
    from productlens.types import Box

    _classifier_and_catalog(tmp_path)
    big = tmp_path / "big.jpg"
    product_photo(2, 1, shop=False, size=64).resize((1600, 1600)).save(big, quality=95)
    decoded = []

    def spy(*args, **kwargs):
        img = images.load_image(*args, **kwargs)
        decoded.append(img.size)
        return img

    monkeypatch.setattr(catalog_mod, "load_image", spy)
    clf = load_classifier(tmp_path / "m")
    with Catalog.open(tmp_path / "cat") as cat:
        cat.attach_classifier(tmp_path / "m")
        top = cat.classify(str(big), k=3)
        boxed = cat.classify(str(big), box=Box(0, 0, 800, 1600), k=3)
    assert decoded[0][0] < 1600 and decoded[0][0] >= clf.input_size  # drafted, never below what the views need
    assert decoded[1][1] == decoded[0][1] and decoded[1][0] == decoded[0][0] // 2  # the left half, scaled alike
    want = clf.predict(str(big), k=3)[0]
    assert [c for c, _ in top] == [c for c, _ in want]
    assert [p for _, p in top] == pytest.approx([p for _, p in want], abs=1e-4)
    assert len(boxed) == 3


def test_search_downloads_a_url_query_once(tmp_path) -> None:
    """A URL query with categories to show is fetched once (it was fetched for the search and again
    for the categories); a failed download names the URL."""
    import http.server
    import threading

    _classifier_and_catalog(tmp_path)
    r = runner.invoke(app, ["index", "attach-classifier", str(tmp_path / "cat"), str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    gets = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "img"), **kwargs)

        def do_GET(self):
            gets.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        r = runner.invoke(app, ["search", str(tmp_path / "cat"), f"{base}/train_2_1.jpg", "-k", "2",
                                "--plot", str(tmp_path / "hits.png")])
        assert r.exit_code == 0 and "categories: " in r.output, r.output
        assert gets == ["/train_2_1.jpg"] and (tmp_path / "hits.png").is_file()
        r = runner.invoke(app, ["search", str(tmp_path / "cat"), f"{base}/missing.jpg"])
        assert r.exit_code == 1 and f"{base}/missing.jpg: download failed" in r.output, r.output
    finally:
        server.shutdown()
        server.server_close()


def test_predict_with_detect_classifies_the_detected_box(tmp_path) -> None:
    from test_detect import _write_user_detector

    _shopee(tmp_path / "shopee")
    r = runner.invoke(app, ["classify", "train", str(tmp_path / "shopee"), "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 0, r.output
    model = _write_user_detector(tmp_path / "det.onnx", square=True)
    test = str(tmp_path / "shopee" / "test")
    outs = []
    for extra in ([], ["--detect", "--detector", f"onnx:{model}"]):
        r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), test, "--json", *extra])
        assert r.exit_code == 0, r.output
        assert "bad.jpg" in r.output  # still reported and skipped
        outs.append(json.loads(r.output.strip().splitlines()[-1]))
    assert [o["image"] for o in outs[0]] == [o["image"] for o in outs[1]]
    assert outs[0] != outs[1]  # the detected box (8, 8, 32, 32 of each 64 px photo) changes the probabilities


def test_train_names_a_class_left_without_readable_photos(tmp_path) -> None:
    root = tmp_path / "onecls"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_text("a text file")
    (root / "a" / "y.jpg").write_bytes(b"")
    for p, c in enumerate("bc"):
        (root / c).mkdir()
        for v in range(2):
            product_photo(p, v, shop=False, size=64).save(root / c / f"{v}.jpg")
    r = runner.invoke(app, ["classify", "train", str(root), "-o", str(tmp_path / "m9"), *FAST])
    assert r.exit_code == 1 and "error:" in r.output and "trained" not in r.output
    assert "fewer than 2 readable images: 'a' (0)" in r.output and not (tmp_path / "m9").exists()
    assert "unreadable: " in r.output and "x.jpg: not an image" in r.output  # which photos, and why


def test_eval_classify_refuses_a_set_with_no_readable_image(tmp_path) -> None:
    train = write_set(tmp_path, n_products=2, per_product=3)
    (tmp_path / "img" / "bad.jpg").write_bytes(b"junk")
    (tmp_path / "test.csv").write_text("image,sku\nimg/bad.jpg,s00\nimg/gone.jpg,s01\n")
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(tmp_path / "test.csv"),
                            "--label", "sku", *FAST])
    assert r.exit_code == 1 and "top-1" not in r.output
    assert "test.csv: no test image could be read (2 skipped): " in r.output and "bad.jpg" in r.output
    (tmp_path / "bad_train.csv").write_text("image,sku\n" + "".join(f"img/{f}.jpg,s0{i % 2}\n" for i, f in
                                                                  enumerate(["bad", "bad", "gone", "gone"])))
    r = runner.invoke(app, ["eval", "classify", "--train", str(tmp_path / "bad_train.csv"), "--test", str(train),
                            "--label", "sku", *FAST])
    assert r.exit_code == 1 and "bad_train.csv: no training image could be read (4 skipped)" in r.output


def test_predict_reports_and_skips_a_csv_row_without_image(tmp_path) -> None:
    train = write_set(tmp_path, n_products=2, per_product=3)
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 0, r.output
    (tmp_path / "in.csv").write_text("image,note\nimg/train_0_0.jpg,x\n,empty cell\nimg/train_1_0.jpg,y\n")
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "in.csv"), "--json"])
    assert r.exit_code == 0, r.output
    assert f"skipped: {tmp_path / 'in.csv'}, line 3: missing image path" in r.output
    assert "predicted 2 images; skipped 1" in r.output
    records = json.loads(r.output.strip().splitlines()[-1])
    assert [rec["image"] for rec in records] == ["img/train_0_0.jpg", "img/train_1_0.jpg"]


def test_classify_refuses_a_damaged_model_zero_epochs_and_exits_1_when_nothing_was_predicted(tmp_path) -> None:
    train = write_set(tmp_path)
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"),
                            "--model", "fake-tiny", "--views", "flip", "--tta", "flip", "--epochs", "0"])
    assert r.exit_code == 2 and "--epochs" in r.output  # wrote an untrained head before
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"), *FAST])
    assert r.exit_code == 0, r.output
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    outputs = ["--out", str(tmp_path / "o.csv"), "--submission", str(tmp_path / "s.csv")]
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "img" / "train_0_0.jpg"),
                            *outputs])
    assert r.exit_code == 0, r.output
    before = [(tmp_path / f).read_text() for f in ("o.csv", "s.csv")]
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "junk.jpg"), *outputs])
    assert r.exit_code == 1 and "skipped: " in r.output and "predicted 0 images" in r.output
    assert [(tmp_path / f).read_text() for f in ("o.csv", "s.csv")] == before  # had been replaced by empty ones
    import numpy as np

    for damage in ("format", "views", "temperature", "name"):  # tracebacks, bare key names, or NaN with exit 0
        bad = tmp_path / f"m_{damage}"
        shutil.copytree(tmp_path / "m", bad)
        config, labels = (json.loads((bad / f).read_text()) for f in ("config.json", "labels.json"))
        if damage == "format":
            config["format"] = "2"
        elif damage == "views":
            config.pop("views")
        elif damage == "name":
            labels.pop("name")
        else:
            arrays = dict(np.load(bad / "head.npz"))
            arrays["temperature"] = np.array(np.nan, np.float32)
            np.savez(bad / "head.npz", **arrays)
        (bad / "config.json").write_text(json.dumps(config))
        (bad / "labels.json").write_text(json.dumps(labels))
        r = runner.invoke(app, ["classify", "predict", str(bad), str(tmp_path / "img" / "train_0_0.jpg"), "--json"])
        if damage == "views":  # a folder without views: the whole photo
            assert r.exit_code == 0 and "nan" not in r.output.lower(), r.output
        else:
            assert r.exit_code == 1 and "Traceback" not in r.output and str(bad) in r.output, r.output
    head = (tmp_path / "m" / "head.npz").read_bytes()
    (tmp_path / "m" / "head.npz").write_bytes(head[:100])  # cut short
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "img" / "train_0_0.jpg")])
    assert r.exit_code == 1 and "not a productlens classifier folder" in r.output and "head.npz: damaged" in r.output
    assert "Traceback" not in r.output


def test_classify_input_checks_from_an_audit(tmp_path, monkeypatch) -> None:
    """A relative onnx:PATH model trained, then failed to load; labels '7' and '07' were both written '07'
    in a submission; eval classify --test on a Shopee root scored its training photos; a category folder
    named 'train' made a folder be read as a Shopee root; --parent twice was a traceback; a decomposed
    'Crème' (a macOS folder name) was another label than the composed one; --out p.xlsx wrote csv text."""
    import shutil

    from test_embedders import _tiny_onnx

    from productlens.data.labelled import is_shopee, read_labelled

    train = write_set(tmp_path)
    monkeypatch.chdir(tmp_path)
    _tiny_onnx(tmp_path / "t.onnx")
    (tmp_path / "t.json").write_text(json.dumps({"size": 16}))
    r = runner.invoke(app, ["classify", "train", str(train), "--label", "sku", "--out", str(tmp_path / "m"),
                            "--model", "onnx:t.onnx", "--views", "flip", "--tta", "flip", "--epochs", "3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "img" / "train_0_0.jpg")])
    assert r.exit_code == 0 and "predicted 1 images" in r.output, r.output
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "m"), str(tmp_path / "img"), "--out", "p.xlsx"])
    assert r.exit_code == 2 and ".csv or .json" in r.output
    shopee = tmp_path / "shop"
    for label, src in (("7", 0), ("07", 1), ("9", 2)):
        (shopee / "train" / label).mkdir(parents=True)
        for v in range(3):
            shutil.copy(tmp_path / "img" / f"train_{src}_{v}.jpg", shopee / "train" / label / f"{v}.jpg")
    (shopee / "test").mkdir()
    shutil.copy(tmp_path / "img" / "train_0_5.jpg", shopee / "test" / "a.jpg")
    (shopee / "test.csv").write_text("filename,category\na.jpg,43\n")
    r = runner.invoke(app, ["classify", "train", str(shopee), "--out", str(tmp_path / "ms"), *FAST])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["classify", "predict", str(tmp_path / "ms"), str(shopee), "--submission", "s.csv"])
    assert r.exit_code == 1 and "would both be written '07'" in r.output and not (tmp_path / "s.csv").exists()
    r = runner.invoke(app, ["eval", "classify", "--train", str(shopee), "--test", str(shopee), "--label", "category",
                            *FAST])
    assert r.exit_code == 1 and "carries no true categories" in r.output
    folders = tmp_path / "fold"
    for label in ("train", "41"):
        shutil.copytree(shopee / "train" / "9", folders / label)
    assert is_shopee(shopee) and not is_shopee(folders)
    assert sorted(set(read_labelled(folders).labels)) == ["41", "train"]
    with pytest.raises(ProductLensError, match="both the label and a parent"):
        read_labelled(train, label="sku", parents=["sku"])
    assert read_labelled(train, label="sku", parents=["dept", "dept"]).parents.keys() == {"dept"}
    nfd = tmp_path / "nfd"
    shutil.copytree(shopee / "train" / "9", nfd / "Cre\u0300me")
    shutil.copytree(shopee / "train" / "7", nfd / "other")
    assert "Cr\u00e8me" in read_labelled(nfd).labels


def test_eval_classify_reports_and_skips_a_test_row_without_image(tmp_path) -> None:
    """A test csv row that names no photo was fatal after the training; it is reported and skipped."""
    train = write_set(tmp_path)
    test = write_set(tmp_path, name="test.csv", offset=40)
    rows = test.read_text().splitlines()
    cells = rows[2].split(",")
    rows[2] = ",".join([""] + cells[1:])  # line 3: its image cell emptied
    test.write_text("\n".join(rows) + "\n")
    r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(test), "--label", "sku",
                            "--json", *FAST])
    assert r.exit_code == 0, r.output
    assert f"skipped: {test}, line 3: missing image path" in r.output
    m = json.loads(r.output.strip().splitlines()[-1])
    assert m["test"] == len(rows) - 2 and m["skipped"] == 1


def test_test_photos_that_were_trained_on_are_said(tmp_path, caplog) -> None:
    train = write_set(tmp_path)
    with caplog.at_level("WARNING"):
        r = runner.invoke(app, ["eval", "classify", "--train", str(train), "--test", str(train), "--label", "sku",
                                "--json", *FAST])
    assert r.exit_code == 0, r.output
    assert "36 test photo(s) are training photos too" in caplog.text and "not a held-out measure" in caplog.text

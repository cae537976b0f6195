"""The command line, end to end on a tiny generated dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import write_dataset
from productlens.cli.main import app

runner = CliRunner()


def test_cli_index_search_rank_eval(tmp_path) -> None:
    ds = write_dataset(tmp_path / "ds")
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(cat), "--model",
                            "efficientnet-lite0", "--train", str(ds["train"])])
    assert r.exit_code == 0, r.output
    assert "indexed 4 items" in r.output and "adapted" in r.output
    r = runner.invoke(app, ["index", "info", str(cat)])
    assert "items: 4" in r.output and "adapter: yes" in r.output
    q = tmp_path / "ds" / "img" / "q_2_0.jpg"
    r = runner.invoke(app, ["search", str(cat), str(q), "-k", "2", "--json", "--plot", str(tmp_path / "hits.png")])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output.strip().splitlines()[-1])
    assert len(hits) == 2 and hits[0]["product_id"] == 2
    assert Image.open(tmp_path / "hits.png").size[0] > 3 * 160  # the query and two results
    r = runner.invoke(app, ["search", str(cat), str(q), "--box", "0,0,0,5"])
    assert r.exit_code == 1 and "zero area" in r.output
    out = tmp_path / "rank.npy"
    r = runner.invoke(app, ["rank", str(cat), str(ds["queries"]), "--out", str(out), "-k", "1000"])
    assert r.exit_code == 0, r.output
    assert np.load(out).shape == (16, 1000)
    r = runner.invoke(app, ["eval", "retrieval", "--gallery", str(ds["gallery"]), "--queries", str(ds["queries"]),
                            "--train", str(ds["train"]), "--model", "efficientnet-lite0", "--json",
                            "--rankings", str(tmp_path / "eval.npy")])
    assert r.exit_code == 0, r.output
    assert f"wrote the rankings (one row of seller_img_id per query, best first) to {tmp_path / 'eval.npy'}" \
        in r.output and np.load(tmp_path / "eval.npy").shape == (16, 1000)
    m = json.loads(r.output.strip().splitlines()[-1])
    assert set(m) == {"map@1000", "top1", "top5", "recall@10", "queries", "gallery", "seconds"}
    assert m["queries"] == 16 and m["gallery"] == 4 and m["map@1000"] > 0.5
    r = runner.invoke(app, ["index", "remove", str(cat), "0", "1", "424242"])
    assert "removed 2" in r.output and "1 id(s) not in the catalog: 424242" in r.output


def test_cli_index_add_gives_sources_without_ids_new_ids(tmp_path, monkeypatch) -> None:
    """A folder or an image csv numbers its items from 0: added to a catalog, they must not replace its items."""
    import shutil

    from productlens.pipeline.catalog import Catalog

    ds = write_dataset(tmp_path / "ds")
    img = tmp_path / "ds" / "img"
    folder = tmp_path / "tree"
    for name, files in (("box", ["t_0_0.jpg", "t_0_1.jpg"]), ("new", ["t_1_0.jpg"])):
        (folder / name).mkdir(parents=True)
        for f in files:
            shutil.copy(img / f, folder / name / f)
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["index", "build", str(folder), "--out", str(cat), "--model", "efficientnet-lite0"])
    assert r.exit_code == 0, r.output  # items 0-2; product 0 "box", product 1 "new"
    r = runner.invoke(app, ["index", "add", str(cat), str(ds["gallery"])])  # seller_img_id 0-3: replaces 0-2
    assert r.exit_code == 0 and "holds 4 items" in r.output, r.output
    assert "added 1 item(s) under their own ids 3\n" in r.output and "replaced 3 item(s)" in r.output, r.output
    (folder / "new").rename(folder / "box2")
    r = runner.invoke(app, ["index", "add", str(cat), str(folder)])
    assert r.exit_code == 0, r.output
    assert "added 3 item(s) under new ids 4..6" in r.output and "holds 7 items" in r.output, r.output
    listed = tmp_path / "more.csv"
    listed.write_text("image,product_id\n" + str(img / "t_2_0.jpg") + ",2\n")
    from productlens.index.embedded.store import EmbeddedStore

    # past the exact-search limit (200,000 items; 6 here), the add builds the approximate index, where the
    # next search had built it unsaid (45 s at 200,000 items)
    monkeypatch.setitem(EmbeddedStore.__init__.__kwdefaults__, "exact_max", 6)
    r = runner.invoke(app, ["index", "add", str(cat), str(listed)])
    assert r.exit_code == 0 and "under new ids 7\n" in r.output and "holds 8 items" in r.output, r.output
    assert "bringing the approximate index up to date (8 items" in r.output
    assert list((cat / "store").glob("ann-*.faiss"))
    with Catalog.open(cat) as c:
        md = dict(zip(c.store.ids().tolist(), c.store.get(c.store.ids())))
    assert [md[i]["product_id"] for i in range(4)] == [0, 1, 2, 3]  # the gallery's own ids and products
    # gallery items carry no category: both folders become new products, above the largest (3)
    assert sorted(md[i]["product_id"] for i in (4, 5, 6)) == [4, 4, 5] and md[7]["product_id"] == 2


def test_a_flat_folder_of_photos_indexes_and_its_loose_photos_stay_without_a_product(tmp_path) -> None:
    """Seller photos straight in a folder are a catalog (each photo an item); beside category folders
    they are indexed too, and `index add` leaves them without a product rather than inventing one."""
    import shutil

    from productlens.pipeline.catalog import Catalog

    write_dataset(tmp_path / "ds")
    img = tmp_path / "ds" / "img"
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in ("t_0_0.jpg", "t_1_0.jpg", "t_2_0.jpg"):
        shutil.copy(img / f, flat / f)
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["index", "build", str(flat), "--out", str(cat), "--model", "efficientnet-lite0"])
    assert r.exit_code == 0 and "indexed 3 items" in r.output, r.output
    r = runner.invoke(app, ["search", str(cat), str(img / "t_1_0.jpg"), "-k", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])[0]["id"] == 1  # the same photo comes first
    r = runner.invoke(app, ["search", str(cat), str(img / "t_1_0.jpg"), "-k", "1"])
    assert r.exit_code == 0 and "id=1  product=-  " in r.output and "None" not in r.output, r.output
    more = tmp_path / "more"
    (more / "box").mkdir(parents=True)
    shutil.copy(img / "t_0_1.jpg", more / "loose.jpg")
    shutil.copy(img / "t_3_0.jpg", more / "box" / "boxed.jpg")
    r = runner.invoke(app, ["index", "add", str(cat), str(more)])
    assert r.exit_code == 0 and "added 2 item(s) under new ids 3..4" in r.output, r.output
    with Catalog.open(cat) as c:
        md = {m["image"].rsplit("/", 1)[-1]: m for m in c.store.get(c.store.ids())}
    assert md["loose.jpg"].get("product_id") is None and md["t_0_0.jpg"].get("product_id") is None
    assert md["boxed.jpg"]["product_id"] == 0 and md["boxed.jpg"]["category"] == "box"  # a new product


def test_index_add_names_the_ids_it_added_and_each_skipped_file_once(tmp_path) -> None:
    import shutil

    ds = write_dataset(tmp_path / "ds")
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(cat), "--model", "efficientnet-lite0"])
    assert r.exit_code == 0, r.output  # seller_img_id 0-3
    folder = tmp_path / "more" / "box"
    folder.mkdir(parents=True)
    shutil.copy(tmp_path / "ds" / "img" / "t_0_0.jpg", folder / "a.jpg")
    (folder / "b.jpg").write_bytes((tmp_path / "ds" / "img" / "t_0_1.jpg").read_bytes()[:200])  # truncated
    shutil.copy(tmp_path / "ds" / "img" / "t_1_0.jpg", folder / "c.jpg")
    r = runner.invoke(app, ["index", "add", str(cat), str(folder.parent)])
    assert r.exit_code == 0, r.output
    assert "added 2 item(s) under new ids 4, 6" in r.output and "holds 6 items; skipped 1" in r.output, r.output
    assert r.output.count("b.jpg") == 1, r.output


def test_id_ranges() -> None:
    from productlens.cli.index_cmd import id_ranges

    assert id_ranges([9, 4, 5, 6]) == "4..6, 9"
    assert id_ranges([1, 3, 5, 7], limit=2) == "1, 3 and 2 more"


def test_index_build_ocr_writes_nothing_when_the_text_weight_fails(tmp_path, monkeypatch) -> None:
    from productlens.pipeline import fusion
    from productlens.types import ProductLensError

    def fail(*a, **k):
        raise ProductLensError("adaptation needs photos of at least 2 products")

    monkeypatch.setattr(fusion, "choose_text_weight", fail)
    ds = write_dataset(tmp_path / "ds")
    r = runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(tmp_path / "cat"), "--model",
                            "efficientnet-lite0", "--train", str(ds["train"]), "--ocr"])
    assert r.exit_code == 1 and "at least 2 products" in r.output
    assert not (tmp_path / "cat").exists()  # chosen before the catalog is written


@pytest.mark.parametrize("overwrite, message", [(False, "exists; replace it with --overwrite"),
                                                (True, "holds files but no productlens catalog")])
def test_index_build_ocr_checks_its_output_before_the_text_weight(tmp_path, monkeypatch, overwrite, message) -> None:
    from productlens.pipeline import fusion

    def never(*a, **k):
        raise AssertionError("the text weight was chosen for a catalog that cannot be written")

    monkeypatch.setattr(fusion, "choose_text_weight", never)
    ds = write_dataset(tmp_path / "ds")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    r = runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(tmp_path / "mine"), "--model",
                            "efficientnet-lite0", "--train", str(ds["train"]), "--ocr"]
                      + (["--overwrite"] if overwrite else []))
    assert r.exit_code == 1 and message in r.output, r.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


def test_cli_clear_errors(tmp_path) -> None:
    r = runner.invoke(app, ["index", "build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and "no such catalog" in r.output
    r = runner.invoke(app, ["search", str(tmp_path), "x.jpg"])
    assert r.exit_code == 1 and "not a productlens catalog" in r.output
    r = runner.invoke(app, ["serve", str(tmp_path / "nocat")])
    assert r.exit_code == 1 and f"no catalog at {tmp_path / 'nocat'}: no such folder" in r.output
    r = runner.invoke(app, ["demo", "--catalog", str(tmp_path / "missing")])
    assert r.exit_code == 1 and f"no catalog at {tmp_path / 'missing'} (from --catalog)" in r.output
    assert "CATALOG is not set" not in r.output  # it was given: the message named the default instead


def test_cli_data_fetch_from_local_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRODUCTLENS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "data.csv"
    src.write_text("image,product_id\n")
    r = runner.invoke(app, ["data", "fetch", src.as_uri()])
    assert r.exit_code == 0, r.output
    local = r.output.strip().splitlines()[-1]
    assert local.startswith(str(tmp_path / "cache")) and open(local).read() == "image,product_id\n"
    r = runner.invoke(app, ["data", "fetch", src.as_uri(), "--sha256", "0" * 64])
    assert r.exit_code == 1


def test_cli_demo_on_a_small_catalog(tmp_path) -> None:
    import csv

    ds = write_dataset(tmp_path / "ds")
    rows = list(csv.DictReader(open(ds["train"])))
    with open(ds["train"], "w", newline="") as f:  # categories: the demo then trains a classifier
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["category_name"])
        w.writeheader()
        w.writerows({**r, "category_name": f"shape {int(r['product_id']) % 2}"} for r in rows)
    r = runner.invoke(app, ["demo", "--catalog", str(ds["gallery"]), "--out", str(tmp_path / "cat"),
                            "--model", "efficientnet-lite0", "--queries", "2", "--no-detector"])
    assert r.exit_code == 0, r.output
    assert "adapting on 16 labelled photos" in r.output and r.output.count("\nquery ") == 2
    assert "the examples are catalog photos, which find themselves first" in r.output  # no val.csv here
    assert ": )" not in r.output  # an untitled product is not shown with an empty title
    assert (tmp_path / "cat" / "store").is_dir() and (tmp_path / "cat" / "adapter").is_dir()
    assert "classifier attached: 2 categories" in r.output and (tmp_path / "cat" / "classifier").is_dir()
    assert Image.open(tmp_path / "demo.png").size[1] > 2 * 160  # a row per example query
    Image.new("RGB", (20, 20)).save(tmp_path / "demo.png")  # one an earlier version drew, with no mark
    r = runner.invoke(app, ["demo", "--catalog", str(ds["gallery"]), "--out", str(tmp_path / "cat"),
                            "--model", "efficientnet-lite0", "--queries", "2", "--no-detector", "--no-classifier"])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    assert Image.open(tmp_path / "demo.png").size[1] > 2 * 160  # replaced, not kept
    assert "indexing" in r.output  # --no-classifier: not the catalog built before
    # the same photos and options again: the catalog is reused, not built anew (minutes on real data)
    r = runner.invoke(app, ["demo", "--catalog", str(ds["gallery"]), "--out", str(tmp_path / "cat"),
                            "--model", "efficientnet-lite0", "--queries", "2", "--no-detector", "--no-classifier"])
    assert r.exit_code == 0 and "catalog: reusing" in r.output and "indexing" not in r.output, r.output
    assert r.output.count("\nquery ") == 2
    for photo in (tmp_path / "ds").rglob("*.jpg"):  # the photos changed: built anew
        os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 1))
    r = runner.invoke(app, ["demo", "--catalog", str(ds["gallery"]), "--out", str(tmp_path / "cat"),
                            "--model", "efficientnet-lite0", "--queries", "2", "--no-detector", "--no-classifier"])
    assert r.exit_code == 0 and "indexing" in r.output and "reusing" not in r.output, r.output


def test_serve_says_when_its_port_is_taken_before_saying_it_serves(tmp_path, monkeypatch) -> None:
    import socket

    import uvicorn

    ds = write_dataset(tmp_path / "ds", n_products=2, per_product=1)
    cat = tmp_path / "cat"
    assert runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(cat), "--model",
                               "efficientnet-lite0"]).exit_code == 0
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server was started"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(app, ["serve", str(cat), "--port", str(port)])
    assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in r.output and "is serving" not in r.output


def test_demo_goes_on_past_an_unreadable_example_photo(tmp_path) -> None:
    """Without val.csv the examples are catalog photos, and one the build skipped had stopped the demo."""
    ds = write_dataset(tmp_path / "ds", n_products=2, per_product=1)
    (tmp_path / "ds" / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff cut short")
    with open(ds["gallery"], "a") as f:
        f.write("99,img/bad.jpg,0\n")
    (tmp_path / "ds" / "train.csv").unlink()
    r = runner.invoke(app, ["demo", "--catalog", str(ds["gallery"]), "--out", str(tmp_path / "cat"), "--model",
                            "efficientnet-lite0", "--queries", "3", "--no-classifier", "--no-detector"])
    assert r.exit_code == 0, r.output
    assert "skipped example: " in r.output and "bad.jpg" in r.output and r.output.count("\nquery ") == 2
    r = runner.invoke(app, ["demo", "--catalog", str(ds["gallery"]), "--out", str(tmp_path / "cat2"),
                            "--backgrounds", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "--backgrounds" in r.output and "no such folder" in r.output
    assert not (tmp_path / "cat2").exists()  # said before the indexing


def test_demo_detector_trains_once_skips_without_backgrounds(tmp_path, capsys) -> None:
    import numpy as np
    from PIL import Image

    from productlens.cli.search_cmd import demo_detector
    from productlens.models.detectors import load_detector
    from productlens.types import Item

    (tmp_path / "shop").mkdir()
    (tmp_path / "bg").mkdir()
    items = []
    for i, colour in enumerate([(200, 30, 30), (30, 160, 40)]):
        img = Image.new("RGB", (120, 100), (255, 255, 255))
        img.paste(colour, (30, 20, 90, 80))
        img.save(tmp_path / "shop" / f"p{i}.jpg", quality=95)
        items.append(Item(i, str(tmp_path / "shop" / f"p{i}.jpg")))
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(
            tmp_path / "bg" / f"b{i}.jpg")
    demo_detector(items, tmp_path / "det", None)
    assert "skipped, no background photos" in capsys.readouterr().out and not (tmp_path / "det").exists()
    Image.new("RGB", (90, 90), (255, 255, 255)).save(tmp_path / "blank.jpg")  # nothing to cut out
    demo_detector([Item(0, str(tmp_path / "blank.jpg"))], tmp_path / "det", tmp_path / "bg", composites=4)
    assert "skipped (no product photo gave a cut-out" in capsys.readouterr().out
    demo_detector(items, tmp_path / "det", tmp_path / "bg", composites=6)
    assert "product detector written to" in capsys.readouterr().out
    det = load_detector(tmp_path / "det")
    assert list(det.spec.labels) == ["product"]
    demo_detector(items, tmp_path / "det", tmp_path / "bg", composites=6)
    assert "reusing" in capsys.readouterr().out


def test_cli_index_remove_waits_for_the_writer_lock(tmp_path) -> None:
    """`index remove` writes under the catalog's writer lock: it waits while another writer holds it."""
    import threading
    import time

    from productlens.fileio import file_lock
    from productlens.pipeline.catalog import WRITER_LOCK

    ds = write_dataset(tmp_path / "ds")
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(cat), "--model", "efficientnet-lite0"])
    assert r.exit_code == 0, r.output
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with file_lock(cat / WRITER_LOCK):
            held.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(10)
    threading.Timer(0.6, release.set).start()
    t0 = time.monotonic()
    r = runner.invoke(app, ["index", "remove", str(cat), "0"])
    waited = time.monotonic() - t0
    t.join()
    assert r.exit_code == 0, r.output
    assert "removed 1" in r.output and waited >= 0.5


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(tmp_path, caplog) -> None:
    """Linux keeps a name's bytes: one in Latin-1 could not go into the catalog's SQLite or a csv, and
    aborted the whole build with a traceback. It is now reported and skipped; the rest is indexed."""
    import os
    import shutil

    write_dataset(tmp_path / "ds")
    img = tmp_path / "ds" / "img"
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in ("t_0_0.jpg", "t_1_0.jpg"):
        shutil.copy(img / f, flat / f)
    shutil.copy(img / "t_2_0.jpg", os.fsdecode(os.fsencode(str(flat)) + b"/caf\xe9.jpg"))
    r = runner.invoke(app, ["index", "build", str(flat), "--out", str(tmp_path / "cat"),
                            "--model", "efficientnet-lite0"])
    assert r.exit_code == 0 and "indexed 2 items" in r.output, r.output
    assert "caf\\xe9.jpg: the name is not valid UTF-8" in caplog.text


def test_an_emptied_catalog_says_so_and_batches_that_read_nothing_exit_1(tmp_path) -> None:
    """search printed nothing and exited 0 on an empty catalog, rank and identify-video blamed k; rank -k -1
    ended in a traceback; index add whose every row was unreadable exited 0."""
    ds = write_dataset(tmp_path / "ds", n_products=2, per_product=1)
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(cat), "--model", "efficientnet-lite0"])
    assert r.exit_code == 0, r.output
    q = str(tmp_path / "ds" / "img" / "q_1_0.jpg")
    r = runner.invoke(app, ["rank", str(cat), str(ds["queries"]), "--out", str(tmp_path / "r.npy"), "-k", "-1"])
    assert r.exit_code == 2 and "-k" in r.output and "Traceback" not in r.output
    queries = ds["queries"].read_bytes()
    r = runner.invoke(app, ["rank", str(cat), str(ds["queries"]), "--out", str(ds["queries"])])
    assert r.exit_code == 1 and "written as .npy" in r.output and ds["queries"].read_bytes() == queries
    photo = (tmp_path / "ds" / "img" / "q_1_0.jpg").read_bytes()
    for args in (["search", str(cat), q, "--plot", q], ["rank", str(cat), str(ds["queries"]), "--out", q]):
        r = runner.invoke(app, args)  # a sheet or an array over the query photo itself
        assert r.exit_code == 1 and ("not a picture productlens drew" in r.output or ".npy" in r.output), r.output
    assert (tmp_path / "ds" / "img" / "q_1_0.jpg").read_bytes() == photo
    r = runner.invoke(app, ["eval", "retrieval", "--gallery", str(ds["gallery"]), "--queries", str(ds["queries"]),
                            "--rankings", str(ds["gallery"])])
    assert r.exit_code == 1 and "--rankings" in r.output and "is this command's input" in r.output
    bad = tmp_path / "bad.csv"
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    bad.write_text(f"seller_img_id,img_path\n7,{tmp_path / 'junk.jpg'}\n")
    r = runner.invoke(app, ["index", "add", str(cat), str(bad)])
    assert r.exit_code == 1 and "skipped: " in r.output and "holds 2 items" in r.output, r.output
    r = runner.invoke(app, ["index", "remove", str(cat), "0", "1"])
    assert r.exit_code == 0 and "holds 0 items" in r.output, r.output
    for args in (["search", str(cat), q], ["rank", str(cat), str(ds["queries"]), "--out", str(tmp_path / "r.npy")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "the catalog holds no item" in r.output, (args, r.output)
    assert not (tmp_path / "r.npy").exists()


def test_search_says_when_given_text_is_not_used(tmp_path) -> None:
    """A catalog built with --ocr whose training photos chose a text weight of 0 ignores --text: it did
    so without a word, and the user took the unchanged ranking for the text's verdict."""
    from productlens.pipeline.catalog import Catalog

    ds = write_dataset(tmp_path / "ds", n_products=2, per_product=1)
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["index", "build", str(ds["gallery"]), "--out", str(cat), "--model", "efficientnet-lite0"])
    assert r.exit_code == 0, r.output
    q = str(tmp_path / "ds" / "img" / "q_1_0.jpg")
    r = runner.invoke(app, ["search", str(cat), q, "--text", "red box", "--no-verify"])
    assert r.exit_code == 0 and "no item of this catalog has a title, category or other text" in r.output
    with Catalog.open(cat) as c:
        c.update_metadata(c.store.ids().tolist(), [{"title": "a red box"}] * len(c))
    r = runner.invoke(app, ["search", str(cat), q, "--text", "red box", "--no-verify"])
    assert r.exit_code == 0 and "note:" not in r.output  # titles, no OCR: the given text counts
    with Catalog.open(cat) as c:
        c.store.set_info("ocr", True)  # as `index build --ocr --train` records it
        c.set_text_weight(0.0)
    r = runner.invoke(app, ["search", str(cat), q, "--text", "red box", "--no-verify"])
    assert r.exit_code == 0 and "note: --text is not used: this catalog's text weight is 0" in r.output


def test_sigterm_stops_a_command_through_its_clean_up(tmp_path) -> None:
    """`timeout` or `kill` (SIGTERM) had ended a command at once, leaving its temporary folder behind."""
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    (tmp_path / "shop").mkdir()
    (tmp_path / "bg").mkdir()
    for i in range(2):
        img = Image.new("RGB", (120, 100), (255, 255, 255))
        img.paste((200, 30 + 100 * i, 30), (30, 20, 90, 80))
        img.save(tmp_path / "shop" / f"p{i}.jpg")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(
            tmp_path / "bg" / f"b{i}.jpg")
    out = tmp_path / "syn"
    proc = subprocess.Popen([sys.executable, "-c", "from productlens.cli.main import main; main()", "data",
                             "composites", str(tmp_path / "shop"), str(tmp_path / "bg"), "--out", str(out),
                             "-n", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*.pltmp")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert list(tmp_path.glob("*.pltmp")), "the command never started writing"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    assert not list(tmp_path.glob("*.pltmp")) and not out.exists()


def test_flags_are_not_shown_as_taking_a_value() -> None:
    """typer 0.29 listed `--json <bool>`; `--json true` then failed with "unexpected extra argument"."""
    r = runner.invoke(app, ["search", "--help"])
    assert r.exit_code == 0 and "--json" in r.output and "--no-rerank" in r.output
    assert "<bool>" not in r.output

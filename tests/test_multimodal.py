"""Product text, OCR, fusion, text queries, image-text alignment and zero-shot."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import add_columns, package_photo, write_dataset
from productlens.cli.main import app
from productlens.heads.align import Alignment, fit_alignment, product_text
from productlens.pipeline.fusion import TextMatcher, fit_text_weight, fuse, item_document
from productlens.pipeline.text_search import BM25, ProductText, TextSearch
from productlens.types import Item, ProductLensError

pytest.importorskip("sentence_transformers")
pytest.importorskip("rapidocr_onnxruntime")


@pytest.fixture(scope="module")
def encoder():
    from productlens.models.text import get_text_encoder

    return get_text_encoder()


# ------------------------------------------------------------------ text encoder
def test_text_encoder_unit_rows_zero_for_empty_any_script(encoder):
    v = encoder.encode(["apple juice", "", None, "  \n\t ", "äppeljuice", "牛奶", "молоко", "apple juice"])
    assert v.shape == (8, 384) and v.dtype == np.float32
    norms = np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(norms[[0, 4, 5, 6, 7]], 1.0, atol=1e-5)
    assert not v[1:4].any()  # empty text carries no evidence
    np.testing.assert_allclose(v[0], v[7], atol=1e-6)
    assert v[0] @ encoder.encode(["orange juice"])[0] > v[0] @ encoder.encode(["winter tyres"])[0]
    with pytest.raises(ProductLensError, match="texts must be a list"):  # had given a row per character
        encoder.encode("apple juice")


# ------------------------------------------------------------------ text search
PRODUCTS = [
    ProductText(0, "Bravo Apple Juice", "Juice", {"description": "Pressed from sweet Swedish apples."}),
    ProductText(1, "God Morgon Orange Juice", "Juice", {"description": "Orange juice with pulp, ready to drink."}),
    ProductText(2, "Oatly Oat Milk", "Oat-Milk", {"description": "A creamy oat drink, lactose free."}),
    ProductText(3, "Granny Smith", "Apple", {"description": "A green apple with white, firm flesh."}),
]


def test_bm25_prefers_rare_words_and_handles_unknown_words():
    bm = BM25([p.document() for p in PRODUCTS])
    s = bm.scores(["creamy oat", "zzzz"])
    assert s[0].argmax() == 2
    assert not s[1].any()


def test_text_search_finds_words_inside_titles_written_without_spaces(encoder):
    """Chinese and Thai titles are one "word" each to a word tokenizer: "牛奶" (milk) scored 0 against
    "全脂牛奶" (whole milk), and MiniLM, trained on English, guessed. Such scripts count pairs of characters."""
    from productlens.pipeline.text_search import words_of

    products = [ProductText(1, "燕麦酸奶"), ProductText(2, "全脂牛奶"), ProductText(3, "橙汁"),
                ProductText(4, "น้ำแอปเปิ้ล"), ProductText(5, "น้ำส้ม"), ProductText(6, "Äpple Juice")]
    ts = TextSearch(products, encoder)
    assert ts.search("牛奶", 1)[0][0].product_id == 2
    assert ts.search("酸奶", 1)[0][0].product_id == 1
    assert ts.search("ส้ม", 1)[0][0].product_id == 5
    assert ts.search("apple", 1)[0][0].product_id == 6
    assert words_of("Crème Brûlée 3,5%") == ["creme", "brulee", "3", "5"]  # other scripts: words as before
    assert words_of("abc牛奶def 牛") == ["abc", "牛奶", "def", "牛"]
    assert "우유" in words_of("저지방우유 1L")  # Hangul syllables stay whole (NFKD had split them into letters)


def test_text_search_lexical_then_dense(encoder):
    ts = TextSearch(PRODUCTS, encoder)
    assert ts.search("juice pulp", 1)[0][0].product_id == 1
    assert ts.search("green apple", 1)[0][0].product_id == 3
    # no word in common with any product: the dense cosine decides
    assert ts.search("citrus fruit beverage", 1)[0][0].product_id == 1
    with pytest.raises(ProductLensError, match="empty"):
        ts.search("   ")
    with pytest.raises(ProductLensError):
        TextSearch([ProductText(5)], encoder)
    # products with no text cannot answer a text query: never listed, even to fill k
    partly = TextSearch([ProductText(-8), *PRODUCTS[:2], ProductText(-9)], encoder)
    assert [p.product_id for p, _ in partly.search("apple", 10)] == [0, 1]


def test_product_documents_are_encoded_once_and_kept_in_the_feature_cache(tmp_path, monkeypatch):
    """Every `text search` had encoded every product of the catalog again (237 s for 40,000 products)."""
    from productlens.models.text import TextEncoder
    from productlens.pipeline.text_search import encode_documents

    monkeypatch.setenv("PRODUCTLENS_FEATURE_CACHE", str(tmp_path / "fc"))
    seen: list[str] = []

    def batch(texts):
        seen.extend(texts)
        return np.array([[len(t), t.count("a"), 1.0, 0.5] for t in texts], np.float32)

    enc = TextEncoder("fake", 4, batch, revision="1")
    docs = ["apple juice", "oat  milk", "", "apple juice"]
    first = encode_documents(enc, docs)
    assert seen == ["apple juice", "oat milk"]  # each text once, the empty one never
    np.testing.assert_array_equal(first, enc.encode(docs).astype(np.float16).astype(np.float32))
    seen.clear()
    again = encode_documents(enc, ["oat milk", "apple juice", "kiwi"])  # "oat milk": the same text cleaned
    assert seen == ["kiwi"] and np.array_equal(again[:2], first[[1, 0]])
    seen.clear()
    encode_documents(TextEncoder("fake", 4, batch, revision="2"), ["kiwi"])  # other weights: encoded again
    assert seen == ["kiwi"]


def test_text_search_puts_a_product_named_by_the_query_first(encoder):
    juices = [ProductText(0, "Äpple Juice", "Juice", {"description": "Juice of apples."}),
              ProductText(1, "Äpple Juice med Fruktkött", "Juice",
                          {"description": "Äpple juice with pulp: juice, juice, juice.", "name": "Pulpy-Apple"})]
    ts = TextSearch(juices, encoder)
    lexical, _ = ts.rankers(["Äpple Juice"])
    assert lexical[0, 1] > lexical[0, 0]  # BM25 alone prefers the longer title, which says "juice" more
    # the exact title wins, case and accents aside; so does a product's name
    assert [p.product_id for p, _ in ts.search("äpple  JUICE", 2)] == [0, 1]
    assert ts.search("pulpy apple", 1)[0][0].product_id == 1
    # a query that only shares words with a title is ranked by BM25 as before
    assert ts.search("apple juice pulp", 1)[0][0].product_id == 1
    # a title beats another product's name of the same words, whatever the dense cosine says
    named = TextSearch([ProductText(7, "", "", {"name": "Apple-Juice"}), *juices], encoder)
    assert [p.product_id for p, _ in named.search("apple juice", 2)] == [0, 7]


def test_text_search_cli_names_an_item_that_has_no_product(tmp_path):
    paths = write_dataset(tmp_path, n_products=3, per_product=1)
    rows = list(csv.DictReader(open(paths["gallery"])))
    gallery = tmp_path / "g.csv"  # titled seller photos, no product ids
    gallery.write_text("seller_img_id,img_path,title\n" + "".join(
        f"{r['seller_img_id']},{paths['gallery'].parent / r['img_path']},box {r['seller_img_id']}\n" for r in rows))
    runner = CliRunner()
    assert runner.invoke(app, ["index", "build", str(gallery), "--out", str(tmp_path / "c")]).exit_code == 0
    res = runner.invoke(app, ["text", "search", str(tmp_path / "c"), "box 1", "-k", "1", "--json"])
    assert res.exit_code == 0, res.output
    (hit,) = json.loads(res.output.strip().splitlines()[-1])
    assert hit["product_id"] is None and hit["id"] == 1 and hit["title"] == "box 1"
    res = runner.invoke(app, ["text", "search", str(tmp_path / "c"), "box 1", "-k", "1"])
    assert "id=1  box 1" in res.output


# ------------------------------------------------------------------ OCR
def test_ocr_reads_printed_words_and_reports_bad_files(tmp_path):
    from productlens.models.ocr import get_ocr

    ocr = get_ocr()
    words = ocr.read(package_photo("BRAVO", 0, shop=True))
    assert "BRAVO" in " ".join(w.text.upper() for w in words)
    assert all(0 <= w.score <= 1 and w.box[2] > w.box[0] for w in words)
    from PIL import Image

    assert ocr.read(Image.new("RGB", (4, 4))) == []
    with pytest.raises(ProductLensError, match="OCR.read takes a decoded PIL image, got str"):
        ocr.read("photo.jpg")  # had been "'str' object has no attribute 'mode'"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out, errors = ocr.read_many([bad, package_photo("MILK", 1, shop=True)])
    assert out[0] is None and len(errors) == 1 and "bad.jpg" in str(errors[0][1])
    assert "MILK" in " ".join(w.text.upper() for w in out[1])


def test_ocr_engine_failure_is_a_clear_error():
    from productlens.models.ocr.base import OCR, OCRError

    def broken(arr):
        raise RuntimeError("model file missing")

    with pytest.raises(OCRError, match="RuntimeError: model file missing"):
        OCR("broken", broken).read(package_photo("X", 0, shop=True))
    out, errors = OCR("broken", broken).read_many(["/tmp/x.jpg", package_photo("X", 0, shop=True)])
    assert out == [None, None] and errors[1][2].startswith("image #1: OCR (broken) failed")


def test_ocr_reads_the_box_transparent_print_banners_and_replaced_files(tmp_path):
    """A PIL image's box was ignored (identify-video --detect read the whole frame); print on a transparent
    ground turned black on black; an 8x6000 banner failed with "OCR (rapidocr) failed: " and nothing else;
    a photo replaced under the same path kept its old words for the rest of the process."""
    import time

    from PIL import Image

    from productlens.pipeline.fusion import ocr_texts
    from productlens.types import Box

    pair = Image.new("RGB", (320, 160))
    pair.paste(package_photo("BRAVO", 0, shop=True), (0, 0))
    pair.paste(package_photo("ZESTA", 0, shop=True), (160, 0))
    right = ocr_texts([pair], [Box(160, 0, 160, 160)])[0].upper()
    assert "ZESTA" in right and "BRAVO" not in right
    grey = np.asarray(package_photo("KALMO", 0, shop=True).convert("L"))
    clear = np.zeros((*grey.shape, 4), np.uint8)
    clear[..., 3] = np.where(grey < 60, 255, 0)  # black print, the rest transparent (and black beneath)
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    assert "KALMO" in ocr_texts([tmp_path / "clear.png"])[0].upper()
    assert "KALMO" in ocr_texts([Image.open(tmp_path / "clear.png")])[0].upper()
    Image.new("RGB", (8, 6000), "white").save(tmp_path / "banner.png")
    assert ocr_texts([tmp_path / "banner.png"]) == [""]
    from productlens.models.ocr import get_ocr

    words, errors = get_ocr().read_many([tmp_path / "banner.png"])
    assert words == [[]] and not errors
    photo = tmp_path / "p.png"
    package_photo("NORDA", 0, shop=True).save(photo)
    assert "NORDA" in ocr_texts([photo])[0].upper()
    time.sleep(0.01)
    package_photo("PIXEL", 0, shop=True).save(photo)
    assert "PIXEL" in ocr_texts([photo])[0].upper()


# ------------------------------------------------------------------ fusion
def test_text_matcher_tolerates_misreadings():
    m = TextMatcher([10, 11, 12], [item_document({"title": "Bravo Apple Juice", "ocr": "BRAVO"}),
                                   item_document({"title": "God Morgon Apple Juice"}),
                                   item_document({})])
    s = m.scores(["BRANO APPLE", ""])
    assert s[0].argmax() == 0 and s[0, 0] > s[0, 1] > s[0, 2] == 0
    assert not s[1].any()
    g = m.gather(s, np.array([[12, 10, -1], [11, 99, 10]]))
    assert g[0, 1] == s[0, 0] and g[0, 2] == 0 and g[1, 1] == 0


def test_fuse_and_weight_chosen_on_held_out_queries():
    ids = np.array([[1, 2], [1, 2], [2, 1]])
    scores = np.array([[0.9, 0.8], [0.9, 0.85], [0.7, 0.6]], np.float32)
    text = np.array([[0.0, 0.5], [0.0, 0.4], [0.0, 0.0]], np.float32)
    s, r = fuse(scores, ids, text, 0.5)
    assert r[0].tolist() == [2, 1] and r[2].tolist() == [2, 1]
    # queries 0 and 1 show product 2 (item 2), query 2 product 2: the text helps, a weight > 0 wins
    w, table = fit_text_weight(scores, ids, text, {1: 1, 2: 2}, [2, 2, 2])
    assert w > 0 and table[w] > table[0.0]
    # text that points the wrong way keeps the weight at 0
    w, _ = fit_text_weight(scores, ids, text, {1: 1, 2: 2}, [1, 1, 2])
    assert w == 0.0


def _package_dataset(root, words, per_product=4):
    """gallery.csv (shop photos with titles), train.csv and queries: packages that differ only by their word."""
    rows_g, rows_t, queries = [], [], []
    for p, word in enumerate(words):
        package_photo(word, 0, shop=True).save(root / f"shop_{p}.jpg")
        rows_g.append({"seller_img_id": p, "img_path": f"shop_{p}.jpg", "product_id": p, "title": f"{word} juice"})
        for v in range(per_product):
            package_photo(word, 10 + v, shop=False).save(root / f"t_{p}_{v}.jpg")
            rows_t.append({"image": f"t_{p}_{v}.jpg", "product_id": p})
        package_photo(word, 99, shop=False).save(root / f"q_{p}.jpg")
        queries.append(Item(p, str(root / f"q_{p}.jpg"), product_id=p))
    for name, rows in (("gallery.csv", rows_g), ("train.csv", rows_t)):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root / "gallery.csv", root / "train.csv", queries


def test_index_build_ocr_chooses_the_weight_by_cross_fitting(tmp_path):
    from productlens.pipeline.catalog import Catalog

    # eight five-letter words: multi-region queries against whole seller photos (--gallery-views none) confuse
    # some of the packages, OCR does not (with the same views on both sides the image alone tells these clean
    # packages apart). The folds' catalogs that choose the weight must be built with the catalog's views, or
    # the weight would be 0.
    gallery, train, queries = _package_dataset(tmp_path, ["BRAVO", "ZESTA", "KALMO", "NORDA", "PIXEL", "MOXIE",
                                                          "OATLY", "GUSTO"])
    res = CliRunner().invoke(app, ["index", "build", str(gallery), "--out", str(tmp_path / "cat"), "--train",
                                   str(train), "--catalog-labels", "--no-finetune", "--ocr", "--gallery-views", "none"])
    assert res.exit_code == 0, res.output
    assert "text fusion weight" in res.output
    with Catalog.open(tmp_path / "cat") as cat:
        assert cat.uses_ocr and cat.text_weight > 0
        assert "ZESTA" in cat.store.get([1])[0]["ocr"].upper() and cat.store.get([1])[0]["title"] == "ZESTA juice"
        assert sum(cat.search(q.image, k=4)[0].product_id == q.product_id for q in queries) >= 7


def test_ocr_weight_is_chosen_with_two_training_products(tmp_path):
    """With 2 (or 3) products, each fold of the cross-fitting adapted on the one product left and failed:
    "adaptation needs photos of at least 2 products". Such a fold's catalog is not adapted; and a
    training csv with only a header is named as such, not as a missing --train."""
    gallery, train, _ = _package_dataset(tmp_path, ["BRAVO", "ZESTA"])
    res = CliRunner().invoke(app, ["index", "build", str(gallery), "--out", str(tmp_path / "cat"), "--train",
                                   str(train), "--catalog-labels", "--no-finetune", "--ocr"])
    assert res.exit_code == 0 and "text fusion weight" in res.output, res.output
    (tmp_path / "header.csv").write_text("image,product_id\n")
    res = CliRunner().invoke(app, ["index", "build", str(gallery), "--out", str(tmp_path / "cat2"), "--train",
                                   str(tmp_path / "header.csv"), "--ocr"])
    assert res.exit_code == 1 and "no labelled photo in it" in res.output, res.output


def test_choose_text_weight_needs_catalog_mode():
    from productlens.pipeline.fusion import choose_text_weight

    train = [Item(i, "x.jpg", product_id=i % 2) for i in range(4)]
    with pytest.raises(ProductLensError, match="catalog mode"):
        choose_text_weight([Item(0, "g.jpg")], train)
    with pytest.raises(ProductLensError, match="at least 2 products"):
        choose_text_weight([Item(0, "g.jpg", product_id=0)], train[:1])


def test_catalog_with_ocr_fuses_print_with_the_image(tmp_path, monkeypatch):
    """Packages that look the same and differ only by their brand: OCR tells them apart."""
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.catalog_build import build_catalog

    words = ["BRAVO", "GARDEN", "MOXIE"]
    gallery, held, queries = [], [], []
    for p, word in enumerate(words):
        path = tmp_path / f"shop_{p}.jpg"
        package_photo(word, 0, shop=True).save(path)
        gallery.append(Item(p, str(path), product_id=p, title=f"{word.title()} juice"))
        for v in range(4):
            path = tmp_path / f"t_{p}_{v}.jpg"
            package_photo(word, 10 + v, shop=False).save(path)
            held.append(Item(len(held), str(path), product_id=p))
        path = tmp_path / f"q_{p}.jpg"
        package_photo(word, 99, shop=False).save(path)
        queries.append(Item(p, str(path), product_id=p))
    # no adapter: the held-out photos choose the weight, the image alone cannot tell the packages apart
    cat, errors = build_catalog(gallery, tmp_path / "cat", ocr=True, progress=False)
    assert not errors
    with cat:
        assert "BRAVO" in cat.store.get([0])[0]["ocr"].upper()
        assert cat.text_weight == 0.0  # no weight before one is chosen: image only
        table = cat.fit_text_weight(held)
        assert cat.text_weight > 0 and table[cat.text_weight] > table[0.0]
        for q in queries:
            assert cat.search(q.image, k=3)[0].product_id == q.product_id
    with Catalog.open(tmp_path / "cat") as cat:  # reopened: the weight and the OCR text are kept
        assert cat.uses_ocr and cat.text_weight > 0
        assert cat.search(queries[1].image, k=3, text="garden")[0].product_id == 1
        # a large photo's print is read at full size, as rank and eval read it: search had read the picture
        # shrunk while decoding (to 1/8 here), where 20-pixel print is gone
        from PIL import Image

        import productlens.pipeline.fusion as fusion

        big = Image.new("RGB", (4000, 3000), (255, 255, 255))
        big.paste(package_photo("GARDEN", 0, shop=True), (200, 200))
        big.save(tmp_path / "big.jpg")
        read, real = [], fusion.ocr_texts
        monkeypatch.setattr(fusion, "ocr_texts", lambda *a, **kw: read.append(real(*a, **kw)) or read[-1])
        cat.search(tmp_path / "big.jpg", k=3)
        assert "GARDEN" in read[-1][0].upper()


# ------------------------------------------------------------------ alignment
def test_alignment_maps_images_to_their_texts(tmp_path):
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(5, 16)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    mix = rng.normal(size=(16, 40)).astype(np.float32)
    labels = np.repeat(np.arange(5), 20)
    images = texts[labels] @ mix + 0.05 * rng.normal(size=(100, 40)).astype(np.float32)
    a = fit_alignment(images, texts[labels], image_space="test", text_encoder="t")
    assert (a.similarity(images, texts).argmax(1) == labels).mean() > 0.95
    a.save(tmp_path / "align")
    b = Alignment.load(tmp_path / "align", image_space="test")
    np.testing.assert_allclose(a.project(images[:3]), b.project(images[:3]), atol=1e-6)
    with pytest.raises(ProductLensError, match="trained on test"):
        Alignment.load(tmp_path / "align", image_space="other")
    with pytest.raises(ProductLensError, match="40-d"):
        a.project(np.zeros((1, 7)))
    with pytest.raises(ProductLensError, match="at least 2"):
        fit_alignment(images[:3], np.zeros((3, 16)), image_space="test", text_encoder="t")


def test_product_text_joins_distinct_fields():
    assert product_text("Granny Smith", "Apple", "Granny-Smith") == "Granny Smith. Apple"
    assert product_text("", "", None) == ""


# ------------------------------------------------------------------ catalog + CLI
@pytest.fixture(scope="module")
def text_catalog(tmp_path_factory):
    """A catalog of the generated products with titles, an alignment and its data."""
    root = tmp_path_factory.mktemp("textcat")
    paths = write_dataset(root, n_products=4, per_product=4)
    titles = ["red box", "green box", "blue box", "yellow box"]
    add_columns(paths["gallery"], root / "gallery_t.csv", {"title": lambda r: titles[int(r["product_id"])]})
    runner = CliRunner()
    res = runner.invoke(app, ["index", "build", str(root / "gallery_t.csv"), "--out", str(root / "cat"),
                              "--train", str(paths["train"]), "--catalog-labels", "--no-finetune"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["text", "align", str(root / "cat"), "--train", str(paths["train"])])
    assert res.exit_code == 0, res.output
    assert "16 training photos of 4 products" in res.output
    return root, paths


def test_text_search_photos_and_zero_shot_cli(text_catalog):
    root, paths = text_catalog
    runner = CliRunner()
    res = runner.invoke(app, ["text", "search", str(root / "cat"), "green", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])[0]["title"] == "green box"
    assert "note:" not in res.output
    res = runner.invoke(app, ["text", "search", str(root / "cat"), "Молоко"])  # no word in common
    assert res.exit_code == 0 and "no word of the query occurs in the catalog's text" in res.output
    res = runner.invoke(app, ["text", "search", str(root / "cat"), "blue box", "--photos", "-k", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])[0]["product_id"] == 2
    queries = list(csv.DictReader(open(paths["queries"])))
    imgs = [str(root / q["img_path"]) for q in queries]
    names = ["red", "green", "blue", "yellow"]
    for weight in ("0", "0.25"):  # the alignment alone, and mixed with ImageNet concepts (the default)
        res = runner.invoke(app, ["text", "zero-shot", str(root / "cat"), *imgs, "--names", ",".join(names),
                                  "-k", "1", "--imagenet-weight", weight, "--json"])
        assert res.exit_code == 0, res.output
        preds = json.loads(res.output.strip().splitlines()[-1])
        acc = np.mean([p["categories"][0][0] == names[int(q["product_id"])] for p, q in zip(preds, queries)])
        assert acc >= 0.75, weight


def test_zero_shot_and_photos_need_an_alignment(tmp_path):
    paths = write_dataset(tmp_path, n_products=2, per_product=1)
    runner = CliRunner()
    assert runner.invoke(app, ["index", "build", str(paths["gallery"]), "--out", str(tmp_path / "c")]).exit_code == 0
    res = runner.invoke(app, ["text", "zero-shot", str(tmp_path / "c"), "x.jpg", "--names", "a,b"])
    assert res.exit_code == 1 and "no image-text alignment" in res.output
    res = runner.invoke(app, ["text", "search", str(tmp_path / "c"), "anything"])
    assert res.exit_code == 1 and "no product has any text" in res.output
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.multimodal import photos_for_text, zero_shot

    with Catalog.open(tmp_path / "c") as cat:  # checked before the alignment is looked for
        with pytest.raises(ProductLensError, match="sources must be a list"):  # had read a path per character
            zero_shot(cat, "x.jpg", ["a", "b"])
        with pytest.raises(ProductLensError, match="names must be a list"):
            zero_shot(cat, ["x.jpg"], "Apple,Banana")
        for call in (lambda: zero_shot(cat, ["x.jpg"], ["a"], k=0), lambda: photos_for_text(cat, "a", k=-1)):
            with pytest.raises(ProductLensError, match="k must be a whole number"):
                call()


def test_ocr_cli_reports_bad_files(tmp_path):
    good = tmp_path / "p.png"
    package_photo("OATLY", 0, shop=True).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    pixel = tmp_path / "pixel.png"
    Image.new("RGB", (1, 1)).save(pixel)  # a placeholder: refused as elsewhere, not read as no words
    res = CliRunner().invoke(app, ["text", "ocr", str(good), str(bad), str(pixel), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert "OATLY" in " ".join(w["text"].upper() for w in out[0]["words"]) and out[1]["words"] is None
    assert out[2]["words"] is None
    skipped = [line for line in res.output.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and skipped[0].startswith(f"skipped: {bad}: ") and skipped[0].count(str(bad)) == 1
    assert skipped[1] == f"skipped: {pixel}: 1x1 pixels is too small to show a product (under 8 on a side)"


def test_eval_retrieval_text_needs_train(tmp_path):
    paths = write_dataset(tmp_path, n_products=2, per_product=1)
    res = CliRunner().invoke(app, ["eval", "retrieval", "--gallery", str(paths["gallery"]), "--queries",
                                   str(paths["queries"]), "--text"])
    assert res.exit_code == 1 and "--text needs --train" in res.output
    res = CliRunner().invoke(app, ["eval", "retrieval", "--gallery", str(paths["gallery"]), "--queries",
                                   str(paths["queries"]), "--products", str(paths["gallery"])])
    assert res.exit_code == 1 and "use it with --catalog --text" in res.output


def test_index_build_ocr_needs_train(tmp_path):
    paths = write_dataset(tmp_path, n_products=2, per_product=1)
    res = CliRunner().invoke(app, ["index", "build", str(paths["gallery"]), "--out", str(tmp_path / "c"), "--ocr"])
    assert res.exit_code == 1 and "--ocr needs --train" in res.output
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ video
def test_identify_video_pools_frames_and_reports_bad_clips(tmp_path):
    from productlens.data.clips import make_clip
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.pipeline.video import identify_video, sample_frames

    paths = write_dataset(tmp_path, n_products=4, per_product=3)
    queries = list(csv.DictReader(open(paths["queries"])))
    photos = [str(tmp_path / q["img_path"]) for q in queries if q["product_id"] == "2"]
    clip = make_clip(photos, tmp_path / "clip.mp4", fps=6, seed=1)
    frames, duration = sample_frames(clip, max_frames=10)
    assert 1 <= len(frames) <= 10 and 2.5 <= duration <= 3.5
    assert frames[0].image.size == (224, 224) and frames[-1].time > frames[0].time
    from productlens.data.readers import read_gallery

    cat, _ = build_catalog(read_gallery(paths["gallery"]), tmp_path / "cat", use_gallery_labels=True,
                           progress=False)
    with cat:
        res = identify_video(cat, clip, k=3)
        assert res.products[0].product_id == 2 and res.products[0].times
        assert res.frames_used + res.dropped_blank + res.dropped_blurred + res.dropped_duplicates + \
            res.dropped_unusable == res.frames_sampled
        assert len(res.products) == 3
        (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
        with pytest.raises(ProductLensError, match="bad.mp4"):
            identify_video(cat, tmp_path / "bad.mp4")
        with pytest.raises(ProductLensError, match="no such video"):
            identify_video(cat, tmp_path / "missing.mp4")
        with pytest.raises(ProductLensError, match="text weight must be >= 0"):  # inf: NaN scores, Infinity in JSON
            identify_video(cat, clip, text="box", text_weight=float("inf"))
        import cv2

        def write(path, frames):
            out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 6, (224, 224))
            for f in frames:
                out.write(f)
            out.release()
            return path

        black = np.zeros((224, 224, 3), np.uint8)
        # a black screen was ranked like a photo ("Aubergine 0.45"): now it is no usable frame
        with pytest.raises(ProductLensError, match="all 12 sampled frames are blank"):
            identify_video(cat, write(tmp_path / "black.mp4", [black] * 12))
        shown = [cv2.cvtColor(np.asarray(f.image), cv2.COLOR_RGB2BGR) for f in frames]
        faded = identify_video(cat, write(tmp_path / "fade.mp4", [black] * 6 + shown + [black + 255] * 6), k=3)
        assert faded.dropped_blank == 12 and faded.products[0].product_id == 2
        assert faded.frames_used + faded.dropped_blank + faded.dropped_blurred + faded.dropped_duplicates == \
            faded.frames_sampled
        one = identify_video(cat, tmp_path / "fade.mp4", k=1, max_frames=1)  # the middle frame, not the black first
        assert one.frames_used == 1 and one.dropped_blank == 0
    runner = CliRunner()
    res = runner.invoke(app, ["identify-video", str(clip), "--catalog", str(tmp_path / "cat"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["products"][0]["product_id"] == 2
    res = runner.invoke(app, ["identify-video", str(tmp_path / "bad.mp4"), "--catalog", str(tmp_path / "cat")])
    assert res.exit_code == 1 and ("cannot open" in res.output or "no readable frame" in res.output)
    res = runner.invoke(app, ["identify-video", str(clip)])
    assert res.exit_code == 1 and "--catalog" in res.output
    # a gallery with no product ids (as the AIcrowd one): the items are named, not given made-up products
    rows = list(csv.DictReader(open(paths["gallery"])))
    bare = tmp_path / "bare.csv"
    bare.write_text("seller_img_id,img_path\n" + "".join(f"{r['seller_img_id']},{r['img_path']}\n" for r in rows))
    shop_of_2 = next(int(r["seller_img_id"]) for r in rows if r["product_id"] == "2")
    cat, _ = build_catalog(read_gallery(bare), tmp_path / "bare_cat", progress=False)
    with cat:
        res = identify_video(cat, clip, k=3)
    assert res.products[0].product_id is None and res.products[0].id == shop_of_2
    assert all(t[1] is None and t[2] is not None for t in res.frame_top)
    res = runner.invoke(app, ["identify-video", str(clip), "--catalog", str(tmp_path / "bare_cat")])
    assert res.exit_code == 0 and f"id={shop_of_2}" in res.output and "product=" not in res.output, res.output


def test_identify_video_fuses_a_given_title_with_a_products_catalog(tmp_path):
    """A catalog built on the fly from products.jsonl has no weight chosen on training photos:
    a title given with --text is still fused (at config.GIVEN_TEXT_WEIGHT, or --text-weight)."""
    from productlens.data.clips import make_clip

    paths = write_dataset(tmp_path, n_products=3, per_product=3)
    titles = ["Oat milk barista", "Blueberry yoghurt", "Orange juice smooth"]
    with open(tmp_path / "products.jsonl", "w") as f:
        for p, title in enumerate(titles):
            f.write(json.dumps({"product_id": p, "title": title, "shop_image": f"img/shop_{p}.jpg"}) + "\n")
    queries = list(csv.DictReader(open(paths["queries"])))
    clip = make_clip([str(tmp_path / q["img_path"]) for q in queries if q["product_id"] == "2"],
                     tmp_path / "clip.mp4", fps=6, seed=1)

    def scores(*extra):
        res = CliRunner().invoke(app, ["identify-video", str(clip), "--products", str(tmp_path / "products.jsonl"),
                                       "--json", *extra])
        assert res.exit_code == 0, res.output
        return {m["product_id"]: m["score"] for m in json.loads(res.output.strip().splitlines()[-1])["products"]}

    plain, titled = scores(), scores("--text", "Blueberry yoghurt")
    assert titled[1] - plain[1] > 0.1 and abs(titled[0] - plain[0]) < 0.05  # only the named product gains
    assert scores("--text", "Blueberry yoghurt", "--text-weight", "0") == plain
    res = CliRunner().invoke(app, ["identify-video", str(clip), "--products", str(tmp_path / "products.jsonl"),
                                   "--json", "--text", "Blueberry yoghurt", "--text-weight", "5"])
    out = json.loads(res.output.strip().splitlines()[-1])
    times = {m["product_id"]: m["times"] for m in out["products"]}
    # the named product ranks the clip first, but the frames show product 2: their times stay with it
    assert out["products"][0]["product_id"] == 1 and times[1] == [] and times[2]
    assert 1 not in {t[1] for t in out["frame_top"]}
    res = CliRunner().invoke(app, ["identify-video", str(clip), "--products", str(tmp_path / "products.jsonl"),
                                   "--text", "Blueberry yoghurt", "--text-weight", "0"])
    assert res.exit_code == 0 and "note: --text is not used: --text-weight is 0" in res.output
    from productlens.data.readers import read_catalog
    from productlens.pipeline.catalog_build import build_catalog

    cat, _ = build_catalog(read_catalog(tmp_path / "products.jsonl"), tmp_path / "cat", progress=False)
    with cat:  # a photo search with words about it: the same default weight
        photo = str(tmp_path / queries[-1]["img_path"])
        plain = {h.product_id: h.score for h in cat.search(photo, k=3, verify=False)}
        titled = {h.product_id: h.score for h in cat.search(photo, k=3, verify=False, text="Blueberry yoghurt")}
    assert titled[1] - plain[1] > 0.1 and abs(titled[0] - plain[0]) < 0.05
    res = CliRunner().invoke(app, ["identify-video", str(clip), "--products", str(tmp_path / "products.jsonl"),
                                   "--max-frames", "0"])
    assert res.exit_code == 2 and "--max-frames" in res.output and "greater than or equal to 1" in res.output


def test_long_video_sampling_is_bounded(tmp_path):
    import cv2

    from productlens.pipeline.video import sample_frames

    path = tmp_path / "long.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    for i in range(900):  # 30 s at 30 fps
        w.write(np.full((48, 64, 3), i % 255, np.uint8))
    w.release()
    frames, duration = sample_frames(path, max_frames=12)
    assert len(frames) == 12 and 29 <= duration <= 31
    assert frames[-1].time > 25  # spread over the whole clip, not its start


def test_text_commands_report_what_they_leave_out(text_catalog, tmp_path):
    """align names the training rows it cannot use; zero-shot exits 1 when no photo could be read, reads a
    names file that is not UTF-8 as an error that names it, and counts a name given twice once; text
    search refuses k < 1 (-3 printed all but the last 3 results)."""
    root, paths = text_catalog
    runner = CliRunner()
    rows = list(csv.DictReader(open(paths["train"])))[:2]
    extra = tmp_path / "train.csv"
    extra.write_text("image,product_id\n" + f"{root / rows[0]['image']},{rows[0]['product_id']}\n"
                     + f"{root / rows[1]['image']},999\n" + f"{tmp_path / 'gone.jpg'},1\n")
    res = runner.invoke(app, ["text", "align", str(root / "cat"), "--train", str(extra)])
    assert res.exit_code == 0, res.output
    assert "skipped: " in res.output and "product 999 has no photo with a title or category" in res.output
    assert "gone.jpg" in res.output and "1 training photos" in res.output
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    res = runner.invoke(app, ["text", "zero-shot", str(root / "cat"), str(tmp_path / "bad.jpg"), "--names", "a,b"])
    assert res.exit_code == 1 and "unreadable" in res.output
    (tmp_path / "names.txt").write_bytes(b"caf\xe9\n")
    res = runner.invoke(app, ["text", "zero-shot", str(root / "cat"), str(tmp_path / "bad.jpg"),
                              "--names", f"@{tmp_path / 'names.txt'}"])
    assert res.exit_code == 1 and "names.txt: not a UTF-8 text file" in res.output and "Traceback" not in res.output
    queries = list(csv.DictReader(open(paths["queries"])))
    res = runner.invoke(app, ["text", "zero-shot", str(root / "cat"), str(root / queries[0]["img_path"]),
                              "--names", "red,Red,blue,RED,dark-blue,Dark blue,???,C,C++", "--json", "-k", "10"])
    # the text model reads no case
    cats = json.loads(res.output.strip().splitlines()[-1])[0]["categories"]
    assert res.exit_code == 0 and sorted(n for n, _ in cats) == ["???", "C", "C++", "blue", "dark-blue", "red"]
    assert "names 'dark-blue' and 'Dark blue' are taken as one" in res.output
    for k in ("0", "-3"):
        res = runner.invoke(app, ["text", "search", str(root / "cat"), "green", "-k", k])
        assert res.exit_code == 2 and "-k" in res.output
    folder = tmp_path / "photos"  # a folder is read for its photos, as detect and classify predict read one
    (folder / "sub").mkdir(parents=True)
    for j, q in enumerate(queries[:3]):
        (folder / ("sub" if j else "") / f"{j}.jpg").write_bytes((root / q["img_path"]).read_bytes())
    res = runner.invoke(app, ["text", "zero-shot", str(root / "cat"), str(folder), "--names", "red,blue", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.output.strip().splitlines()[-1])) == 3, res.output
    res = runner.invoke(app, ["text", "ocr", str(tmp_path / "empty_dir_missing")])
    assert res.exit_code == 1
    res = runner.invoke(app, ["text", "ocr", str(tmp_path / "bad.jpg"), "--json"])  # exited 0 with --json
    assert res.exit_code == 1
    res = runner.invoke(app, ["text", "zero-shot", str(root / "cat"), str(folder), "--names", '"red, dark",blue',
                              "--json"])
    cats = {n for n, _ in json.loads(res.output.strip().splitlines()[-1])[0]["categories"]}
    assert res.exit_code == 0 and cats == {"red, dark", "blue"}  # csv quoting: two names, not three


def test_a_bad_clip_gets_one_message_of_ours(tmp_path):
    """FFmpeg printed its own line ("moov atom not found") before productlens's error; a folder was 'no such
    video file'. (A process of its own: FFmpeg takes its log level at its first use in a process.)"""
    import subprocess
    import sys

    from productlens.pipeline.video import sample_frames

    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(ProductLensError, match="a folder; give a video file"):
        sample_frames(tmp_path)
    code = ("from productlens.pipeline.video import sample_frames\n"
            f"try:\n    sample_frames({str(tmp_path / 'bad.mp4')!r})\n"
            "except Exception as e:\n    print(e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "bad.mp4: cannot open the video" in run.stdout and "moov" not in run.stderr, run.stderr


def test_a_frame_of_two_colours_of_one_brightness_is_not_blank():
    from PIL import Image

    from productlens.pipeline.video import is_blank

    img = Image.new("RGB", (320, 240), (0, 130, 0))  # grey level 76, as the red square's
    img.paste((255, 0, 0), (100, 80, 220, 160))
    assert img.convert("L").getextrema() == (76, 76) and not is_blank(img)
    assert is_blank(Image.new("RGB", (320, 240), (3, 3, 3)))


def test_frame_times_are_the_frames_own_timestamps():
    """A clip of variable frame rate (here 30 fps, then 2 fps; OpenCV's mean 4.3 fps) had its frames
    timed as index / mean fps: frame 10 at 2.3 s instead of 0.33 s. The decoder's timestamp is used,
    and index / fps where it gives none (0 past the first frame)."""
    import cv2

    from productlens.data.video import _frame_time

    class Cap:
        def __init__(self, ms):
            self.ms = ms

        def get(self, prop):
            assert prop == cv2.CAP_PROP_POS_MSEC
            return self.ms

    assert _frame_time(Cap(330.0), 10, 4.32) == pytest.approx(0.33)
    assert _frame_time(Cap(0.0), 0, 4.32) == 0.0
    assert _frame_time(Cap(0.0), 10, 5.0) == 2.0  # no timestamp from this decoder
    assert _frame_time(Cap(float("nan")), 10, 5.0) == 2.0

    from productlens.data.video import Frame, _end_time

    class Seeking(Cap):  # the last frame, read by seeking, carries its own timestamp
        def set(self, prop, value):
            assert prop == cv2.CAP_PROP_POS_FRAMES and value == 39

        def read(self):
            return True, None

        def get(self, prop):
            return self.ms

    sampled = [Frame(36, 8.66, None)]
    assert _end_time(Seeking(10160.0), 40, 4.32, sampled) == pytest.approx(10.16 + 1 / 4.32)  # not 40 / 4.32
    assert _end_time(Seeking(0.0), 40, 5.0, sampled) == pytest.approx(8.0)  # no timestamps: count / fps

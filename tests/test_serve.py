"""The HTTP API and web page (FastAPI TestClient; no network)."""

from __future__ import annotations

import asyncio
import io
import os

import pytest
from PIL import Image

from helpers import add_columns, product_photo, titled_catalog, write_dataset

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from productlens.pipeline.catalog import Catalog  # noqa: E402
from productlens.serve import ServeConfig, create_app  # noqa: E402
from productlens.serve.admission import Admission, Busy  # noqa: E402
from productlens.serve.batcher import Batcher  # noqa: E402
from productlens.serve.engine import CatalogEmpty, Engine  # noqa: E402

KEY = "s3cret-key"


def _add_photo(client, product: int, **extra):
    """POST /v1/products: a shop photo of ``product`` (form fields ``extra``, e.g. item_id), with the admin key."""
    files = {"image": ("p.jpg", _jpeg(product_photo(product, 0, shop=True)), "image/jpeg")}
    return client.post("/v1/products", files=files, data={"product_id": str(product), **extra},
                       headers={"X-API-Key": KEY})


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    return titled_catalog(tmp_path_factory.mktemp("serve"), 4, lambda p: "boxes" if p < 2 else "balls")


@pytest.fixture()
def client(catalog_dir, tmp_path):
    app = create_app(ServeConfig(catalog=catalog_dir, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        yield c
    app.state.engine.close()


def test_matches_with_no_category_keep_a_category_from_being_called_certain(tmp_path):
    """Without a classifier, categories come from the matches; an uncategorised photo that matches
    best takes its share, unlisted, instead of leaving the one named category at 100%."""
    cat = titled_catalog(tmp_path, 4, lambda p: "balls" if p == 3 else "")
    app = create_app(ServeConfig(catalog=cat, history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        body = c.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(2, 5, shop=False)),
                                                        "image/jpeg")}).json()
    app.state.engine.close()
    assert body["matches"][0]["product_id"] == 2 and body["category_source"] == "matches"
    assert [c["category"] for c in body["categories"]] == ["balls"]
    assert body["categories"][0]["probability"] < 0.5


def _identify_once(items, tmp_path) -> tuple[dict, list]:
    """A catalog of ``items`` served; one photo identified: (its answer, the history then)."""
    from productlens.pipeline.catalog_build import build_catalog

    cat, _ = build_catalog(items, tmp_path / "cat", progress=False)
    cat.close()
    app = create_app(ServeConfig(catalog=tmp_path / "cat", history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        body = c.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(1, 5, shop=False)),
                                                        "image/jpeg")}).json()
        hist = c.get("/v1/history").json()
    app.state.engine.close()
    return body, hist


def test_history_names_an_untitled_match_by_its_item(tmp_path):
    """A flat folder of photos has no titles: the history row names the best match as the page does."""
    import shutil

    from productlens.data.readers import read_catalog

    write_dataset(tmp_path / "ds", n_products=3, per_product=1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in range(3):
        shutil.copy(tmp_path / "ds" / "img" / f"shop_{p}.jpg", flat / f"shop_{p}.jpg")
    body, hist = _identify_once(read_catalog(flat), tmp_path)
    assert body["matches"][0]["title"] == "" and body["categories"] == []
    assert hist[0]["top_product"] == f"item {body['matches'][0]['id']}"


def test_history_names_an_untitled_match_by_its_product(tmp_path):
    """A gallery.csv with product ids and no titles: the history row says ``product P`` (types.result_name)."""
    from productlens.data.readers import read_catalog

    write_dataset(tmp_path / "ds", n_products=3, per_product=1)
    (tmp_path / "ds" / "untitled.csv").write_text("seller_img_id,img_path,product_id\n" + "".join(
        f"{p},img/shop_{p}.jpg,{p + 10}\n" for p in range(3)))
    body, hist = _identify_once(read_catalog(tmp_path / "ds" / "untitled.csv"), tmp_path)
    best = body["matches"][0]
    assert best["title"] == "" and best["product_id"] >= 10
    assert hist[0]["top_product"] == f"product {best['product_id']}"


def test_health_page_and_openapi(client):
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["items"] == 4
    page = client.get("/")
    assert page.status_code == 200 and "How to use" in page.text and "Random catalog photo" in page.text
    assert "/v1/identify" in client.get("/openapi.json").json()["paths"]


def test_api_docs_need_no_cdn(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and "cdn.jsdelivr.net" not in html.text
        scripts = [s.split('"')[0] for s in html.text.split('src="')[1:]]
        assert scripts and all(s.startswith("/") for s in scripts), scripts
        for src in scripts:
            js = client.get(src)
            assert js.status_code == 200 and len(js.content) > 100_000, src


def test_identify_returns_categories_matches_and_history(client):
    photo = _jpeg(product_photo(2, 5, shop=False))
    r = client.post("/v1/identify", files={"image": ("q.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["matches"][0]["product_id"] == 2 and body["matches"][0]["title"] == "product 2"
    assert body["categories"][0]["category"] == "balls" and body["category_source"] == "matches"
    assert abs(sum(c["probability"] for c in body["categories"]) - 1) < 0.01
    assert client.get(body["matches"][0]["thumbnail"]).headers["content-type"] == "image/jpeg"
    hist = client.get("/v1/history").json()
    assert len(hist) == 1 and hist[0]["top_category"] == "balls"
    assert client.get(hist[0]["thumbnail"]).status_code == 200
    # the history is per browser session: a new session starts empty
    client.cookies.clear()
    assert client.get("/v1/history").json() == []


def test_identify_with_box_and_k(client):
    photo = _jpeg(product_photo(1, 3, shop=False))
    r = client.post("/v1/identify", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"box": "10,10,70,70",
                                                                                        "k": "1"})
    assert r.status_code == 200 and len(r.json()["categories"]) == 1 and r.json()["box"] == [10, 10, 70, 70]
    r = client.post("/v1/identify", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"box": "500,500,5,5"})
    assert r.status_code == 400 and "outside" in r.json()["detail"]


def test_bad_uploads_get_clear_errors(client):
    r = client.post("/v1/identify", files={"image": ("evil.jpg", b"<html>not an image</html>", "image/jpeg")})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = client.post("/v1/identify", files={"image": ("empty.jpg", b"", "image/jpeg")})
    assert r.status_code == 400
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64  # an iPhone photo's first box
    r = client.post("/v1/identify", files={"image": ("IMG_0001.HEIC", heic, "image/heic")})
    assert r.status_code == 400 and "HEIC/HEIF photos" in r.json()["detail"] and "JPEG" in r.json()["detail"]
    truncated = _jpeg(product_photo(0, 0, shop=True))[:300]
    r = client.post("/v1/identify", files={"image": ("cut.jpg", truncated, "image/jpeg")})
    assert r.status_code == 400 and "cut.jpg" in r.json()["detail"]
    big = Image.new("L", (9000, 9000))  # 81 Mpx: refused from the header
    buf = io.BytesIO()
    big.save(buf, "PNG")
    r = client.post("/v1/identify", files={"image": ("bomb.png", buf.getvalue(), "image/png")})
    assert r.status_code == 400 and "pixels" in r.json()["detail"]
    r = client.post("/v1/identify", files={"image": ("huge.jpg", b"\xff" * (11 * 1024 * 1024), "image/jpeg")})
    assert r.status_code == 413
    r = client.post("/v1/identify", files={"image": ("claims.png", _png_claiming(100_000, 100_000), "image/png")})
    assert r.status_code == 400 and "more than" in r.json()["detail"] and "pixels" in r.json()["detail"]
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")  # a placeholder pixel shows no product
    r = client.post("/v1/identify", files={"image": ("pixel.png", buf.getvalue(), "image/png")})
    assert r.status_code == 400 and r.json()["detail"].startswith("pixel.png: 1x1 pixels is too small")
    r = client.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(1, 3, shop=False)), "image/jpeg")},
                    data={"box": "10,10,4,40"})
    assert r.status_code == 400 and "box" in r.json()["detail"] and "4x40 pixels" in r.json()["detail"]


def test_two_photos_in_one_request_are_refused_not_half_answered(client):
    """FastAPI keeps the last of two parts of one name; the answer would have been for one photo unsaid."""
    two = [("image", ("a.jpg", _jpeg(product_photo(0, 1, shop=False)), "image/jpeg")),
           ("image", ("b.jpg", _jpeg(product_photo(1, 1, shop=False)), "image/jpeg"))]
    r = client.post("/v1/identify", files=two)
    assert r.status_code == 400 and "2 'image' parts" in r.json()["detail"]
    r = client.post("/v1/products", files=two, data={"product_id": "9"}, headers={"X-API-Key": KEY})
    assert r.status_code == 400 and "one photo per request" in r.json()["detail"]
    assert client.get("/v1/products/9").status_code == 404  # nothing added
    assert client.get("/v1/history").json() == []


def test_preview_is_the_photo_as_read_exif_orientation_applied(client):
    import base64

    stored = product_photo(1, 0, shop=False).resize((200, 100))  # stored landscape, shown portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "WEBP", exif=exif.tobytes())
    r = client.post("/v1/identify", files={"image": ("r.webp", buf.getvalue(), "image/webp")},
                    data={"preview": "true"}).json()
    head, data = r["preview"].split(",", 1)
    shown = Image.open(io.BytesIO(base64.b64decode(data)))
    assert head == "data:image/jpeg;base64" and r["image_size"] == [100, 200] and shown.size == (100, 200)
    plain = client.post("/v1/identify", files={"image": ("r.webp", buf.getvalue(), "image/webp")}).json()
    assert "preview" not in plain  # only on request: API clients have the photo already


def test_a_chunked_upload_is_cut_off_at_the_limit(client):
    """A body sent without Content-Length is counted as it arrives, not spooled whole."""
    import asyncio

    from productlens.serve.limits import BodyLimit

    def body():
        yield b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(12):
            yield b"\xff" * (1024 * 1024)
        yield b"\r\n--B--\r\n"

    r = client.post("/v1/identify", content=body(), headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 413 and "larger than 10 MB" in r.json()["detail"]

    pulled = 0

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def app(scope, receive, send):  # reads for ever, as a form parser would
        while True:
            await receive()

    from fastapi import HTTPException

    with pytest.raises(HTTPException) as err:
        asyncio.run(BodyLimit(app, 5000, "too big")({"type": "http", "headers": []}, receive, None))
    assert getattr(err.value, "status_code", None) == 413 and pulled == 6  # stopped at the first chunk past


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height (Pillow refuses such a bomb when opening it)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def test_products_and_admin_need_the_key(client):
    assert client.get("/v1/products/3").json()["title"] == "product 3"
    assert client.get("/v1/products/99").status_code == 404
    assert client.get("/v1/items/99/thumbnail").status_code == 404
    photo = _jpeg(product_photo(5, 0, shop=True))
    files = {"image": ("new.jpg", photo, "image/jpeg")}
    form = {"product_id": "7", "title": "new product", "category": "balls"}
    assert client.post("/v1/products", files=files, data=form).status_code == 401
    assert client.post("/v1/products", files=files, data=form, headers={"X-API-Key": "wrong"}).status_code == 401
    r = client.post("/v1/products", files=files, data=form, headers={"X-API-Key": KEY})
    assert r.status_code == 201, r.text
    # the next query sees it, without a restart
    q = client.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(5, 2, shop=False)), "image/jpeg")})
    assert q.json()["matches"][0]["product_id"] == 7
    thumb = client.get(f"/v1/items/{r.json()['id']}/thumbnail").content
    assert client.get(f"/v1/items/{r.json()['id']}/thumbnail").content == thumb  # from the cache
    engine = client.app.state.engine
    path = engine.catalog.store.get([r.json()["id"]])[0]["image"]
    Image.new("RGB", (50, 40), (0, 0, 255)).save(path, "JPEG")  # the file changes: the cache sees it
    os.utime(path, ns=(1, 10**18))
    new = client.get(f"/v1/items/{r.json()['id']}/thumbnail").content
    assert new != thumb and Image.open(io.BytesIO(new)).size == (50, 40)
    assert client.put("/v1/products/7", json={"title": "renamed"}, headers={"X-API-Key": KEY}).status_code == 200
    for body in ({"title": None}, {"image": "/etc/passwd"}, {}):
        r = client.put("/v1/products/7", json=body, headers={"X-API-Key": KEY})
        assert r.status_code == 400, body
    uploads = sorted(engine.uploads.iterdir())
    for bad in ({"item_id": str(2 ** 63 - 1)}, {"item_id": "-3"}, {"product_id": str(10 ** 20)}):
        r = client.post("/v1/products", files=files, data={**form, **bad}, headers={"X-API-Key": KEY})
        assert r.status_code == 400 and "must be between 0 and" in r.json()["detail"], bad
    assert sorted(engine.uploads.iterdir()) == uploads  # no stray upload for a refused item
    assert client.get("/v1/items/-1/thumbnail").status_code == 404
    assert client.get(f"/v1/items/{10 ** 20}/thumbnail").status_code == 404
    assert client.get("/v1/products/7").json()["title"] == "renamed"
    assert client.delete("/v1/products/7").status_code == 401
    assert client.delete("/v1/products/7", headers={"X-API-Key": KEY}).json()["removed"] == 1
    assert client.get("/v1/products/7").status_code == 404


def test_admin_disabled_without_a_configured_key(catalog_dir, tmp_path):
    app = create_app(ServeConfig(catalog=catalog_dir, api_key=None, open_reads=False,
                                 history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        assert c.delete("/v1/products/1", headers={"X-API-Key": "x"}).status_code == 403
        assert c.get("/v1/products/1").status_code == 403  # closed reads need the key too
    app.state.engine.close()


def test_random_catalog_photo(client):
    import base64

    r = client.get("/v1/random").json()
    img = Image.open(io.BytesIO(base64.b64decode(r["jpeg_base64"])))
    assert img.format == "JPEG" and 0 <= r["id"] < 4


def test_random_catalog_photo_is_capped_for_the_page(tmp_path):
    """A 12 MP catalog photo goes to the page at most RANDOM_SIDE long, its shape kept."""
    import base64

    from productlens.serve.engine import RANDOM_SIDE

    cat_dir = titled_catalog(tmp_path / "data", 2, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        store = app.state.engine.catalog.store
        for i in store.ids().tolist():  # the catalog's photos replaced by large ones on disk
            product_photo(i, 0, shop=True).resize((4000, 3000)).save(store.get([i])[0]["image"], "JPEG")
        img = Image.open(io.BytesIO(base64.b64decode(c.get("/v1/random").json()["jpeg_base64"])))
        assert img.size == (RANDOM_SIDE, RANDOM_SIDE * 3 // 4)


def test_a_catalog_photo_gone_from_disk_and_an_empty_catalog(tmp_path):
    cat_dir = titled_catalog(tmp_path / "data", 4, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        engine = app.state.engine
        gone = engine.catalog.store.get([1])[0]["image"]
        os.remove(gone)
        r = c.get("/v1/items/1/thumbnail")
        assert r.status_code == 404 and "cannot be read" in r.json()["detail"] and gone not in r.text
        assert all(c.get("/v1/random").json()["id"] != 1 for _ in range(8))  # another photo instead
        for i in engine.catalog.store.ids().tolist():
            c.delete(f"/v1/products/{engine.catalog.store.get([i])[0]['product_id']}", headers={"X-API-Key": KEY})
        assert c.get("/v1/random").status_code == 404
        r = c.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(2, 5, shop=False)), "image/jpeg")})
        assert r.status_code == 409 and "catalog is empty" in r.json()["detail"]
        with pytest.raises(CatalogEmpty):  # the engine itself refuses, not only the route
            engine.identify(product_photo(2, 5, shop=False))
    engine.close()


def test_ids_are_never_reused_and_adding_never_replaces(tmp_path):
    """A removed item's id is not handed out again (browsers cache thumbnails by id); a taken id is refused."""
    cat_dir = titled_catalog(tmp_path / "data", 2, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    admin = {"X-API-Key": KEY}

    with TestClient(app) as c:
        engine = app.state.engine
        first = _add_photo(c, 5).json()["id"]
        upload = engine.catalog.store.get([first])[0]["image"]
        assert os.path.dirname(upload) == str(engine.uploads) and os.path.exists(upload)
        assert c.delete("/v1/products/5", headers=admin).json()["removed"] == 1
        assert not os.path.exists(upload)  # the photo the service stored goes with its item
        assert _add_photo(c, 6).json()["id"] == first + 1  # not the freed id
        r = _add_photo(c, 7, item_id="0")
        assert r.status_code == 409 and "item 0 exists" in r.json()["detail"]
        assert c.get("/v1/products/0").status_code == 200  # product 0 keeps its photo
        assert _add_photo(c, 7, item_id="40").json()["id"] == 40
        assert c.delete("/v1/products/7", headers=admin).status_code == 200
        assert _add_photo(c, 8).json()["id"] == 41
        assert c.get(f"/v1/history/{2 ** 63}/thumbnail").status_code == 404
        real_get, calls = engine.catalog.store.get, []

        def vanishing_get(ids):  # the item is removed between reading the ids and reading the item
            calls.append(ids)
            return [None] if len(calls) == 1 else real_get(ids)

        engine.catalog.store.get = vanishing_get
        assert c.get("/v1/random").status_code == 200  # another photo instead of a 500
    engine.close()


def test_two_servers_adding_to_one_catalog_never_share_an_id(tmp_path):
    """Two engines (as two server processes would) add photos at once; the writer lock keeps ids apart."""
    import threading

    cat_dir = titled_catalog(tmp_path / "data", 2, lambda p: "boxes")
    engines = [Engine(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / f"h{i}.sqlite"))
               for i in range(2)]
    got: list[list[int]] = [[], []]

    def add(n: int) -> None:
        for j in range(4):
            got[n].append(engines[n].add_item(product_photo(5 + n, j, shop=True), 5 + n, f"p{n}", "balls"))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = got[0] + got[1]
    assert len(set(ids)) == 8, ids
    assert sorted(engines[0].catalog.store.ids().tolist()) == sorted([0, 1] + ids)  # nothing replaced
    assert engines[0].remove_product(6) == 4  # added by the other engine: still found and removed whole
    assert sorted(engines[1].catalog.store.ids().tolist()) == sorted([0, 1] + got[0])
    for e in engines:
        e.close()


def test_history_is_pruned_across_sessions(tmp_path, monkeypatch):
    from productlens.serve import history as history_mod

    monkeypatch.setattr(history_mod, "MAX_ROWS", 5)
    monkeypatch.setattr(history_mod, "PRUNE_EVERY", 1)
    h = history_mod.History(tmp_path / "h.sqlite")
    for i in range(12):  # one row per session, as scripts without a cookie make them
        h.add(f"s{i}", b"jpg", "c", 0.5, "p")
    assert sum(len(h.rows(f"s{i}")) for i in range(12)) == 5 and h.rows("s11") and not h.rows("s0")
    h.close()


def test_admission_refuses_beyond_the_queue():
    async def scenario():
        adm = Admission(workers=1, queue=1)
        entered = asyncio.Event()
        release = asyncio.Event()

        async def hold():
            async with adm.slot():
                entered.set()
                await release.wait()

        async def wait_in_queue():
            async with adm.slot():
                return "ran"

        t1 = asyncio.create_task(hold())
        await entered.wait()
        t2 = asyncio.create_task(wait_in_queue())
        await asyncio.sleep(0)
        assert adm.inside == 2
        with pytest.raises(Busy):
            async with adm.slot():
                pass
        release.set()
        await t1
        assert await t2 == "ran" and adm.inside == 0

    asyncio.run(scenario())


def test_busy_service_answers_503(catalog_dir, tmp_path):
    app = create_app(ServeConfig(catalog=catalog_dir, queue=0, history_db=tmp_path / "h.sqlite"))
    app.state.admission._inside = app.state.admission.limit  # as if a request were running
    with TestClient(app) as c:
        r = c.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(0, 0, shop=True)), "image/jpeg")})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    app.state.engine.close()


def test_identify_uses_the_attached_classifier(tmp_path):
    import shutil

    from productlens.data.labelled import read_labelled
    from productlens.data.readers import read_gallery
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.pipeline.classify import TrainOptions, train_classifier

    paths = write_dataset(tmp_path / "ds", n_products=4, per_product=4)
    add_columns(paths["train"], tmp_path / "ds" / "cats.csv", {"category": lambda r: f"kind {int(r['product_id']) % 2}"})
    add_columns(paths["train"], tmp_path / "ds" / "three.csv", {"category": lambda r: f"set {int(r['product_id']) % 3}"})
    train_classifier(read_labelled(tmp_path / "ds" / "cats.csv", label="category"), tmp_path / "clf",
                     TrainOptions(views="flip", tta="tta"))
    train_classifier(read_labelled(tmp_path / "ds" / "three.csv", label="category"), tmp_path / "clf3",
                     TrainOptions(views="flip", tta="tta"))
    cat, _ = build_catalog(read_gallery(paths["gallery"]), tmp_path / "cat", use_gallery_labels=True, progress=False)
    with cat:
        cat.attach_classifier(tmp_path / "clf")
    shutil.rmtree(tmp_path / "clf")  # the catalog keeps its own copy
    app = create_app(ServeConfig(catalog=tmp_path / "cat", history_db=tmp_path / "h.sqlite"))
    query = {"image": ("q.jpg", _jpeg(product_photo(1, 0, shop=True)), "image/jpeg")}
    with TestClient(app) as c:
        assert c.get("/v1/health").json()["classifier"] is True
        body = c.post("/v1/identify", files=query).json()
        assert body["category_source"] == "classifier" and len(body["categories"]) == 2
        assert body["categories"][0]["category"] == "kind 1"
        assert abs(sum(x["probability"] for x in body["categories"]) - 1) < 0.01
        with Catalog.open(tmp_path / "cat") as other:  # `index attach-classifier` in another process
            other.attach_classifier(tmp_path / "clf3")
        body = c.post("/v1/identify", files=query).json()  # the replaced one had answered until a restart
        assert {x["category"] for x in body["categories"]} == {"set 0", "set 1", "set 2"}
    app.state.engine.close()


def test_identify_with_a_detector_returns_boxes_and_searches_the_best(catalog_dir, tmp_path):
    from test_detect import _write_user_detector

    model = _write_user_detector(tmp_path / "det.onnx", square=False)
    app = create_app(ServeConfig(catalog=catalog_dir, detector=f"onnx:{model}", history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        assert c.get("/v1/health").json()["detector"] is True
        red = Image.new("RGB", (128, 96), (255, 0, 0))
        body = c.post("/v1/identify", files={"image": ("red.jpg", _jpeg(red), "image/jpeg")}).json()
        assert [d["tag"] for d in body["detections"]] == ["red"]
        assert body["box"] == body["detections"][0]["box"]  # the search used the best box
        grey = Image.new("RGB", (128, 128), (134, 134, 134))  # red ~0.62, other ~0.38 on the same boxes: one box
        body = c.post("/v1/identify", files={"image": ("grey.jpg", _jpeg(grey), "image/jpeg")}).json()
        assert [(d["tag"], [a["tag"] for a in d["alternatives"]]) for d in body["detections"]] == [("red", ["other"])]
    app.state.engine.close()
    app = create_app(ServeConfig(catalog=catalog_dir, detector=f"onnx:{model}", search_detected=False,
                                 history_db=tmp_path / "h2.sqlite"))
    with TestClient(app) as c:
        body = c.post("/v1/identify", files={"image": ("red.jpg", _jpeg(red), "image/jpeg")}).json()
        assert [d["tag"] for d in body["detections"]] == ["red"] and body["box"] is None  # whole photo searched
    app.state.engine.close()
    app = create_app(ServeConfig(catalog=catalog_dir, detector=f"onnx:{model}", min_box_score=0.5, max_boxes=0,
                                 history_db=tmp_path / "h3.sqlite"))
    with TestClient(app) as c:
        body = c.post("/v1/identify", files={"image": ("red.jpg", _jpeg(red), "image/jpeg")}).json()
        assert body["detections"] == [] and body["box"] is not None  # none shown; the best box still searched
    app.state.engine.close()


def test_batcher_runs_waiting_requests_together_and_fails_only_the_bad_one():
    calls = []

    def fn(requests):
        calls.append(list(requests))
        return [ValueError(f"bad {r}") if r < 0 else r * 10 for r in requests]

    async def scenario():
        b = Batcher(fn, Admission(workers=1, queue=4), max_batch=3)
        tasks = [asyncio.create_task(b.submit(r, finish=lambda x: x + 1)) for r in (1, 2, -3, 4, 5)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(Busy):  # 5 = workers + queue are inside now
            await asyncio.gather(*[b.submit(r) for r in range(6)])
        await b.aclose()
        return results

    results = asyncio.run(scenario())
    assert results[:2] == [11, 21] and results[3:] == [41, 51]
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad -3"
    assert calls[:2] == [[1, 2, -3], [4, 5]]  # oldest first, at most max_batch; nobody waited for a batch to fill


def test_identify_batch_matches_one_by_one(catalog_dir):
    from productlens.serve.engine import Engine, IdentifyRequest
    from productlens.types import Box, BoxError

    engine = Engine(ServeConfig(catalog=catalog_dir))
    try:
        photos = [product_photo(p, 0, shop=True) for p in (0, 1, 3)]
        reqs = [IdentifyRequest(photos[0]), IdentifyRequest(photos[1], k=1),
                IdentifyRequest(photos[2], box=Box(500, 500, 10, 10)), IdentifyRequest(photos[2], box=Box(4, 4, 40, 40))]
        batch = engine.identify_batch(reqs)
        assert isinstance(batch[2], BoxError)  # the bad box fails its own request only
        for req, got in zip(reqs[:2] + reqs[3:], batch[:2] + batch[3:]):
            alone = engine.identify(req.image, req.box, req.k)
            assert [m["id"] for m in got["matches"]] == [m["id"] for m in alone["matches"]]
            assert [c["category"] for c in got["categories"]] == [c["category"] for c in alone["categories"]]
            assert len(got["categories"]) <= req.k and got["box"] == alone["box"]
            for a, b in zip(got["matches"], alone["matches"]):
                assert abs(a["score"] - b["score"]) < 1e-3
        assert batch[0]["matches"][0]["product_id"] == 0 and batch[1]["matches"][0]["product_id"] == 1
        assert engine.default_batch == 8  # whole-photo queries: 8 per batch
    finally:
        engine.close()


def test_no_path_traversal_through_parameters(client):
    for url in ("/v1/items/..%2F..%2Fetc%2Fpasswd/thumbnail", "/v1/products/..%2Fstore", "/static/..%2F..%2Fapp.py",
                "/static/../config.py"):
        r = client.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert "import" not in r.text


def test_a_writer_waiting_for_another_process_does_not_stall_reads(tmp_path):
    """While another process holds the catalog's writer lock, reads answer at once; admin calls wait
    ``write_wait`` seconds and then answer 503 with Retry-After (DELETE was a 500, PUT a 400)."""
    import threading
    import time

    from productlens.fileio import file_lock
    from productlens.pipeline.catalog import WRITER_LOCK

    cat_dir = titled_catalog(tmp_path / "data", 2, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / "h.sqlite", write_wait=4))
    admin = {"X-API-Key": KEY}
    with TestClient(app) as c, file_lock(cat_dir / WRITER_LOCK):  # as `productlens index add` would
        slow = {}
        waiting = threading.Thread(target=lambda: slow.update(r=c.delete("/v1/products/1", headers=admin)))
        waiting.start()
        time.sleep(0.3)  # the delete now waits for the file lock
        t = time.monotonic()
        assert c.get("/v1/products/0").status_code == 200
        r = c.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(0, 5, shop=False)), "image/jpeg")})
        assert r.status_code == 200 and time.monotonic() - t < 2.5  # not the writer's 4 s
        waiting.join()
        assert slow["r"].status_code == 503 and slow["r"].headers["retry-after"] == "5"
        assert "locked" in slow["r"].json()["detail"]
        app.state.engine.config.write_wait = 0.5  # the other calls need not wait as long to show their answer
        r = c.put("/v1/products/1", json={"title": "x"}, headers=admin)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        files = {"image": ("p.jpg", _jpeg(product_photo(3, 0, shop=True)), "image/jpeg")}
        r = c.post("/v1/products", files=files, data={"product_id": "3"}, headers=admin)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    with TestClient(app) as c:  # the lock released: the same calls go through
        assert c.delete("/v1/products/1", headers=admin).json()["removed"] == 1
    app.state.engine.close()


def test_uploads_are_stored_under_an_absolute_path(tmp_path, monkeypatch):
    """A server started from the catalog's parent with a relative path: a photo it stores can still be
    read, and removed, by a server started anywhere else."""
    cat_dir = titled_catalog(tmp_path / "data", 2, lambda p: "boxes")
    monkeypatch.chdir(cat_dir.parent)
    app = create_app(ServeConfig(catalog=cat_dir.name, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    admin = {"X-API-Key": KEY}
    with TestClient(app) as c:
        files = {"image": ("p.jpg", _jpeg(product_photo(4, 0, shop=True)), "image/jpeg")}
        new = c.post("/v1/products", files=files, data={"product_id": "4"}, headers=admin).json()["id"]
        stored = app.state.engine.catalog.store.get([new])[0]["image"]
    app.state.engine.close()
    assert os.path.isabs(stored)
    monkeypatch.chdir(tmp_path)
    app = create_app(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        assert c.get(f"/v1/items/{new}/thumbnail").status_code == 200
        assert c.delete("/v1/products/4", headers=admin).json()["removed"] == 1
    app.state.engine.close()
    assert not os.path.exists(stored)


def test_ids_of_a_built_catalog_are_not_reused_and_spent_ids_do_not_lock_adding_out(tmp_path):
    """A catalog from `index build` records no next id: its removed items' ids must not come back (nor
    id 0 once it is empty). An item added by hand at the largest id leaves the service able to add."""
    from productlens.serve.engine import MAX_ID

    cat_dir = titled_catalog(tmp_path / "data", 3, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    admin = {"X-API-Key": KEY}

    with TestClient(app) as c:
        for p in (2, 1, 0):
            assert c.delete(f"/v1/products/{p}", headers=admin).json()["removed"] == 1
        assert _add_photo(c, 5).json()["id"] == 3  # not 2, the removed item's, nor 0 in the emptied catalog
        assert _add_photo(c, 6, item_id=str(MAX_ID)).json()["id"] == MAX_ID
        assert c.delete("/v1/products/6", headers=admin).status_code == 200
        r = _add_photo(c, 7)
        assert r.status_code == 201 and r.json()["id"] == 0  # the ids above are spent: the lowest free one
    app.state.engine.close()


def test_a_new_photo_of_a_known_product_takes_its_title_and_category(tmp_path):
    cat_dir = titled_catalog(tmp_path / "data", 2, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat_dir, api_key=KEY, history_db=tmp_path / "h.sqlite"))
    admin = {"X-API-Key": KEY}
    with TestClient(app) as c:
        files = {"image": ("p.jpg", _jpeg(product_photo(1, 3, shop=True)), "image/jpeg")}
        new = c.post("/v1/products", files=files, data={"product_id": "1"}, headers=admin).json()["id"]
        files = {"image": ("p.jpg", _jpeg(product_photo(9, 3, shop=True)), "image/jpeg")}
        other = c.post("/v1/products", files=files, data={"product_id": "1", "title": "Own title"},
                       headers=admin).json()["id"]
        md = app.state.engine.catalog.store.get([new, other])
    app.state.engine.close()
    assert (md[0]["title"], md[0]["category"]) == ("product 1", "boxes")
    assert (md[1]["title"], md[1]["category"]) == ("Own title", "boxes")  # what is given is kept


def test_identify_answers_when_the_history_cannot_be_written(tmp_path):
    """Another process holds the history database's write lock: the photo is still identified."""
    import sqlite3

    cat_dir = titled_catalog(tmp_path / "data", 2, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat_dir, history_db=tmp_path / "h.sqlite"))
    with TestClient(app) as c:
        app.state.history._db.execute("PRAGMA busy_timeout = 100")
        other = sqlite3.connect(tmp_path / "h.sqlite", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            r = c.post("/v1/identify", files={"image": ("q.jpg", _jpeg(product_photo(0, 5, shop=False)),
                                                         "image/jpeg")})
        finally:
            other.execute("ROLLBACK")
            other.close()
    app.state.engine.close()
    assert r.status_code == 200 and r.json()["matches"] and r.json()["history_id"] is None


@pytest.mark.parametrize("field,value", [("max_upload_mb", float("nan")), ("max_upload_mb", -1), ("workers", 0),
                                         ("write_wait", 0), ("queue", -1)])
def test_service_settings_are_checked(tmp_path, field, value):
    from productlens.types import ProductLensError

    with pytest.raises(ProductLensError, match=field.replace("_", "-")):
        ServeConfig(catalog=tmp_path, **{field: value})


def test_a_served_catalog_rebuilt_or_deleted_underneath(tmp_path):
    """`index build --overwrite` of the served folder had the service answer with the new build's vectors
    and the old build's titles (or 500s when the counts differed), and history rows went to the replaced
    file; a deleted folder was still "ok", and an upload made the folder again. A rebuilt folder is now
    opened again at the next request, and a deleted one answers 503."""
    import shutil

    from productlens.data.readers import read_gallery
    from productlens.pipeline.catalog_build import build_catalog

    cat = titled_catalog(tmp_path, 4, lambda p: "boxes")
    app = create_app(ServeConfig(catalog=cat, api_key=KEY))
    query = {"image": ("q.jpg", _jpeg(product_photo(2, 5, shop=False)), "image/jpeg")}
    with TestClient(app) as c:
        assert c.post("/v1/identify", files=query).json()["matches"][0]["title"] == "product 2"
        renamed = add_columns(tmp_path / "gallery_t.csv", tmp_path / "renamed.csv",
                              {"title": lambda r: f"renamed {r['product_id']}"})
        build_catalog(read_gallery(renamed)[:3], cat, use_gallery_labels=True, overwrite=True,
                      progress=False)[0].close()
        assert c.get("/v1/health").json()["items"] == 3
        body = c.post("/v1/identify", files=query).json()
        assert body["matches"][0]["title"] == "renamed 2" and body["history_id"] is not None
        assert [r["id"] for r in c.get("/v1/history").json()] == [body["history_id"]]  # the new build's file
        assert c.get("/v1/products/1").status_code == 200
        shutil.rmtree(cat)
        for res in (c.get("/v1/health"), c.post("/v1/identify", files=query), c.get("/v1/products/1"),
                    _add_photo(c, 1), c.delete("/v1/products/1", headers={"X-API-Key": KEY})):
            assert res.status_code == 503 and "no longer exists" in res.json()["detail"], res.text
        for res in (c.get("/v1/history"), c.get(f"/v1/history/{body['history_id']}/thumbnail")):  # had been 500
            assert res.status_code == 503 and "the history cannot be read" in res.json()["detail"], res.text
        assert not cat.exists()  # the upload did not make the folder again
    app.state.engine.close()

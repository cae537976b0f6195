"""End to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser download)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import product_photo, titled_catalog

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from productlens.serve import ServeConfig, create_app

    root = tmp_path_factory.mktemp("browser")
    app = create_app(ServeConfig(catalog=titled_catalog(root, 5, lambda p: f"category {p}"),
                                 history_db=root / "h.sqlite"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root
    srv.should_exit = True
    thread.join(5)
    app.state.engine.close()


def test_upload_shows_top4_and_a_history_row(server, tmp_path):
    url, root = server
    photo = tmp_path / "query.jpg"
    product_photo(3, 0, shop=True).save(photo)  # the seller photo itself: its product must come first
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    shots = Path(os.environ.get("PRODUCTLENS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(url + "/")
        assert "How to use" in page.inner_text("#instructions")
        assert not page.is_visible("#result")  # no empty results panel before the first photo
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#categories li", timeout=30_000)
        cats = page.locator("#categories li .cat").all_inner_texts()
        assert len(cats) == 4 and cats[0] == "category 3"
        assert "product 3" in page.inner_text("#matches")
        assert not page.is_visible("#detections-section")  # no detector: no empty list of boxes
        page.wait_for_selector("#history tbody tr", timeout=10_000)
        assert page.locator("#history tbody tr").count() == 1
        page.screenshot(path=str(shots / "identify.png"), full_page=True)
        # the history survives a reload (kept server-side for this session)
        page.reload()
        page.wait_for_selector("#history tbody tr", timeout=10_000)
        assert "category 3" in page.inner_text("#history tbody")
        # a file that is not an image gets a clear message, and the history does not grow
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#error:not([hidden])", timeout=10_000)
        assert "not an image" in page.inner_text("#error")
        assert page.locator("#history tbody tr").count() == 1
        assert not page.is_visible("#result")  # the previous photo's results are not left under the error
        # a TIFF: the service reads it, Chromium cannot draw it; the results still show
        tiff = tmp_path / "query.tif"
        product_photo(3, 0, shop=True).save(tiff)
        page.set_input_files("#file", str(tiff))
        page.wait_for_function("document.querySelectorAll('#history tbody tr').length === 2", timeout=30_000)
        assert page.is_visible("#result") and page.locator("#categories li .cat").first.inner_text() == "category 3"
        # a WebP whose EXIF says "rotate": drawn as the service read it (the boxes' frame), portrait
        webp = tmp_path / "rotated.webp"
        exif = Image.Exif()
        exif[0x0112] = 6
        stored = Image.new("RGB", (200, 100), (220, 0, 0))  # left half red, right half blue as stored:
        stored.paste((0, 0, 220), (100, 0, 200, 100))     # shown rotated, red on top and blue below
        stored.save(webp, "WEBP", exif=exif.tobytes(), quality=95)
        page.set_input_files("#file", str(webp))
        page.wait_for_function("document.querySelectorAll('#history tbody tr').length === 3", timeout=30_000)
        assert page.evaluate("[$('canvas').width, $('canvas').height]") == [200, 400]
        pixel = "([x, y]) => Array.from($('canvas').getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3))"
        top, bottom = page.evaluate(pixel, [150, 100]), page.evaluate(pixel, [50, 300])
        assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)
        # a random catalog photo
        page.click("#random")
        page.wait_for_function("document.querySelectorAll('#history tbody tr').length === 4", timeout=30_000)
        browser.close()
    assert (shots / "identify.png").stat().st_size > 1000


def test_detected_boxes_list_their_other_likely_tags(server, tmp_path):
    """The page lists each box with its alternatives (an answer the route gives with a detector)."""
    import json

    url, _ = server
    photo = tmp_path / "street.jpg"
    product_photo(1, 0, shop=False).save(photo)
    answer = {"categories": [{"category": "tops", "probability": 0.9}], "category_source": "classifier",
              "detections": [{"box": [5, 5, 40, 40], "tag": "blouse", "score": 0.6,
                              "alternatives": [{"tag": "shirt", "score": 0.45}, {"tag": "jacket", "score": 0.31}]},
                             {"box": [50, 10, 20, 30], "tag": "bag", "score": 0.4, "alternatives": []}],
              "box": None, "matches": [], "image_size": [96, 96], "history_id": 1}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.route("**/v1/identify", lambda route: route.fulfill(status=200, content_type="application/json",
                                                                 body=json.dumps(answer)))
        page.goto(url + "/")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#detections li", timeout=30_000)
        rows = page.locator("#detections li").all_inner_texts()
        browser.close()
    assert len(rows) == 2
    assert "blouse 0.60" in rows[0] and "or shirt 0.45, jacket 0.31" in rows[0]
    assert "bag 0.40" in rows[1] and " or " not in rows[1]


def test_keyboard_retries_busy_state_and_a_phone_screen(server, tmp_path):
    """Enter on the drop zone opens the file chooser; the same file picked again is sent again (after a
    failure, say); a slow answer shows that work is going on and holds the random button; nothing
    scrolls sideways at 375 px."""
    url, _ = server
    photo = tmp_path / "again.jpg"
    product_photo(2, 0, shop=True).save(photo)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 375, "height": 700})
        page.goto(url + "/")
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/v1/identify") else None)
        # Enter on the focused drop zone clicks the hidden file input, which opens the chooser (a click is
        # what opens it: counted here, since Playwright's chooser event can miss the first page's dialog)
        page.evaluate("$('file').addEventListener('click', (e) => { window.opened = (window.opened || 0) + 1; "
                      "e.preventDefault(); })")
        page.focus("#drop")
        page.keyboard.press("Enter")
        page.keyboard.press(" ")
        assert page.evaluate("window.opened") == 2
        page.set_input_files("#file", str(photo))
        page.wait_for_function("$('status').textContent.startsWith('Identified again.jpg')", timeout=30_000)
        assert "category 2" in page.inner_text("#status") and not page.is_disabled("#random")
        page.set_input_files("#file", str(photo))  # the same file once more: a change, so a request
        page.wait_for_function("document.querySelectorAll('#history tbody tr').length >= 2", timeout=30_000)
        assert len(sent) == 2
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        slow = []
        page.route("**/v1/identify", lambda route: slow.append(route))  # held: an answer that has not come
        page.set_input_files("#file", str(photo))
        page.wait_for_function("$('status').classList.contains('busy')", timeout=10_000)
        assert "Identifying again.jpg" in page.inner_text("#status") and page.is_disabled("#random")
        browser.close()


def test_api_docs_render_without_internet(server):
    """/docs draws the Swagger UI from files the service holds: every request off 127.0.0.1 is refused."""
    url, _ = server
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.route("**/*", only_local)
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        browser.close()
    assert "/v1/identify" in paths
    assert outside == []

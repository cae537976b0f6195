"""Routes: the JSON API under /v1 and the web page at /. Models live in the Engine."""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, Response, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline

from productlens.fileio import Locked
from productlens.serve.admission import Admission, Busy
from productlens.serve.batcher import Batcher
from productlens.serve.config import ServeConfig
from productlens.serve.engine import (CatalogEmpty, CatalogGone, Engine, IdentifyRequest, ItemExists,
                                      sniff_image, thumbnail_jpeg)
from productlens.serve.history import MAX_ROWS_PER_SESSION, History
from productlens.serve.limits import BodyLimit
from productlens.types import Box, BoxError, ImageError, ProductLensError, result_name

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "productlens_session"


def build_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    engine = engine or Engine(config)
    admission = Admission(config.workers, config.queue)  # every inference and catalog write counts here
    decoding = Admission(config.workers, config.queue)  # uploads decoded off the event loop, as many at once
    batcher = Batcher(engine.identify_batch, admission, workers=config.workers,
                      max_batch=config.max_batch or engine.default_batch)  # identify requests
    history = History(config.history_db)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    rng = np.random.default_rng()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.aclose()

    # /docs and /redoc from files inside fastapi-offline, not a CDN: they work on a network without internet
    app = FastAPIOffline(title="productlens", version="0.1.0", lifespan=lifespan,
                         description="Identify products in photos: categories, boxes and matching catalog products.")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])

    # an upload over the limit is refused from its Content-Length before its body is read, and a
    # chunked one as soon as it passes the limit (+ 1 MB for the rest of the form)
    app.add_middleware(BodyLimit, limit=int((config.max_upload_mb + 1) * 1024 * 1024),
                       detail=f"the upload is larger than {config.max_upload_mb:g} MB")

    @app.exception_handler(CatalogGone)
    async def _gone(request: Request, exc: CatalogGone):
        return JSONResponse({"detail": f"{exc}; the service answers again once a catalog is built there"},
                            status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        return JSONResponse({"detail": "busy: too many requests waiting; retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})

    def reader(x_api_key: Optional[str] = Header(None)) -> None:
        if not config.open_reads:
            _check_key(config, x_api_key)

    def admin(x_api_key: Optional[str] = Header(None)) -> None:
        _check_key(config, x_api_key)

    async def read_upload(request: Request, image: UploadFile):
        parts = len((await request.form()).getlist("image"))  # the form as FastAPI parsed it (cached)
        if parts > 1:  # FastAPI would take the last part and drop the others unsaid
            raise HTTPException(400, f"the form has {parts} 'image' parts: send one photo per request")
        limit = int(config.max_upload_mb * 1024 * 1024)
        data = await image.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"the upload is larger than {config.max_upload_mb:g} MB")
        try:
            async with decoding.slot():  # not on the event loop, and no more at once than there are workers
                return await _run(sniff_image, data, config.max_pixels)
        except ImageError as e:
            raise HTTPException(400, f"{image.filename or 'upload'}: {_short(e)}") from None

    def session_of(request: Request, response: Response) -> str:
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid or len(sid) > 64 or not sid.isalnum():
            sid = secrets.token_hex(16)
            response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="lax")
        return sid

    # ------------------------------------------------------------------ API
    @app.get("/v1/health")
    def health() -> dict:
        # a rebuilt catalog is opened again; a deleted one: 503
        return {"status": "ok", **engine.status(), "in_flight": admission.inside}

    @app.post("/v1/identify", dependencies=[Depends(reader)])
    async def identify(request: Request, response: Response, image: UploadFile = File(...),
                       box: Optional[str] = Form(None, description="x,y,w,h in pixels"),
                       k: int = Form(4, ge=1, le=20),
                       preview: bool = Form(False, description="also return the photo as the service read it "
                                            "(EXIF orientation applied; JPEG, at most 400 px) to draw boxes on")
                       ) -> dict:
        """Top-k categories with probabilities, detected boxes and matching products for one photo."""
        img = await read_upload(request, image)
        try:
            qbox = Box.parse(box)
        except BoxError as e:
            raise HTTPException(400, str(e)) from None
        sid = session_of(request, response)

        def finish(out: dict) -> dict:  # in the same trip to the thread pool: the history row
            top = out["categories"][0] if out["categories"] else {"category": "", "probability": 0.0}
            best = out["matches"][0] if out["matches"] else None  # an untitled photo is named as the page does
            try:
                out["history_id"] = history.add(sid, thumbnail_jpeg(img, 96), top["category"], top["probability"],
                                                result_name(best["title"], best["id"], best["product_id"])
                                                if best else "")
            except sqlite3.Error as e:  # the history is a convenience: the answer stands without its row
                log.warning("history row not written: %s", e)
                out["history_id"] = None
            out["image_size"] = list(img.size)
            if preview:  # what the boxes are in: a browser may not apply EXIF orientation (WebP) or read TIFF
                out["preview"] = "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(img, 400)).decode()
            return out

        try:
            return await batcher.submit(IdentifyRequest(img, qbox, k), finish)
        except CatalogEmpty as e:
            raise HTTPException(409, _short(e)) from None
        except (BoxError, ProductLensError) as e:
            raise HTTPException(400, _short(e)) from None

    @app.get("/v1/history")
    def get_history(request: Request, response: Response) -> list[dict]:
        sid = session_of(request, response)
        try:
            rows = history.rows(sid)
        except sqlite3.Error as e:  # its file gone with the catalog folder, say
            raise HTTPException(503, f"the history cannot be read: {e}") from None
        return [{**r, "thumbnail": f"/v1/history/{r['id']}/thumbnail"} for r in rows]

    @app.get("/v1/history/{row_id}/thumbnail")
    def history_thumbnail(row_id: int, request: Request) -> Response:
        try:
            data = history.thumbnail(request.cookies.get(SESSION_COOKIE, ""), row_id)
        except sqlite3.Error as e:
            raise HTTPException(503, f"the history cannot be read: {e}") from None
        if data is None:
            raise HTTPException(404, "no such history row in this session")
        return Response(data, media_type="image/jpeg")

    @app.get("/v1/products/{product_id}", dependencies=[Depends(reader)])
    def product(product_id: int) -> dict:
        p = engine.product(product_id)
        if p is None:
            raise HTTPException(404, f"no product {product_id}")
        return p

    @app.get("/v1/items/{item_id}/thumbnail", dependencies=[Depends(reader)])
    def item_thumbnail(item_id: int) -> Response:
        try:
            data = engine.item_thumbnail(item_id)
        except ImageError:  # logged with its path by the engine; the path is not the client's business
            raise HTTPException(404, f"the photo of item {item_id} cannot be read") from None
        if data is None:
            raise HTTPException(404, f"no item {item_id}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/random", dependencies=[Depends(reader)])
    def random_photo() -> dict:
        """A random catalog photo (base64 JPEG) to try the page with."""
        try:
            item_id, data = engine.random_item(rng)
        except ProductLensError as e:
            raise HTTPException(404, _short(e)) from None
        return {"id": item_id, "jpeg_base64": base64.b64encode(data).decode()}

    @app.post("/v1/products", dependencies=[Depends(admin)], status_code=201)
    async def add_product(request: Request, image: UploadFile = File(...), product_id: int = Form(...), title: str = Form(""),
                          category: str = Form(""), item_id: Optional[int] = Form(None)) -> dict:
        """Add a photo of a product (new or existing); searchable by the next query."""
        img = await read_upload(request, image)
        async with admission.slot():
            try:
                new_id = await _run(engine.add_item, img, product_id, title, category, item_id)
            except Locked as e:  # another process is writing to the catalog
                raise _locked(e) from None
            except ItemExists as e:
                raise HTTPException(409, _short(e)) from None
            except ProductLensError as e:
                raise HTTPException(400, _short(e)) from None
        return {"id": new_id, "product_id": product_id}

    @app.put("/v1/products/{product_id}", dependencies=[Depends(admin)])
    def update_product(product_id: int, fields: dict) -> dict:
        try:
            n = engine.update_product(product_id, fields)
        except Locked as e:
            raise _locked(e) from None
        except ProductLensError as e:
            raise HTTPException(400, _short(e)) from None
        if not n:
            raise HTTPException(404, f"no product {product_id}")
        return {"product_id": product_id, "items": n}

    @app.delete("/v1/products/{product_id}", dependencies=[Depends(admin)])
    def delete_product(product_id: int) -> dict:
        try:
            n = engine.remove_product(product_id)
        except Locked as e:
            raise _locked(e) from None
        except ProductLensError as e:
            raise HTTPException(400, _short(e)) from None
        if not n:
            raise HTTPException(404, f"no product {product_id}")
        return {"product_id": product_id, "removed": n}

    # ------------------------------------------------------------------ page
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "index.html", {"items": engine.status()["items"],
                                                                  "max_mb": config.max_upload_mb,
                                                                  "max_mp": config.max_pixels / 1e6,
                                                                  "history_rows": MAX_ROWS_PER_SESSION})

    app.state.engine = engine
    app.state.history = history
    app.state.admission = admission
    app.state.batcher = batcher
    return app


def _check_key(config: ServeConfig, given: str | None) -> None:
    if not config.api_key:
        raise HTTPException(403, "admin calls are disabled: set PRODUCTLENS_API_KEY (or ServeConfig.api_key)")
    if not given or not hmac.compare_digest(given.encode(), config.api_key.encode()):
        raise HTTPException(401, "a valid X-API-Key header is required")


def _locked(e: Exception) -> HTTPException:
    """503 for a catalog another process kept locked for writing: a client may retry."""
    return HTTPException(503, _short(e), headers={"Retry-After": "5"})


def _short(e: Exception) -> str:
    return str(e).replace("<bytes>: ", "")


async def _run(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)

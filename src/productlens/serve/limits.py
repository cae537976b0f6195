"""A cap on request bodies, as an ASGI middleware: declared and streamed sizes alike."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 and ``detail``.

    A body that declares its size (Content-Length) is refused before any of it is
    read; one sent in chunks is counted as it arrives and refused at the first chunk
    past the limit, so no more than ``limit`` bytes are ever read or spooled to disk.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int, detail: str) -> None:
        self.app, self.limit, self.detail = app, int(limit), detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # FastAPI passes an HTTPException raised while parsing a form on as is
                    raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counted, send)

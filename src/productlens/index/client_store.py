"""What the server-backed stores (Milvus, Qdrant) share: a client object behind one lock, and
failures of the server or the network turned into errors that name the server and collection."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable, TypeVar

from ..types import ProductLensError
from .base import Store, json_default

T = TypeVar("T")


class ClientStore(Store):
    """A :class:`Store` kept by a server (or a client library's local mode) and reached through a client.

    Subclasses set ``engine`` (the name in messages), and in ``__init__`` ``name``
    (the collection), ``where`` (the server or folder), ``_client`` and ``_lock``.
    """

    engine: str = "server"
    name: str
    where: str
    _client: Any = None
    _lock: threading.RLock

    @classmethod
    def open(cls, path: str | os.PathLike, dim: int | None = None, **options: Any) -> "ClientStore":
        return cls(path, dim, **options)  # type: ignore[call-arg]

    @property
    def client(self) -> Any:
        """The backend's client (raises ProductLensError once the store is closed)."""
        if self._client is None:
            raise ProductLensError("store is closed")
        return self._client

    def _call_options(self) -> dict[str, Any]:
        """Keywords every client call gets (e.g. a per-call timeout)."""
        return {}

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the client; any failure of the server or the network becomes a ProductLensError."""
        if self._client is None:
            raise ProductLensError("store is closed")
        try:
            with self._lock:
                return fn(*args, **self._call_options(), **kwargs)
        except ProductLensError:
            raise
        except Exception as e:
            raise self.failure(e) from None

    def failure(self, e: BaseException) -> ProductLensError:
        """The error to raise for a failed call: the engine, server, collection and first line of ``e``."""
        return ProductLensError(f"{self.engine} at {self.where} (collection {self.name}): {reason(e)}")


def json_ready(md: dict) -> dict:
    """``md`` as plain JSON types (numpy scalars and arrays converted), as a client library sends it."""
    return json.loads(json.dumps(md, default=json_default))


def reason(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters)."""
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    return str(msg).splitlines()[0][:300]


__all__ = ["ClientStore", "json_ready", "reason"]

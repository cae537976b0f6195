"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real-photo datasets in ``../shared/data``; skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> str:
    """A standalone Milvus server on localhost for this test session (``pip install milvus``).

    Skips, saying why, where the server cannot start. Set ``PRODUCTLENS_TEST_MILVUS_URI``
    to use a running server instead.
    """
    uri = os.environ.get("PRODUCTLENS_TEST_MILVUS_URI")
    if uri:
        yield uri
        return
    try:
        from milvus import MilvusServer
        import pymilvus  # noqa: F401
    except ImportError as e:
        pytest.skip(f"no local Milvus server: {e} (pip install milvus pymilvus)")
    server = MilvusServer()
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus")))
    try:
        server.start()
    except Exception as e:  # pragma: no cover - depends on the machine
        with contextlib.suppress(Exception):
            server.stop()
        pytest.skip(f"the local Milvus server did not start: {e}")
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()

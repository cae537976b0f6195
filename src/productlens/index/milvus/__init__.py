"""The Milvus backend: the catalog store in a Milvus server (standalone or a cluster).

Needs ``pymilvus`` (``pip install 'productlens[milvus]'``) and a server. For a
local one, ``pip install milvus`` ships a standalone server::

    from milvus import MilvusServer
    server = MilvusServer(); server.set_base_dir("/data/milvus"); server.start()

then ``open_store("products", dim=1280, backend="milvus", uri="http://127.0.0.1:19530")``.
See :class:`MilvusStore` for the options and how it differs from the embedded store.
"""

from .store import INDEXES, MilvusStore

__all__ = ["INDEXES", "MilvusStore"]

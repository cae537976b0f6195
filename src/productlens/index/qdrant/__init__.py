"""The Qdrant backend: the catalog store in a Qdrant collection, on a server or in a local folder.

Needs ``qdrant-client`` (``pip install 'productlens[qdrant]'``). Without a
server, qdrant-client's local mode keeps the collection in a folder::

    open_store("products", dim=1280, backend="qdrant", location="/data/qdrant")  # local folder
    open_store("products", dim=1280, backend="qdrant", url="http://qdrant:6333")  # a server

See :class:`QdrantStore` for the options and how it differs from the embedded store.
"""

from .store import QdrantStore

__all__ = ["QdrantStore"]

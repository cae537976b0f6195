"""The HTTP service: a JSON API and a web page over one catalog (FastAPI).

>>> from productlens.serve import ServeConfig, create_app     # doctest: +SKIP
>>> app = create_app(ServeConfig(catalog="runs/catalog"))     # doctest: +SKIP

``productlens serve CATALOG`` runs it with uvicorn on 127.0.0.1:8000.
Needs the ``serve`` extra (FastAPI, uvicorn, Jinja2, python-multipart).
"""

from productlens.serve.config import ServeConfig


def create_app(config: ServeConfig):
    """The FastAPI application for ``config`` (imports FastAPI only when called)."""
    from productlens.serve.app import build_app

    return build_app(config)


__all__ = ["ServeConfig", "create_app"]

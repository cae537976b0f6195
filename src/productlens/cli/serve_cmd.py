"""``productlens serve``: the HTTP API and web page over a catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder (from `productlens index build` or `demo`)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port."),
    detector: Optional[str] = typer.Option(None, help="Detector folder or onnx:PATH: boxes on the page and (unless "
                                                      "--search-whole) the search on the best box."),
    search_detected: bool = typer.Option(True, "--search-detected/--search-whole",
                                         help="With a detector and no box: search the best detected box, "
                                              "or the whole photo (boxes are drawn either way)."),
    workers: int = typer.Option(1, help="Inferences at once (each uses every core)."),
    max_batch: Optional[int] = typer.Option(None, help="Waiting requests run together, at most this many "
                                                       "(default: 8 model inputs' worth for the catalog)."),
    queue: int = typer.Option(8, help="Requests allowed to wait; beyond them the service answers 503."),
    max_upload_mb: float = typer.Option(10.0, help="Upload size limit."),
) -> None:
    """Serve the API (/v1, docs at /docs) and the web page (/). Admin calls need $PRODUCTLENS_API_KEY."""
    try:
        import uvicorn

        from productlens.serve import ServeConfig, create_app
    except ImportError as e:
        raise typer.BadParameter(f"serving needs the 'serve' extra (pip install 'productlens[serve]'): {e}")
    from productlens.pipeline.catalog import Catalog

    config = ServeConfig(catalog=catalog_dir, detector=detector, search_detected=search_detected,
                         workers=workers, queue=queue, max_batch=max_batch, max_upload_mb=max_upload_mb)
    Catalog.open(catalog_dir).close()  # a clear error before the server starts
    _check_free(host, port)  # before saying it serves there
    app = create_app(config)
    typer.echo(f"productlens is serving {catalog_dir} at http://{host}:{port}  (API docs: http://{host}:{port}/docs; "
               "Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_free(host: str, port: int) -> None:
    """ProductLensError unless a server could listen on ``host:port`` now (another server holds it, say)."""
    import socket

    from productlens.types import ProductLensError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ProductLensError(f"cannot listen on {host}:{port}: {e}") from None
    for family, _, _, _, address in infos:  # the server binds every address the name resolves to
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                s.bind(address)
            except OSError as e:
                raise ProductLensError(f"cannot listen on {host}:{port} ({address[0]}): {e.strerror or e} "
                                       "(another server there? choose another --port)") from None

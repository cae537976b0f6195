"""``productlens data``: fetch datasets into the cache."""

from __future__ import annotations

from typing import Optional

import typer

from productlens.cli.common import fail_cleanly

app = typer.Typer(help="Download datasets (cached; checksummed; safe extraction).", no_args_is_help=True)


@app.command("fetch")
@fail_cleanly
def fetch(
    url: str = typer.Argument(..., help="http(s):// or file:// URL of a file or archive."),
    sha256: Optional[str] = typer.Option(None, help="Expected SHA-256 of the download."),
    extract: bool = typer.Option(False, help="Unpack a zip / tar(.gz) beside the download."),
) -> None:
    """Download URL into the cache (once) and print the local path."""
    from productlens.data.download import fetch as do_fetch

    typer.echo(str(do_fetch(url, sha256=sha256, extract=extract)))

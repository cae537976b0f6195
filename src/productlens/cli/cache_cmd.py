"""``productlens cache``: what the cache holds, and clearing it."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from productlens.cli.common import fail_cleanly

app = typer.Typer(help="Show and clear the cache: features, exported models, downloads.", no_args_is_help=True)


@app.command("info")
@fail_cleanly
def info(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Size of each part of the cache, where it lies, and how it comes back once cleared."""
    from productlens.cache import cache_usage, feature_folders, human

    usage = cache_usage()
    folders = feature_folders()
    if as_json:
        typer.echo(json.dumps({"parts": [{"name": u.part.name, "path": str(u.part.path), "files": u.files,
                                          "bytes": u.bytes, "holds": u.part.holds, "comes_back": u.part.comes_back,
                                          "cleared_by_default": u.part.rebuilt} for u in usage],
                               "features": [{"folder": f, "views": v, "shards": n, "bytes": b}
                                            for f, v, n, b in folders]}))
        return
    for u in usage:
        default = "" if u.part.rebuilt else "; cleared only when named"
        typer.echo(f"{u.part.name:<10} {human(u.bytes):>9} {u.files:>7} files  {u.part.path}")
        typer.echo(f"{'':<10} {u.part.holds}; once cleared, {u.part.comes_back}{default}")
    if folders:
        typer.echo("features by backbone (folder: name-model hash):")
        for folder, views, shards, size in folders:
            typer.echo(f"  {folder:<52} {views:>3} views {shards:>5} shards {human(size):>9}")
    typer.echo(f"total {human(sum(u.bytes for u in usage))}")


@app.command("clear")
@fail_cleanly
def clear(
    parts: Optional[List[str]] = typer.Argument(None, help="Parts to clear: features, models, text, downloads, "
                                                           "detectors (default: features, models and text, "
                                                           "which come back by themselves)."),
    all_parts: bool = typer.Option(False, "--all", help="Clear every part, downloads and detectors included."),
) -> None:
    """Remove cached files that productlens wrote (nothing else in those folders is touched)."""
    from productlens.cache import cache_parts, clear_cache, human

    names = [p.name for p in cache_parts()] if all_parts else list(parts or [])
    removed = clear_cache(names)
    for u in removed:
        typer.echo(f"{u.part.name}: removed {u.files} files, {human(u.bytes)} ({u.part.path})")
    typer.echo(f"freed {human(sum(u.bytes for u in removed))}")

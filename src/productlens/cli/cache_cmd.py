"""``productlens cache``: what the cache holds, and clearing it."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from productlens.cli.common import fail_cleanly

app = typer.Typer(help="Show and clear the cache: features, exported models, text embeddings, downloads, "
                       "detectors.", no_args_is_help=True)


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
                               "features": [{"folder": f, "views": v, "shards": n, "bytes": b,
                                             "last_used": _day(t, "%Y-%m-%dT%H:%M:%S")}
                                            for f, v, n, b, t in folders]}))
        return
    for u in usage:
        default = "" if u.part.rebuilt else "; cleared only when named"
        typer.echo(f"{u.part.name:<10} {human(u.bytes):>9} {u.files:>7} files  {u.part.path}")
        typer.echo(f"{'':<10} {u.part.holds}; once cleared, {u.part.comes_back}{default}")
    if folders:
        typer.echo("features by backbone (folder: name-model hash), most recently used first:")
        for folder, views, shards, size, used in folders:
            typer.echo(f"  {folder:<52} {views:>3} views {shards:>5} shards {human(size):>9}  "
                       f"last used {_day(used, '%Y-%m-%d %H:%M')}")
        typer.echo("  (`productlens cache clear --unused-days N` removes the folders not used for N days)")
    typer.echo(f"total {human(sum(u.bytes for u in usage))}")


@app.command("clear")
@fail_cleanly
def clear(
    parts: Optional[List[str]] = typer.Argument(None, help="Parts to clear: features, models, text, downloads, "
                                                           "detectors (default: features, models and text, "
                                                           "which come back by themselves)."),
    all_parts: bool = typer.Option(False, "--all", help="Clear every part, downloads and detectors included."),
    unused_days: Optional[float] = typer.Option(None, "--unused-days", help="Of the features, clear only the "
                                                "backbone folders not used for this many days (without "
                                                "parts named, only those)."),
) -> None:
    """Remove cached files that productlens wrote (nothing else in those folders is touched)."""
    from productlens.cache import cache_parts, clear_cache, human
    from productlens.types import ProductLensError

    names = [p.name for p in cache_parts()] if all_parts else list(parts or [])
    if unused_days is not None and set(names) - {"features"}:  # the others have no per-folder use dates
        other = ", ".join(sorted(set(names) - {"features"}))
        raise ProductLensError(f"--unused-days applies to the features only; clear {other} in a command of its own")
    removed = clear_cache(names, unused_days)
    for u in removed:
        typer.echo(f"{u.part.name}: removed {u.files} files, {human(u.bytes)} ({u.part.path})")
    typer.echo(f"freed {human(sum(u.bytes for u in removed))}")


def _day(seconds: float, fmt: str) -> str:
    """A time (seconds since the epoch) in local time, or ``never`` for 0."""
    import datetime

    return datetime.datetime.fromtimestamp(seconds).strftime(fmt) if seconds else "never"

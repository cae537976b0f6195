"""Shared CLI helpers: clean error messages instead of tracebacks; one report per skipped file."""

from __future__ import annotations

import functools
import logging
import sqlite3
from typing import Callable

import typer

from productlens.progress import ITEM_REPORT
from productlens.types import ProductLensError


def fail_cleanly(fn: Callable) -> Callable:
    """Turn productlens's own errors, and the system's about files (no such file, a folder where a file
    should be, no permission, a full disk), into a one-line message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # `productlens ... | head`: the reader has what it wanted
            _quiet_stdout()
            raise typer.Exit(0) from None
        except (ProductLensError, OSError, KeyError, sqlite3.Error) as exc:  # OSError: a missing file, a full disk
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe again."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner's capture)
        pass


def reports_skipped(fn: Callable) -> Callable:
    """For a command that prints its own ``skipped: <file>: <reason>`` lines once its work is done:
    the library's log record for each of those files is dropped meanwhile, so that each is named
    once (the batch's summary warning stays)."""

    def per_item(record: logging.LogRecord) -> bool:
        return not getattr(record, ITEM_REPORT, False)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        handlers = logging.getLogger().handlers
        for h in handlers:
            h.addFilter(per_item)
        try:
            return fn(*args, **kwargs)
        finally:
            for h in handlers:
                h.removeFilter(per_item)

    return wrapper


def verify_option():
    """The ``--verify/--no-verify`` option of the commands that rank a catalog (default None: on
    where OpenCV is installed; see :func:`productlens.pipeline.verify.resolve`)."""
    return typer.Option(None, "--verify/--no-verify", help="Spatial verification: re-rank the top 10 by SIFT "
                        "matches that fit one geometry (default: on where OpenCV is installed).")


def query_views_option():
    """``--query-views`` of the commands that build a catalog (default None: ``build_catalog``'s)."""
    return typer.Option(None, "--query-views", help="regions: pool each query with six crops of it (default "
                        "with --train); none: the whole photo only; also flip, tta, train or shelf (the view "
                        "sets of `classify train --views`).")


def gallery_views_option():
    """``--gallery-views`` of the commands that build a catalog (default None: ``build_catalog``'s)."""
    return typer.Option(None, "--gallery-views", help="How gallery photos are embedded: shelf (default with "
                        "regions queries: the photo and six crops, as queries are, and the same of a 2 x 2 "
                        "mosaic of it, as a shelf shows a product), regions (as the queries, twice as fast "
                        "to build), or none (whole photos, fourteen times faster); flip, tta and train are "
                        "taken too.")


def owner_label(product_id: int | None, item_id: int | None) -> str:
    """``product=P`` for a ranked product, ``id=N`` for an item that has no product (printed rankings)."""
    return f"product={product_id}" if product_id is not None else f"id={item_id}"


def fail_if_none_done(done: int, failed: int) -> None:
    """Exit with status 1 when every input of a batch failed (each was reported): a script must not
    take a run that produced nothing for a success. Some done, some skipped: status 0."""
    if failed and not done:
        raise typer.Exit(1)


def expand_folders(sources: list, exclude=None) -> list[str]:
    """Command-line photos with each folder replaced by the image files under it
    (:func:`~productlens.data.readers.image_files`; ``exclude``: a command's own output folder).
    Paths and URLs pass as they are."""
    from pathlib import Path

    from productlens.data.readers import image_files

    out: list[str] = []
    for src in sources:
        if "://" not in str(src) and Path(src).is_dir():
            out += [str(f) for f in image_files(src, exclude)]
        else:
            out.append(str(src))
    return out


def unused_text_note(catalog, text: str | None, text_weight: float | None = None) -> str | None:
    """Why a query's ``--text`` would change nothing in ``catalog`` (a note for stderr), or None when it is used:
    the catalog's own text weight is 0 (and ``text_weight`` does not override it), or no item has text."""
    if not text:
        return None
    weight = catalog.text_weight_for(True) if text_weight is None else text_weight
    if weight == 0:
        why = ("this catalog's text weight is 0 (its training photos chose the image alone when it was built with "
               "--ocr)" if text_weight is None else "--text-weight is 0")
        return f"note: --text is not used: {why}"
    if not catalog.matcher.has_text:
        return ("note: --text is not used: no item of this catalog has a title, category or other text to match "
                "it against")
    return None

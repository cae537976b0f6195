"""Shared CLI helpers: clean error messages instead of tracebacks."""

from __future__ import annotations

import functools
from typing import Callable

import typer

from productlens.types import ProductLensError


def fail_cleanly(fn: Callable) -> Callable:
    """Turn productlens's own errors, and the system's about files (no such file, a folder where a file
    should be, no permission, a full disk), into a one-line message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ProductLensError, OSError, KeyError) as exc:  # OSError: a missing file, a folder given for a file, ...
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper


def verify_option():
    """The ``--verify/--no-verify`` option of the commands that rank a catalog (default None: on
    where OpenCV is installed; see :func:`productlens.pipeline.verify.resolve`)."""
    return typer.Option(None, "--verify/--no-verify", help="Spatial verification: re-rank the top 10 by SIFT "
                        "matches that fit one geometry (default: on where OpenCV is installed).")

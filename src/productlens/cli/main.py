"""The ``productlens`` command: thin wrappers over library functions."""

from __future__ import annotations

import logging

import typer

from productlens.cli import (audit_cmd, cache_cmd, classify_cmd, data_cmd, detect_cmd, eval_cmd, index_cmd,
                             search_cmd, serve_cmd, text_cmd, video_cmd)
from productlens.cli.common import fail_cleanly

app = typer.Typer(help="Identify products in photos: index a catalog, search it, evaluate.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(index_cmd.app, name="index")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(data_cmd.app, name="data")
app.add_typer(classify_cmd.app, name="classify")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(detect_cmd.app, name="detector")
app.add_typer(text_cmd.app, name="text")
app.add_typer(cache_cmd.app, name="cache")
app.command("search")(fail_cleanly(search_cmd.search))
app.command("rank")(fail_cleanly(search_cmd.rank))
app.command("demo")(fail_cleanly(search_cmd.demo))
app.command("detect")(detect_cmd.detect)
app.command("identify-video")(fail_cleanly(video_cmd.identify_video))
app.command("serve")(fail_cleanly(serve_cmd.serve))


@app.command("models")
def models() -> None:
    """List the registered image embedders."""
    from productlens.models.embedders import list_embedders

    for name in list_embedders():
        typer.echo(name)
    typer.echo("ensemble:A+B+...  (bundled backbones concatenated; the classifier's default joins all three)")
    typer.echo("onnx:PATH  (your own ONNX model with PATH.json preprocessing beside it)")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _flags_show_no_value() -> None:
    """typer 0.29 shows every on/off flag with a value type, ``--json <bool>``, ``--rerank --no-rerank
    <bool>``; typing a value (``--json true``) then fails with "unexpected extra argument". A flag's
    type column is left empty instead (typer's own ``--help`` included). Where typer has no such method
    (other versions) nothing changes."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_productlens", False):
        return

    def display_type_rich(self, ctx):
        return "" if self.is_flag and self.metavar is None else shown(self, ctx)

    display_type_rich._productlens = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_value()


def _stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a container stopping) end a command as Ctrl-C does, through its
    clean-up: temporary files and folders are removed on the way out, where Python's default dies at once
    and leaves them. Exit status 143 (128 + SIGTERM), as a shell reports it. A server installs its own.
    Installed by :func:`main` (the ``productlens`` command), not when ``app`` runs inside another program."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    """The ``productlens`` command."""
    _stop_on_sigterm()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

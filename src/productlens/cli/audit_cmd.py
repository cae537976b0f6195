"""``productlens audit labels``: probably-wrong labels and near-duplicates across classes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import typer

from productlens.cli.common import fail_cleanly, reports_skipped
from productlens.config import CLASSIFIER_EMBEDDER

app = typer.Typer(help="Audit training data.", no_args_is_help=True)


@app.command("labels")
@fail_cleanly
@reports_skipped
def labels(
    data: Path = typer.Argument(..., help="Training csv, folder per category or Shopee root."),
    label: Optional[str] = typer.Option(None, help="Label column of a csv."),
    model: Optional[str] = typer.Option(None, "--model", help="Embedder name, or onnx:PATH (default: the "
                                                               f"classifier's, {CLASSIFIER_EMBEDDER})."),
    views: Optional[str] = typer.Option(None, help="Training views: none, flip, tta, train, regions or shelf "
                                              "(default: the classifier's, regions; as `classify train --views`)."),
    tta: Optional[str] = typer.Option(None, help="Views whose probabilities are averaged: none, flip, tta, train, "
                                                 "regions (the default) or shelf."),
    folds: int = typer.Option(5, min=2, help="Cross-validation folds for the out-of-fold probabilities (at least 2; "
                                             "at most the images of the smallest class are used)."),
    threshold: float = typer.Option(0.95, help="Cosine similarity from which two images count as near-duplicates."),
    top: int = typer.Option(50, help="Rows of each list to print."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every flagged image to this csv."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of the first flagged photos (given -> suggested "
                                                   "label) and of near-duplicate pairs."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object on the last line."),
) -> None:
    """List training images whose label is probably wrong (ranked, with a suggestion), and cross-class duplicates."""
    from productlens.data.labelled import read_labelled
    from productlens.eval.audit import audit_labels, plot_audit
    from productlens.eval.sheets import sheet_path
    from productlens.fileio import atomic_path, check_output_file, check_outputs_apart
    from productlens.pipeline.classify import TrainOptions
    from productlens.types import ProductLensError

    if plot:
        sheet_path(plot)  # before the long work
    if out is not None:
        check_output_file(out)
    check_outputs_apart({"--out": out, "--plot": plot}, reads=[data, data / "train.csv"])  # a csv or a Shopee root
    ds = read_labelled(data, label=label)
    options = TrainOptions(embedder=model, views=views, tta=tta)
    report = audit_labels(ds, options, folds=folds, threshold=threshold, progress=not as_json)
    for _, _, msg in report.errors:
        typer.echo(f"skipped: {msg}", err=True)
    typer.echo(f"{len(report.suspects)} of {report.images} images probably mislabelled "
               f"({_folds_text(report.folds, folds)} out-of-fold probabilities, {options.backbone}); "
               f"{report.seconds:.1f} s")
    if report.suspects:
        typer.echo("rank  margin  given -> suggested  (p given / p suggested)  image")
    base = data if data.is_dir() else data.parent  # photos named as the csv names them, or from the folder
    for r, s in enumerate(report.suspects[:top], start=1):
        typer.echo(f"{r:4d}  {s.margin:6.3f}  {s.given} -> {s.suggested}  "
                   f"({s.given_prob:.2f} / {s.suggested_prob:.2f})  {_shown(s.image, base)}")
    typer.echo(f"{len(report.duplicates)} near-duplicate pairs across classes (cosine >= {threshold})")
    for d in report.duplicates[:top]:
        typer.echo(f"  {d.cosine:.3f}  {d.first_label} {_shown(d.first_image, base)}  <->  "
                   f"{d.second_label} {_shown(d.second_image, base)}")
    if out is not None:
        with atomic_path(out) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["rank", "image", "given", "suggested", "given_prob", "suggested_prob", "margin", "flagged_by"])
                for r, s in enumerate(report.suspects, start=1):
                    w.writerow([r, _shown(s.image, base), s.given, s.suggested, f"{s.given_prob:.4f}",
                                f"{s.suggested_prob:.4f}", f"{s.margin:.4f}", s.by])
        typer.echo(f"wrote {out}")
    if plot:
        try:
            typer.echo(f"wrote {plot_audit(report, plot)}")
        except ProductLensError as exc:  # the report above stands
            typer.echo(f"warning: {exc}", err=True)
    if as_json:
        typer.echo(json.dumps(report.to_json()))


def _shown(image: str, base: Path) -> str:
    """``image`` relative to ``base`` (the training csv's folder, or the training folder) when it lies inside
    it, as a csv row names it, so that flagged rows can be matched back; else as it is."""
    path, root = Path(image), base.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else image


def _folds_text(used: int, asked: int) -> str:
    """``5-fold``, or ``3-fold (5 asked; the smallest class has 3 images)`` when reduced."""
    return f"{used}-fold" + (f" ({asked} asked; the smallest class has {used} images)" if used < asked else "")

"""``productlens detect``, ``productlens detector train`` and ``productlens eval detect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from productlens.cli.common import expand_folders, fail_cleanly, fail_if_none_done
from productlens.types import ProductLensError

app = typer.Typer(help="Train object detectors on COCO boxes.", no_args_is_help=True)

_MODEL = typer.Option(None, "--model", "-m", help="Detector folder or onnx:PATH; default $PRODUCTLENS_DETECTOR "
                                                   "or the cache's detectors/default.")
_EPOCHS = typer.Option(None, min=1, help="Head training epochs (default: the library's).")
_SIZE = typer.Option(512, help="Longer side of the detector's input, pixels.")
_BACKBONE = typer.Option("efficientnet-lite2", help="Backbone: efficientnet-lite2 or efficientnet-lite0.")
_TUNE = typer.Option(None, "--tune-from", help="Train the backbone's blocks from this one on (and its head "
                                              "convolution) with the head: efficientnet-lite2 15..21, "
                                              "efficientnet-lite0 11..16; the last number tunes the head "
                                              "convolution alone. Default: the backbone stays frozen.")


def _options(backbone: str, size: int, epochs: Optional[int], tune_from: Optional[int] = None):
    from productlens.pipeline.detect_train import DetectTrainOptions

    opts = DetectTrainOptions(backbone=backbone, size=size, tune_from=tune_from)
    if epochs is not None:
        opts.epochs = epochs
    return opts


@fail_cleanly
def detect(
    images: List[Path] = typer.Argument(..., help="Image files (or folders of images)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write <name>.jpg (boxes drawn) and <name>.json here."),
    model: Optional[str] = _MODEL,
    min_score: float = typer.Option(0.3, min=0.0, max=1.0, help="Report and draw detections scoring at least this."),
    all_tags: bool = typer.Option(False, "--all-tags", help="A box per tag, as the COCO scorer sees them (default: "
                                                          "one box per object, other tags listed in the JSON)."),
    as_json: bool = typer.Option(False, "--json", help="Print all results as one JSON list on the last line."),
) -> None:
    """Detect products: boxes in pixels (x, y, w, h), tags and scores; bad images are reported and skipped."""
    from productlens.fileio import check_output_file
    from productlens.models.detectors import load_detector
    from productlens.pipeline.detect import detect_files

    for src in images if out is not None else []:
        if src.is_dir() and src.resolve().is_relative_to(out.resolve()):
            raise ProductLensError(f"the folder {src} is inside --out {out}, whose drawings and JSON files a "
                                   "later run would take for photos: write them to another folder")
    paths = [Path(p) for p in expand_folders(images, exclude=out)]  # not the drawings of an earlier run
    if not paths:
        raise FileNotFoundError("no images given (folders hold no image files)")
    if out is not None:
        check_output_file(out, folder=True)
    det = load_detector(model)
    records, errors = detect_files(det, paths, out, min_score=min_score, one_tag=not all_tags,
                                   progress=not as_json)
    for path, msg in errors:
        typer.echo(f"skipped: {msg}", err=True)
    if as_json:
        typer.echo(json.dumps(records))
    else:
        for rec in records:
            found = ", ".join(f"{d['tag']} {d['score']:.2f}" for d in rec["detections"]) or "nothing"
            typer.echo(f"{rec['image']}: {found}")
        if out is not None:
            typer.echo(f"wrote {len(records)} drawn images and JSON files to {out}; skipped {len(errors)}")
    fail_if_none_done(len(records), len(errors))


@app.command("train")
@fail_cleanly
def train(
    annotations: Path = typer.Argument(..., help="COCO json (file_name relative to the json's folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Detector folder to write."),
    backbone: str = _BACKBONE, size: int = _SIZE, epochs: Optional[int] = _EPOCHS,
    tune_from: Optional[int] = _TUNE,
) -> None:
    """Train a detector (FCOS head on the backbone's features) and write its folder."""
    from productlens.data.coco import read_coco
    from productlens.pipeline.detect_train import train_detector

    data = read_coco(annotations)
    for p in data.problems:
        typer.echo(f"warning: {p}", err=True)
    m = train_detector(data, out, _options(backbone, size, epochs, tune_from))
    for s in m["skipped"]:
        typer.echo(f"skipped: {s['error']}", err=True)
    typer.echo(f"trained on {m['images']} images ({m['boxes']} boxes, {m['views']} views) in {m['seconds']} s; "
               f"detector written to {out}")


@fail_cleanly
def eval_detect(
    train: Path = typer.Option(..., help="COCO json to train on."),
    test: Path = typer.Option(..., help="COCO json to score (COCO protocol)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Keep the trained detector in this folder."),
    backbone: str = _BACKBONE, size: int = _SIZE, epochs: Optional[int] = _EPOCHS,
    tune_from: Optional[int] = _TUNE,
    plot: Optional[Path] = typer.Option(None, help="Write a PNG chart of AP@0.5 per class here, and test photos "
                                                   "with ground truth and detections beside it (NAME_examples.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
) -> None:
    """Train on TRAIN, detect on TEST's images and print mAP@0.5, mAP@0.5:0.95 and per-class AP@0.5."""
    from productlens.eval.detection import evaluate_detection

    m = evaluate_detection(train, test, _options(backbone, size, epochs, tune_from), model_out=out,
                           progress=not as_json, plot=plot)
    for p in m["problems"]:
        typer.echo(f"warning: {p}", err=True)
    typer.echo(f"train: {m['train']} images  test: {m['test']} images  classes: {m['classes']}  "
               f"skipped: {m['skipped']}  seconds: {m['seconds']}")
    for name, ap in sorted(m["per_class"].items(), key=lambda kv: -kv[1]):
        typer.echo(f"  AP@0.5 {ap:.3f}  {name}")
    typer.echo(f"mAP@0.5: {m['map50']:.4f}  mAP@0.5:0.95: {m['map']:.4f}")
    for path in m["plots"]:
        typer.echo(f"wrote {path}")
    if as_json:
        keys = ("map50", "map", "classes", "train", "test", "seconds", "per_class")  # per_class: tag -> AP@0.5
        typer.echo(json.dumps({k: m[k] for k in keys}))

"""``productlens classify`` (train, predict) and ``productlens eval classify``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Optional

import typer

from productlens.cli.common import fail_cleanly, fail_if_none_done, reports_skipped
from productlens.config import CLASSIFIER_EMBEDDER, DEFAULT_EMBEDDER
from productlens.types import ProductLensError

app = typer.Typer(help="Train category classifiers and predict categories.", no_args_is_help=True)


def _options(model: Optional[str], views: Optional[str], tta: Optional[str], epochs: Optional[int],
             noise_filter: bool, balance: str, holdout: float, finetune: bool, companions: bool = True):
    from productlens.models.classifiers.head import HeadConfig
    from productlens.pipeline.classify import TrainOptions

    return TrainOptions(embedder=model, views=views, tta=tta, holdout=holdout, finetune=finetune, companions=companions,
                        head=HeadConfig(noise_filter=noise_filter, balance=balance,
                                        **({} if epochs is None else {"epochs": epochs, "clean_epochs": epochs})))


_MODEL = typer.Option(None, "--model", help=f"Embedder name, or onnx:PATH (default: {CLASSIFIER_EMBEDDER}, "
                                             f"or {DEFAULT_EMBEDDER} with --finetune).")
_VIEWS = typer.Option(None, help="Training views: none, flip, tta, train (12 crops 0.8 and flips), regions "
                                  "(whole, centre crops 0.75 and 0.5, four corners 0.6; the default) or shelf "
                                  "(regions, and regions of a 2 x 2 mosaic of the photo).")
_TTA = typer.Option(None, help="Prediction views averaged (test-time augmentation): none, flip, tta, train, "
                               "regions (the default) or shelf.")
_EPOCHS = typer.Option(None, min=1, help="Head training epochs (default: 15, or 25 when the noise filter finds "
                                          "the labels clean); a value sets both.")
_NOISE = typer.Option(True, "--noise-filter/--no-noise-filter", help="Small-loss selection against noisy labels.")
_BALANCE = typer.Option("logit-adjust", help="Imbalance handling: logit-adjust, class-weight or none.")
_HOLDOUT = typer.Option(0.15, help="Share of each class held out to fit the temperature.")
_FINETUNE = typer.Option(False, "--finetune/--no-finetune",
                         help="Fine-tune the backbone's last blocks first, joined with the other bundled backbones frozen "
                              "(minutes; kept in the model folder).")
_COMPANIONS = typer.Option(True, "--companions/--no-companions",
                           help="With --finetune: join the other bundled backbones, frozen, to the fine-tuned one "
                                "(--no-companions: the fine-tuned backbone alone, about half the model time).")


@app.command("train")
@fail_cleanly
@reports_skipped
def train(
    data: Path = typer.Argument(..., help="Folder per category, Shopee root (train/<category>/...) or csv."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    label: Optional[str] = typer.Option(None, help="Label column of a csv."),
    parent: List[str] = typer.Option([], help="Coarser category column(s) of a csv (repeatable)."),
    model: Optional[str] = _MODEL, views: Optional[str] = _VIEWS, tta: Optional[str] = _TTA,
    epochs: Optional[int] = _EPOCHS,
    noise_filter: bool = _NOISE, balance: str = _BALANCE, holdout: float = _HOLDOUT, finetune: bool = _FINETUNE,
    companions: bool = _COMPANIONS,
) -> None:
    """Train a classifier and write its model folder."""
    from productlens.data.labelled import read_labelled
    from productlens.pipeline.classify import train_classifier

    ds = read_labelled(data, label=label, parents=parent)
    options = _options(model, views, tta, epochs, noise_filter, balance, holdout, finetune, companions)
    res = train_classifier(ds, out, options)
    m = res.classifier.metrics
    for _, _, msg in res.errors:
        typer.echo(f"skipped: {msg}", err=True)
    backbone = options.backbone + (" fine-tuned" if options.finetune else "") + "".join(
        f" + {c}" for c in res.classifier.companions)  # the frozen backbones joined to the fine-tuned one
    typer.echo(f"trained {m['classes']} classes on {m['train_images']} images ({backbone}) in "
               f"{res.seconds:.1f} s; skipped {len(res.errors)}; temperature {res.classifier.temperature:.2f}"
               + (f"; held-out top-1 {m['holdout_top1']:.3f}" if "holdout_top1" in m else ""))
    typer.echo(f"model written to {out}")


def _label_text(value: str) -> str:
    """Shopee categories are two digits ('7' -> '07')."""
    return value.zfill(2) if value.isdigit() else value


def _check_submission_labels(labels: list[str]) -> None:
    """Refuse a submission in which two categories would be written alike ('7' and '07' are both '07')."""
    seen: dict[str, str] = {}
    for lab in labels:
        text = _label_text(str(lab))
        if text in seen:
            raise ProductLensError(f"categories {seen[text]!r} and {lab!r} would both be written {text!r} in the "
                                   "Shopee submission; rename one of the training folders (or labels)")
        seen[text] = str(lab)


@app.command("predict")
@fail_cleanly
@reports_skipped
def predict(
    model_dir: Path = typer.Argument(..., help="Model folder from `classify train`."),
    inputs: Path = typer.Argument(..., help="An image, a folder, a csv (image column) or a Shopee root (test.csv + test/)."),
    k: int = typer.Option(4, "-k", help="Categories per image."),
    level: Optional[str] = typer.Option(None, help="Predict a coarser level (a parent column) instead."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write predictions: .csv or .json."),
    submission: Optional[Path] = typer.Option(None, help="Write a Shopee submission csv (filename, category)."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as one JSON list on the last line."),
    detect: bool = typer.Option(False, "--detect", help="Classify each image's best detected product, not the whole photo."),
    detector: Optional[str] = typer.Option(None, help="Detector folder or onnx:PATH for --detect (default: "
                                                      "$PRODUCTLENS_DETECTOR or the cache's detectors/default)."),
) -> None:
    """Top-k categories with probabilities; unreadable images and csv rows with no image are reported and skipped."""
    import dataclasses

    from productlens.data.labelled import read_inputs
    from productlens.fileio import atomic_path, check_output_file, check_outputs_apart
    from productlens.models.classifiers.model import load_classifier

    if k < 1:
        raise typer.BadParameter("must be at least 1", param_hint="-k")
    for path in (out, submission):
        if path is not None:
            check_output_file(path)  # before the predictions, not after them
    check_outputs_apart({"--out": out, "--submission": submission}, reads=[inputs, inputs / "test.csv"],
                        folders=[model_dir])  # the input csv (or a Shopee root's), the model's own files
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise typer.BadParameter(f"{out}: predictions are written as .csv or .json", param_hint="--out")
    if submission is not None and submission.suffix.lower() != ".csv":
        raise typer.BadParameter(f"{submission}: a Shopee submission is a .csv", param_hint="--submission")
    clf = load_classifier(model_dir)
    k = min(k, len(clf.hierarchy.labels_of(level)))  # no more categories than the level has
    if submission is not None:
        _check_submission_labels(clf.hierarchy.labels_of(level))
    data = read_inputs(inputs)
    items = data.items
    if detect:
        from productlens.models.detectors import load_detector
        from productlens.pipeline.detect import best_boxes

        boxes = best_boxes(load_detector(detector), [it.image for it in items], [it.box for it in items],
                           progress=not as_json)
        items = [dataclasses.replace(it, box=b) for it, b in zip(items, boxes)]
    res = clf.predict_batch(items, level=level, progress=not as_json)
    top = res.top_k(k)
    skipped = data.skipped + [msg for _, _, msg in res.errors]  # rows with no image path, then unreadable images
    for msg in skipped:
        typer.echo(f"skipped: {msg}", err=True)
    records = [{"image": data.names[i], "predictions": [{"label": lab, "probability": round(p, 4)} for lab, p in t]}
               for i, t in zip(res.ok.tolist(), top)]
    if skipped and not records:  # earlier outputs are left as they were, not replaced by empty ones
        typer.echo(f"predicted 0 images; skipped {len(skipped)}; nothing written", err=True)
        raise typer.Exit(1)
    if out is not None:
        with atomic_path(out) as tmp:
            if out.suffix.lower() == ".json":
                tmp.write_text(json.dumps(records, indent=1))
            else:
                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f)
                    w.writerow(["image"] + [f"{c}_{j}" for j in range(1, k + 1) for c in ("label", "prob")])
                    for r in records:
                        w.writerow([r["image"]] + [v for p in r["predictions"] for v in (p["label"], p["probability"])])
    if submission is not None:
        best = {i: t[0][0] for i, t in zip(res.ok.tolist(), top)}
        with atomic_path(submission) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["filename", "category"])
                # every row that names a photo, in order (an unreadable photo's category left empty); a csv row
                # with no file name has none to write and is only reported above
                for i, name in enumerate(data.names):
                    w.writerow([name, _label_text(best[i]) if i in best else ""])
    if not as_json:
        for r in records[:20]:
            typer.echo(f"{r['image']}: " + ", ".join(f"{p['label']} {p['probability']:.2f}" for p in r["predictions"]))
        if len(records) > 20:
            typer.echo(f"... {len(records) - 20} more")
    typer.echo(f"predicted {len(records)} images; skipped {len(skipped)}"
               + (f"; wrote {out}" if out else "") + (f"; submission {submission}" if submission else ""))
    if as_json:
        typer.echo(json.dumps(records))
    fail_if_none_done(len(records), len(skipped))


@fail_cleanly
@reports_skipped
def eval_classify(
    train: Path = typer.Option(..., help="Training csv (image + label column), folder or Shopee root."),
    test: Path = typer.Option(..., help="Test csv (image + label column) or folder."),
    label: str = typer.Option(..., help="Label column scored."),
    fine: Optional[str] = typer.Option(None, help="Train on this finer column of the training csv and score "
                                                  "--label on the summed probabilities."),
    model: Optional[str] = _MODEL, views: Optional[str] = _VIEWS, tta: Optional[str] = _TTA,
    epochs: Optional[int] = _EPOCHS,
    noise_filter: bool = _NOISE, balance: str = _BALANCE, holdout: float = _HOLDOUT, finetune: bool = _FINETUNE,
    companions: bool = _COMPANIONS,
    plot: Optional[Path] = typer.Option(None, help="Write a confusion-matrix PNG here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
) -> None:
    """Train on TRAIN, report top-1, top-5, macro-F1 (averaged over the classes TEST holds) and per-class
    accuracy on TEST."""
    from productlens.eval.classification import evaluate_classification

    options = _options(model, views, tta, epochs, noise_filter, balance, holdout, finetune, companions)
    m = evaluate_classification(train, test, label, fine=fine, plot=plot, progress=not as_json, options=options)
    for msg in m["errors"]:
        typer.echo(f"skipped: {msg}", err=True)
    typer.echo(f"label: {label}{f' (trained on {fine})' if fine else ''}  model: {options.backbone}  "
               f"classes: {m['classes']}  train: {m['train']}  test: {m['test']}  skipped: {m['skipped']}  seconds: {m['seconds']}")
    typer.echo("per-class accuracy: " + ", ".join(f"{c} {a:.2f}" for c, a in sorted(m["per_class"].items(), key=lambda t: t[1])))
    typer.echo(f"top-1: {m['top1']:.4f}  top-5: {m['top5']:.4f}  macro-F1: {m['macro_f1']:.4f}  "
               f"balanced accuracy: {m['balanced_accuracy']:.4f}")
    if plot:
        typer.echo(f"warning: {m['plot_error']}" if "plot_error" in m else f"confusion matrix written to {plot}",
                   err="plot_error" in m)
    if as_json:
        typer.echo(json.dumps({k: m[k] for k in ("top1", "top5", "macro_f1", "classes", "train", "test", "seconds",
                                                  "balanced_accuracy", "per_class", "skipped")}))

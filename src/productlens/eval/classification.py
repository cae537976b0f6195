"""Classification metrics and the train-then-test evaluation behind ``productlens eval classify``.

One implementation of top-k accuracy, macro-F1 and per-class accuracy, shared by
tests, benchmarks and the command line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from productlens.data.labelled import LabelledSet, check_known, is_shopee, nothing_read, read_labelled
from productlens.types import ProductLensError

log = logging.getLogger(__name__)


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """top-1, top-5, macro-F1 (over the classes present in ``y``), balanced accuracy, per-class accuracy.

    ``probs``: N x C scores (higher is better); ``y``: N class indices into ``labels``.
    """
    from sklearn.metrics import f1_score

    probs, y = np.asarray(probs, np.float64), np.asarray(y, np.int64)
    n = len(y)
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "macro_f1": 0.0, "balanced_accuracy": 0.0, "per_class": {}}
    if np.isnan(probs).any():  # argmax would pick the NaN: a broken model scored as right
        raise ProductLensError(f"{int(np.isnan(probs).any(axis=1).sum())} of {n} rows of scores hold NaN")
    # rank of the true class, ties to the lower index as argmax gives them, so top-5 >= top-1 always
    true = probs[np.arange(n), y][:, None]
    rank = (probs > true).sum(axis=1) + ((probs == true) & (np.arange(probs.shape[1]) < y[:, None])).sum(axis=1)
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    per_class = {labels[c]: float((pred[y == c] == c).mean()) for c in present}
    return {
        "top1": float((pred == y).mean()),
        "top5": float((rank < 5).mean()),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "balanced_accuracy": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
    }


#: classes a confusion-matrix plot shows at most (about 2,400 px a side at 120 dpi)
MAX_PLOT_CLASSES = 100


def plot_confusion(y: np.ndarray, pred: np.ndarray, labels: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    """Write a row-normalised confusion-matrix PNG (matplotlib, imported here). With more than
    :data:`MAX_PLOT_CLASSES` classes, those with the most errors (made or received) are shown: a
    matrix of a thousand classes would be a 20,000-px picture that nobody can read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from productlens.eval.sheets import save_chart

    present = np.unique(np.concatenate([y, pred]))
    shown_of = ""
    if len(present) > MAX_PLOT_CLASSES:
        wrong = y != pred
        errors = np.bincount(np.concatenate([y[wrong], pred[wrong]]), minlength=int(present.max()) + 1)[present]
        keep = np.sort(present[np.argsort(-errors, kind="stable")[:MAX_PLOT_CLASSES]])
        inside = np.isin(y, keep) & np.isin(pred, keep)
        shown_of = f", the {MAX_PLOT_CLASSES} of {len(present)} classes with most errors"
        y, pred = y[inside], pred[inside]
        present = keep
    pos = {c: i for i, c in enumerate(present)}
    cm = np.zeros((len(present), len(present)))
    for t, p in zip(y, pred):
        cm[pos[t], pos[p]] += 1
    cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    title = (title or "confusion matrix (rows normalised)") + shown_of
    side = max(5.0, 0.18 * len(present) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    names = [str(labels[c])[:24] for c in present]
    ax.set_xticks(range(len(present)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(present)), names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_chart(fig, path, dpi=120)


def _check_test_read(test: LabelledSet, ok: np.ndarray, errors: list) -> None:
    """Refuse to score a test set none of whose images could be read (no figures on 0 images)."""
    if len(ok) == 0:
        raise ProductLensError(nothing_read(test, "test", errors))


def evaluate_classification(train: str | Path | LabelledSet, test: str | Path | LabelledSet, label: str, *,
                            fine: str | None = None, options=None, plot: str | Path | None = None,
                            progress: bool = True) -> dict[str, Any]:
    """Train on ``train`` and score on ``test`` at the ``label`` level.

    ``fine``: train on this finer column (its classes must each belong to one
    ``label`` class) and score ``label`` on the summed fine probabilities.
    Returns ``top1, top5, macro_f1, balanced_accuracy, per_class, classes, train,
    test, skipped, seconds`` (training and prediction, embedding included); with
    ``plot`` (a confusion-matrix PNG), ``plot_error`` when it could not be written.
    Raises :class:`ProductLensError` when no training or no test image could be read.
    """
    from productlens.pipeline.classify import train_classifier

    start = time.perf_counter()
    if plot:
        from productlens.eval.sheets import chart_path

        chart_path(plot)  # before the training
    if not isinstance(train, LabelledSet):
        train = read_labelled(train, label=fine or label, parents=[label] if fine else [])
    if not isinstance(test, LabelledSet):
        if is_shopee(Path(test)):  # read_labelled would read its train/ folder: training photos scored
            raise ProductLensError(f"{test}: a Shopee root's test.csv carries no true categories; give --test a "
                                   "labelled csv or a folder per category")
        test = read_labelled(test, label=label, skip_missing=True)  # a row with no photo: reported, not fatal
    shared = {str(it.image) for it in train.items} & {str(it.image) for it in test.items}
    if shared:  # a test photo that was trained on scores as if it were new
        log.warning("%d test photo(s) are training photos too (first %s): their scores are not a held-out measure",
                    len(shared), min(shared))
    level = label if fine else None
    known = train.parents.get(label) if fine else train.labels
    if known is not None:
        check_known(test, known)  # before the training (checked again against the trained classes)
    res = train_classifier(train, options=options, progress=progress)
    clf = res.classifier
    labels = clf.hierarchy.labels_of(level)
    check_known(test, labels)
    pred = clf.predict_batch(test.items, level=level, progress=progress, cache=not clf.own_backbone)
    _check_test_read(test, pred.ok, pred.errors)
    index = {v: i for i, v in enumerate(labels)}
    y = np.array([index[test.labels[i]] for i in pred.ok], np.int64)
    m = classification_metrics(pred.probs, y, labels)
    if plot:  # a chart that cannot be written costs the picture, not the figures
        try:
            plot_confusion(y, pred.probs.argmax(axis=1), labels, plot,
                           title=f"{label}: top-1 {m['top1']:.3f} on {len(y)} test images")
        except (ProductLensError, MemoryError, ValueError, OSError) as exc:  # matplotlib's own, too
            m["plot_error"] = str(exc) or type(exc).__name__
    m.update(classes=len(labels), train=len(train) - len(res.errors), test=int(len(y)),
             skipped=len(res.errors) + len(test.skipped) + len(pred.errors),
             seconds=round(time.perf_counter() - start, 1), temperature=clf.temperature,
             errors=[msg for _, _, msg in res.errors] + test.skipped + [msg for _, _, msg in pred.errors])
    return m


__all__ = ["classification_metrics", "evaluate_classification", "plot_confusion"]

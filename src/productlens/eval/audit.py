"""Audit training labels: probably-wrong labels and near-duplicates across classes.

Label issues follow confident learning (Northcutt et al., JAIR 2021): every
image gets out-of-fold class probabilities (heads trained on the other folds,
with the same views, noise filter and prediction views as a real model); the
per-class threshold ``t_j`` is the mean probability of class ``j`` over the
images labelled ``j``; an image labelled ``i`` is flagged when some other class
``j`` reaches its threshold (``p_j >= t_j``) and is the most probable such
class. Added to these: the images the head's small-loss noise filter leaves out
(:func:`~productlens.models.classifiers.head.likely_clean`, trained on every
image) whose out-of-fold prediction is another class, suggested as that class.
The two detectors miss different images: confident learning needs the right class
to clear its threshold, the filter needs the image's training loss to stand out.
Flags are ranked by the margin ``p_suggested - p_given``.

Near-duplicates: pairs of images with different labels whose whole-image
features have cosine similarity of at least ``threshold`` (exact nearest
neighbours with FAISS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from productlens.data.labelled import LabelledSet, check_readable, check_trainable
from productlens.types import ProductLensError


@dataclass
class Suspect:
    index: int
    image: str
    given: str
    suggested: str
    given_prob: float
    suggested_prob: float
    by: str = "confident learning"  # or "small loss", or both joined by " + "

    @property
    def margin(self) -> float:
        return self.suggested_prob - self.given_prob


@dataclass
class Duplicate:
    first: int
    second: int
    first_image: str
    second_image: str
    first_label: str
    second_label: str
    cosine: float


@dataclass
class AuditReport:
    suspects: list[Suspect]
    duplicates: list[Duplicate]
    errors: list = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    folds: int = 0  # the cross-validation folds used (at most the images of the smallest class)

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "seconds": round(self.seconds, 1), "folds": self.folds,
                "suspects": [dict(vars(s), margin=s.margin) for s in self.suspects],
                "duplicates": [vars(d) for d in self.duplicates],
                "skipped": [msg for _, _, msg in self.errors]}


def confident_issues(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of likely label errors (ranked, most certain first) and their suggested class."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, np.int64)
    n, c = probs.shape
    thresholds = np.full(c, np.inf)
    for j in np.unique(y):
        thresholds[j] = probs[y == j, j].mean()
    above = probs >= thresholds[None, :] - 1e-12
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(axis=1)
    flagged = above.any(axis=1) & (best != y)
    idx = np.flatnonzero(flagged)
    margin = probs[idx, best[idx]] - probs[idx, y[idx]]
    order = np.argsort(-margin, kind="stable")
    return idx[order], best[idx[order]]


def near_duplicates(x: np.ndarray, labels: list[str], threshold: float = 0.95, k: int = 10) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, i < j, of differently-labelled rows of unit vectors ``x`` with cosine >= threshold."""
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    if len(x) < 2:
        return []
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, nbrs = index.search(x, min(k + 1, len(x)))
    pairs = {}
    for i in range(len(x)):
        for s, j in zip(sims[i], nbrs[i]):
            if j < 0 or j == i or s < threshold or labels[i] == labels[j]:
                continue
            a, b = (i, int(j)) if i < j else (int(j), i)
            pairs[(a, b)] = max(pairs.get((a, b), -1.0), float(s))
    return sorted(((a, b, s) for (a, b), s in pairs.items()), key=lambda t: -t[2])


def check_folds(folds: int) -> None:
    """Refuse fewer than two cross-validation folds."""
    if folds < 2:
        raise ProductLensError(f"folds must be at least 2 (cross-validation), got {folds}")


def usable_folds(y: np.ndarray, folds: int) -> int:
    """``folds`` (at least 2), reduced to the images of the smallest class so each fold holds every class."""
    check_folds(folds)
    return max(2, min(folds, int(np.unique(y, return_counts=True)[1].min())))


def out_of_fold_probs(feats, hierarchy, options, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold fine-class probabilities of every image (stratified folds, see :func:`usable_folds`)."""
    from sklearn.model_selection import StratifiedKFold

    from productlens.models.classifiers.head import train_head
    from productlens.models.classifiers.model import prepare
    from productlens.pipeline.classify import n_train_views, view_lists
    from productlens.models.classifiers.calibration import view_probs

    check_folds(folds)
    _, tta_pos = view_lists(options)
    n_views = n_train_views(options)
    y = feats.y
    n_classes = len(hierarchy.labels)
    folds = usable_folds(y, folds)
    probs = np.zeros((len(y), n_classes), np.float32)
    parents = [lv.parent for lv in hierarchy.levels]
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        mean = feats.x[:, fit].astype(np.float32).mean(axis=(0, 1))
        head = train_head(prepare(feats.x[:n_views, fit], mean), y[fit], n_classes, options.head, parents=parents)
        probs[held] = view_probs(head.logits(prepare(feats.x[tta_pos][:, held], mean)))
    return probs


def small_loss_issues(feats, hierarchy, options, probs: np.ndarray) -> np.ndarray:
    """Images the noise filter leaves out (head trained on all images) whose out-of-fold top class is another."""
    from productlens.models.classifiers.head import likely_clean
    from productlens.models.classifiers.model import prepare
    from productlens.pipeline.classify import n_train_views

    x = feats.x[:n_train_views(options)]
    keep = likely_clean(prepare(x, x.astype(np.float32).mean(axis=(0, 1))), feats.y, len(hierarchy.labels),
                        options.head)
    return np.flatnonzero(~keep & (probs.argmax(axis=1) != feats.y))


def audit_labels(data: LabelledSet, options=None, *, folds: int = 5, threshold: float = 0.95,
                 progress: bool = True) -> AuditReport:
    """Flag probably-wrong labels (ranked, with a suggestion) and near-duplicates across classes.

    ``folds`` (at least 2) is reduced to the readable images of the smallest class; the
    report's ``folds`` is the number used. A class left with fewer than two readable images
    is an error naming it.
    """
    from productlens.models.classifiers.hierarchy import build_hierarchy
    from productlens.pipeline.classify import TrainOptions, training_features

    start = time.perf_counter()
    options = options or TrainOptions()
    check_folds(folds)  # before the long work
    check_trainable(data)
    hierarchy = build_hierarchy(data.label, data.labels, {})
    feats = training_features(data, hierarchy, options, progress=progress)
    check_readable(data, feats.ok, feats.errors)
    probs = out_of_fold_probs(feats, hierarchy, options, folds=folds)
    idx, suggested = confident_issues(probs, feats.y)
    flags = {int(i): (int(s), "confident learning") for i, s in zip(idx, suggested)}
    for i in small_loss_issues(feats, hierarchy, options, probs):
        s = int(probs[i].argmax())
        flags[i] = (flags[i][0], flags[i][1] + " + small loss") if i in flags else (s, "small loss")
    names = hierarchy.labels
    suspects = [Suspect(int(feats.ok[i]), data.items[feats.ok[i]].image, names[feats.y[i]], names[s],
                        float(probs[i, feats.y[i]]), float(probs[i, s]), by) for i, (s, by) in flags.items()]
    suspects.sort(key=lambda t: -t.margin)
    ok_labels = [data.labels[i] for i in feats.ok]
    dups = [Duplicate(int(feats.ok[a]), int(feats.ok[b]), data.items[feats.ok[a]].image,
                      data.items[feats.ok[b]].image, ok_labels[a], ok_labels[b], s)
            for a, b, s in near_duplicates(feats.x[0].astype(np.float32), ok_labels, threshold)]
    return AuditReport(suspects, dups, feats.errors, len(feats.ok), time.perf_counter() - start,
                       usable_folds(feats.y, folds))


def plot_audit(report: AuditReport, path: str | Path, *, suspects: int = 30, pairs: int = 9) -> Path:
    """A contact sheet (PNG) of the first ``suspects`` flagged photos, captioned given -> suggested
    label with both probabilities, then the first ``pairs`` near-duplicate pairs across classes."""
    from productlens.eval.sheets import FLAG, WRONG, Tile, contact_sheet, placeholder

    tiles = [Tile(s.image, f"#{r} {s.given} -> {s.suggested}\np {s.given_prob:.2f} / {s.suggested_prob:.2f}",
                  border=FLAG) for r, s in enumerate(report.suspects[:suspects], start=1)]
    rows = [tiles[i:i + 6] for i in range(0, len(tiles), 6)]
    twins = []
    for d in report.duplicates[:pairs]:
        twins += [Tile(d.first_image, f"{d.first_label}\ncosine {d.cosine:.3f}", border=WRONG),
                  Tile(d.second_image, f"{d.second_label}\n{Path(d.second_image).name}", border=WRONG)]
    rows += [twins[i:i + 6] for i in range(0, len(twins), 6)]
    title = (f"{len(report.suspects)} of {report.images} images probably mislabelled (the first "
             f"{min(len(report.suspects), suspects)}: given -> suggested, p given / p suggested)"
             + (f"; then {min(len(report.duplicates), pairs)} near-duplicate pairs across classes"
                if report.duplicates else ""))
    return contact_sheet(rows or placeholder("nothing flagged"), path, title=title)


__all__ = ["AuditReport", "Duplicate", "Suspect", "audit_labels", "check_folds", "confident_issues",
           "near_duplicates", "out_of_fold_probs", "plot_audit", "small_loss_issues", "usable_folds"]

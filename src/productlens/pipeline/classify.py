"""Train a category classifier: features under several views (cached), a head, calibration.

>>> data = read_labelled("train.csv", label="category_id")       # doctest: +SKIP
>>> res = train_classifier(data, "model/")                         # doctest: +SKIP
>>> load_classifier("model/").predict("photo.jpg", k=4)            # doctest: +SKIP

Steps: embed every training photo under the training views (by default the
whole photo and six crops, through the feature cache); hold out a contiguous
block of ``holdout`` of each class's photos (in file-name order: photo sequences
stay on one side); fit the head on the rest and the temperature on the held-out
photos (with the prediction views);
then fit the head again on all photos and keep that temperature.

With ``finetune`` the backbone's last blocks are first fine-tuned on the
photos outside the calibration hold-out (:mod:`productlens.models.finetune`), so
that the temperature is still fitted on photos the model never trained on; the
model folder then holds the fine-tuned backbone (``backbone/model.onnx``).
It trains deeper than fine-tuning for search (``CLASSIFIER_RECIPES`` in
:mod:`productlens.models.finetune.train`), and the frozen other bundled
backbones are joined to it (``TrainOptions.companions``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from productlens.config import CLASSIFIER_EMBEDDER, DEFAULT_EMBEDDER
from productlens.data.labelled import LabelledSet, check_readable, check_trainable
from productlens.fileio import check_replaceable
from productlens.models.classifiers.head import HeadConfig, train_head
from productlens.models.classifiers.hierarchy import Hierarchy, build_hierarchy
from productlens.models.classifiers.model import Classifier, prepare
from productlens.types import ProductLensError

log = logging.getLogger(__name__)


#: The fine-tuned backbone inside a classifier folder.
BACKBONE_DIR = "backbone"

#: Training sets from this many images on skip the refit after calibration (see TrainOptions).
REFIT_BELOW = 50_000

#: The training and prediction views of a classifier (see TrainOptions).
DEFAULT_VIEWS = "regions"


@dataclass
class TrainOptions:
    """How to train: backbone, view sets (see :func:`~productlens.data.augment.view_set`), head, hold-out.

    The hold-out is ``holdout`` of each class, at most ``max_holdout`` images in all
    (enough to fit one temperature). ``refit``: fit the head again on every image
    after calibration; by default (None) only below ``REFIT_BELOW`` images: on a
    large set the refit doubles the time to add a few percent of the data.

    Views: each training photo is embedded under every view of ``views`` (each
    view a training sample of the head), and a prediction averages the
    probabilities over the views of ``tta``. Both default to ``regions`` (the
    whole photo, centre crops 0.75 and 0.5, four corner crops 0.6), chosen on a
    train-only split that holds out a photo session per product
    (``benchmarks/dev_classify.py --split session``): top-1 0.673 with 12 training
    views of crops 0.8 and flips and 4 prediction views, 0.750 with ``regions``
    (fine-tuned: 0.706 and 0.783). A product that fills part of a shopper's photo
    is framed by some of the crops.

    Backbone: ``embedder``, by default (None) ``CLASSIFIER_EMBEDDER``, the three
    bundled backbones concatenated (:mod:`~productlens.models.embedders.ensemble`):
    on the same session split 0.787 against 0.750 with ``efficientnet-lite2``
    alone (block split 0.997 against 0.990), at about twice its model time
    (24.8 against 11.5 ms an image). With ``finetune`` the default is
    ``efficientnet-lite2`` (an ensemble is not fine-tuned), and ``companions``
    joins the other bundled backbones, frozen, to the fine-tuned one
    (:func:`~productlens.models.embedders.joined.joined`, on every view): on the
    session split 0.828 against 0.800 for the fine-tuned backbone alone.
    """

    embedder: str | None = None  # None: CLASSIFIER_EMBEDDER, or DEFAULT_EMBEDDER with finetune
    views: str | None = None    # None: DEFAULT_VIEWS
    tta: str | None = None      # None: DEFAULT_VIEWS
    head: HeadConfig = field(default_factory=HeadConfig)
    holdout: float = 0.15
    max_holdout: int = 5000
    refit: bool | None = None
    cache: bool = True
    finetune: bool = False
    companions: bool = True     # with finetune: join the other bundled backbones, frozen

    def __post_init__(self) -> None:
        if not 0 < self.holdout <= 0.5:
            raise ProductLensError(f"the calibration hold-out is a share of each class in (0, 0.5], got {self.holdout}")
        user_file = Path(self.embedder[5:]).expanduser() if self.embedder and self.embedder.startswith("onnx:") \
            else None
        if user_file is not None and not user_file.is_absolute():
            # a relative onnx: name inside a classifier folder means the folder's own backbone: a user's
            # model is named from where they stand (the training ran, then the saved model failed to load)
            self.embedder = f"onnx:{user_file.resolve()}"

    @property
    def backbone(self) -> str:
        """The embedder's name: ``embedder``, else the ensemble of the three bundled backbones,
        or ``efficientnet-lite2`` (``DEFAULT_EMBEDDER``) when fine-tuning (an ensemble cannot be)."""
        return self.embedder or (DEFAULT_EMBEDDER if self.finetune else CLASSIFIER_EMBEDDER)

    @property
    def train_views(self) -> str:
        """The training view set."""
        return self.views or DEFAULT_VIEWS

    @property
    def prediction_views(self) -> str:
        """The view set whose probabilities a prediction averages."""
        return self.tta or DEFAULT_VIEWS

    def to_json(self) -> dict[str, Any]:
        return {"embedder": self.backbone, "views": self.train_views, "tta": self.prediction_views,
                "holdout": self.holdout, "max_holdout": self.max_holdout, "refit": self.refit,
                "finetune": self.finetune, "companions": self.companions, "head": self.head.to_json()}


@dataclass
class TrainResult:
    classifier: Classifier
    errors: list
    seconds: float


@dataclass
class Features:
    """Training features: ``x`` (V x N x D) of the readable items, their fine class ``y``."""

    x: np.ndarray
    y: np.ndarray
    ok: np.ndarray
    errors: list
    view_keys: list[str]


def view_lists(options: TrainOptions) -> tuple[list, list[int]]:
    """The union of training and prediction views, and the positions of the prediction views in it."""
    from productlens.data.augment import view_set

    train, tta = view_set(options.train_views), view_set(options.prediction_views)
    union = list(train) + [v for v in tta if v not in train]
    return union, [union.index(v) for v in tta]


def training_features(data: LabelledSet, hierarchy: Hierarchy, options: TrainOptions,
                      progress: bool = True, embedder=None, cache: bool = True) -> Features:
    """Embed ``data`` under the union of the training and prediction views (cached unless ``cache`` is False)."""
    from productlens.models.embedders import get_embedder
    from productlens.pipeline.features_cache import embed_views

    views, _ = view_lists(options)
    emb = embedder or get_embedder(options.backbone)
    feats = embed_views(emb, data.items, views, cache=options.cache and cache, progress=progress)
    index = {v: i for i, v in enumerate(hierarchy.labels)}
    y = np.array([index[data.labels[i]] for i in feats.ok], np.int64)
    return Features(feats.vectors, y, feats.ok, feats.errors, [v.key for v in views])


def block_holdout(images: list[str], y: np.ndarray, share: float, min_class: int = 4,
                  seed: int = 0) -> np.ndarray:
    """Boolean mask: a contiguous block of ``share`` of each class's images in file-name order.

    The block starts at a random place (wrapping round), not at the end: photo
    sequences stay on one side, and images whose names sort apart from their
    class (a mislabelled photo keeps the path of its true class) are held out no
    more often than the others. Classes with fewer than ``min_class`` images are not held out.
    """
    held = np.zeros(len(y), bool)
    if share <= 0:
        return held
    rng = np.random.default_rng(seed)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < min_class:
            continue
        idx = idx[np.argsort([images[i] for i in idx], kind="stable")]
        n = max(1, int(round(share * len(idx))))
        start = int(rng.integers(len(idx)))
        held[idx[(start + np.arange(n)) % len(idx)]] = True
    return held


def holdout_share(options: TrainOptions, n: int) -> float:
    """The share of each class held out for calibration."""
    return min(options.holdout, options.max_holdout / max(1, n))


def fit_on_features(feats: Features, hierarchy: Hierarchy, options: TrainOptions, images: list[str],
                    progress: bool = False, fingerprint: str = "", held: np.ndarray | None = None,
                    embedder: str | None = None,
                    companions: Sequence[str] = ()) -> tuple[Classifier, dict[str, Any]]:
    """Fit head and temperature on precomputed features; returns the classifier and held-out metrics.

    ``images``: the name of every item (the hold-out takes a block of each class in name
    order); ``fingerprint``: the backbone's model fingerprint, recorded in the classifier;
    ``held``: the hold-out mask over ``feats`` when it was chosen beforehand (fine-tuning);
    ``embedder``: the name recorded in the classifier (default ``options.backbone``);
    ``companions``: the frozen backbones joined to it (recorded, and joined again when loaded).
    """
    from productlens.models.classifiers.calibration import (expected_calibration_error, fit_temperature,
                                                            nll, view_probs)

    _, tta_pos = view_lists(options)
    parents = [lv.parent for lv in hierarchy.levels]
    n_classes = len(hierarchy.labels)
    if held is None:
        held = block_holdout([images[i] for i in feats.ok], feats.y, holdout_share(options, len(feats.y)))
    metrics: dict[str, Any] = {"train_images": int(len(feats.y)), "holdout_images": int(held.sum())}
    covered = len(np.unique(feats.y[held]))
    if options.holdout > 0 and covered < max(1, n_classes // 2):  # said: the probabilities rest on few classes
        log.warning("the temperature is fitted on held-out photos of %d of %d classes (only classes with 4 photos "
                    "or more give some)%s: the probabilities are calibrated on those alone", covered, n_classes,
                    "; with none it stays 1.0, uncalibrated" if not covered else "")
    temperature = 1.0
    xtrain = feats.x[:n_train_views(options)]  # the union starts with the training views
    if held.any():
        fit = ~held
        mean = feats.x[:, fit].astype(np.float32).mean(axis=(0, 1))
        head = train_head(prepare(xtrain[:, fit], mean), feats.y[fit], n_classes, options.head,
                          parents=parents, progress=progress)
        logits = head.logits(prepare(feats.x[tta_pos][:, held], mean))
        yh = feats.y[held]
        noise = float((~head.kept).mean()) if head.kept is not None else 0.0  # the noise filter's estimate
        temperature = fit_temperature(logits, yh, noise=noise)
        metrics["estimated_noise"] = noise
        p1, pt = view_probs(logits, 1.0), view_probs(logits, temperature)
        metrics.update(holdout_top1=float((pt.argmax(1) == yh).mean()), holdout_nll_t1=nll(p1, yh),
                       holdout_nll=nll(pt, yh), holdout_ece_t1=expected_calibration_error(p1, yh),
                       holdout_ece=expected_calibration_error(pt, yh), temperature=temperature)
        refit = options.refit if options.refit is not None else len(feats.y) < REFIT_BELOW
        if not refit:
            clf = _classifier(head, mean, hierarchy, temperature, feats, options, fingerprint, embedder, companions)
            return clf, metrics
    mean = feats.x.astype(np.float32).mean(axis=(0, 1))
    head = train_head(prepare(xtrain, mean), feats.y, n_classes, options.head, parents=parents,
                      progress=progress)
    if head.kept is not None:
        metrics["noise_filter_dropped"] = int((~head.kept).sum())
    clf = _classifier(head, mean, hierarchy, temperature, feats, options, fingerprint, embedder, companions)
    return clf, metrics


def n_train_views(options: TrainOptions) -> int:
    """How many of the features' views (the first ones) are training views."""
    from productlens.data.augment import view_set

    return len(view_set(options.train_views))


def _classifier(head, mean, hierarchy, temperature, feats: Features, options: TrainOptions,
                fingerprint: str, embedder: str | None, companions: Sequence[str]) -> Classifier:
    _, tta_pos = view_lists(options)
    head.kept = None
    return Classifier(embedder or options.backbone, head, mean, hierarchy, temperature=temperature,
                      views=[feats.view_keys[p] for p in tta_pos], config={"training": options.to_json()},
                      fingerprint=fingerprint, companions=companions)


def train_classifier(data: LabelledSet, out: str | Path | None = None, options: TrainOptions | None = None,
                     *, progress: bool = True) -> TrainResult:
    """Train a classifier on ``data`` (fine level = ``data.label``, coarser levels = ``data.parents``).

    Writes the model folder to ``out`` when given. Unreadable images are skipped
    and returned in ``errors``; a class with fewer than two readable images (none included) is an
    error naming it, and so is a set with no readable image.
    With ``options.finetune`` (a backbone :func:`~productlens.models.finetune.supports`;
    others are used frozen, with a warning) the classifier carries its fine-tuned
    backbone: in a temporary folder until it is saved.
    """
    options = options or TrainOptions()
    start = time.perf_counter()
    check_trainable(data)
    if out is not None:
        check_replaceable(out)  # before the training, not after it
    hierarchy = build_hierarchy(data.label, data.labels, data.parents)
    from productlens.models.embedders import get_embedder
    from productlens.models.embedders.joined import companions_for, joined
    from productlens.pipeline.features_cache import model_fingerprint

    images = [it.image for it in data.items]
    name, main, held, root, tuned, companions = options.backbone, None, None, None, {}, []
    if options.finetune:
        from productlens.models.finetune import supports

        if supports(options.backbone):
            _check_headers(data)  # minutes of fine-tuning would come before the check on the decoded photos
            root, main, held, tuned = _finetuned_backbone(data, hierarchy, options, progress)
            name = f"onnx:{BACKBONE_DIR}/{main.onnx_path.name}"  # relative to the classifier's folder
            if options.companions:  # every backbone fine-tuning supports is a bundled one
                companions = companions_for(options.backbone)
        else:
            log.warning("%s cannot be fine-tuned here; using it frozen", options.backbone)
    main = main or get_embedder(options.backbone)
    emb = joined(main, companions)
    # a fine-tuned backbone is used by this classifier only: its features are not worth caching
    feats = training_features(data, hierarchy, options, progress=progress, embedder=emb, cache=root is None)
    check_readable(data, feats.ok, feats.errors)  # a class whose photos are all unreadable is not kept
    clf, metrics = fit_on_features(feats, hierarchy, options, images, progress,
                                   fingerprint=model_fingerprint(main), embedder=name,
                                   held=None if held is None else held[feats.ok], companions=companions)
    clf.config["preprocess"] = main.preprocess.to_json()  # checked when the classifier loads its backbone
    if root is not None:
        clf.attach_backbone(root, emb)
        metrics["finetune"] = tuned
    seconds = time.perf_counter() - start
    metrics.update(skipped_images=len(feats.errors), seconds=round(seconds, 1),
                   classes=len(hierarchy.labels), source=data.source, label=data.label)
    clf.metrics = metrics
    if out is not None:
        clf.save(out)
    return TrainResult(clf, feats.errors, seconds)


def _check_headers(data: LabelledSet) -> None:
    """:func:`check_readable` on the image headers alone (a second or two for thousands of photos):
    missing, empty and non-image files, and the classes they would leave short, are named up front."""
    from productlens.data.images import image_size
    from productlens.types import ImageError

    ok, errors = [], []
    for i, it in enumerate(data.items):
        try:
            image_size(it.image)
            ok.append(i)
        except ImageError as exc:
            errors.append((i, it.image, str(exc)))
    check_readable(data, ok, errors)


def _finetuned_backbone(data: LabelledSet, hierarchy: Hierarchy, options: TrainOptions, progress: bool):
    """Fine-tune on the photos outside the calibration hold-out, into a temporary folder.

    Returns ``(folder, embedder, held, metrics)``: ``held`` marks the hold-out among all of ``data``.
    """
    import shutil
    import tempfile
    import weakref

    from productlens.models.embedders import create_embedder
    from productlens.models.finetune import FinetuneConfig, finetune_backbone

    index = {v: i for i, v in enumerate(hierarchy.labels)}
    y = np.array([index[v] for v in data.labels], np.int64)
    held = block_holdout([it.image for it in data.items], y, holdout_share(options, len(y)))
    fit = np.flatnonzero(~held)
    dropped = _suspect_labels(data, fit, y, hierarchy, options, progress) if options.head.noise_filter else []
    fit = np.setdiff1d(fit, dropped)
    root = Path(tempfile.mkdtemp(prefix="productlens-classifier-"))
    try:
        res = finetune_backbone([data.items[i] for i in fit], [data.labels[i] for i in fit], root / BACKBONE_DIR,
                                FinetuneConfig.for_classifier(options.backbone),
                                progress=progress)
        emb = create_embedder(res.embedder_name)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    weakref.finalize(emb, shutil.rmtree, root, True)  # removed with the last user of the model
    return root, emb, held, dict(res.metrics, left_out_as_noisy=len(dropped))


def _suspect_labels(data: LabelledSet, fit: np.ndarray, y: np.ndarray, hierarchy: Hierarchy,
                    options: TrainOptions, progress: bool) -> np.ndarray:
    """Indices (into ``data``) among ``fit`` that the head's noise filter, run on the frozen
    backbone's features (whole image and mirror, cached), would leave out: fine-tuning skips
    them, so the backbone does not learn flipped labels."""
    from productlens.data.augment import view_set
    from productlens.models.classifiers.head import likely_clean
    from productlens.models.classifiers.model import prepare
    from productlens.models.embedders import get_embedder
    from productlens.pipeline.features_cache import embed_views

    feats = embed_views(get_embedder(options.backbone), [data.items[i] for i in fit], view_set("flip"),
                        cache=options.cache, progress=progress)
    if len(feats.ok) < 2:
        return np.zeros(0, np.int64)
    x = prepare(feats.vectors, feats.vectors.astype(np.float32).mean(axis=(0, 1)))
    keep = likely_clean(x, y[fit][feats.ok], len(hierarchy.labels), options.head,
                        parents=[lv.parent for lv in hierarchy.levels])
    return fit[feats.ok][~keep]


__all__ = ["Features", "TrainOptions", "TrainResult", "block_holdout", "fit_on_features",
           "n_train_views", "train_classifier", "training_features", "view_lists"]

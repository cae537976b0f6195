"""COCO detection scoring with the maintained scorer (pycocotools' COCOeval).

``coco_map(data, predictions)`` scores detections of the images of ``data``
(a :class:`~productlens.data.coco.CocoSet`) and returns mAP@0.5, mAP@0.5:0.95
and per-class AP@0.5 (classes with boxes in ``data``; COCO averages over them).
``plot_per_class_ap`` and ``plot_examples`` draw the result for people to look at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from productlens.data.coco import CocoSet
from productlens.models.detectors.runtime import Detection, Detector
from productlens.progress import bar_disable

if TYPE_CHECKING:
    from productlens.pipeline.detect_train import DetectTrainOptions


def _coco_dict(data: CocoSet) -> dict:
    """The ground truth for pycocotools; crowd regions go in as ``iscrowd: 1``, which the scorer
    ignores (a detection there is neither right nor wrong)."""
    images, anns = [], []
    for im in data.images:
        images.append({"id": im.id, "width": im.width, "height": im.height, "file_name": str(im.path)})
        for crowd, boxes, labels in ((0, im.boxes, im.labels), (1, im.crowd, im.crowd_labels)):
            for b, lab in zip(boxes, labels):
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                anns.append({"id": len(anns) + 1, "image_id": im.id, "category_id": data.categories[lab]["id"],
                             "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": crowd})
    return {"images": images, "annotations": anns, "categories": data.categories}


def coco_map(data: CocoSet, predictions: dict[int, Sequence[Detection]]) -> dict:
    """Score ``predictions`` (image id -> detections whose ``label`` indexes ``data.categories``).

    Images missing from ``predictions`` count as having no detections.
    Returns ``map50``, ``map``, ``per_class`` (name -> AP@0.5, for classes with boxes).
    ProductLensError when ``data`` has no boxes (mAP is undefined there).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from productlens.types import ProductLensError

    if not data.n_boxes:  # COCO averages over classes with boxes: with none, mAP is undefined, not 0
        raise ProductLensError(f"{data.path}: the test set has no boxes to score")
    gt = COCO()
    gt.dataset = _coco_dict(data)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = [{"image_id": iid, "category_id": data.categories[d.label]["id"], "bbox": list(d.box.as_tuple()),
             "score": float(d.score)} for iid, ds in predictions.items() for d in ds]
    if not dets:  # nothing detected: AP 0 for every class with boxes
        with_boxes = sorted({int(lab) for im in data.images for lab in im.labels})
        return {"map50": 0.0, "map": 0.0, "per_class": {data.names[lab]: 0.0 for lab in with_boxes}}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [im.id for im in data.images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # T x R x K x A x M
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[0, :, k, 0, -1]
        if (p > -1).any():
            name = next(c["name"] for c in data.categories if c["id"] == cid)
            per_class[name] = float(p[p > -1].mean())
    return {"map50": float(max(ev.stats[1], 0.0)), "map": float(max(ev.stats[0], 0.0)), "per_class": per_class}


def predict_set(detector: Detector, data: CocoSet, *, progress: bool = True
                ) -> tuple[dict[int, list[Detection]], list[tuple[str, str]]]:
    """Run ``detector`` on every image of ``data``; unreadable images are reported, not scored as empty."""
    from tqdm import tqdm

    from productlens.data.coco import load_det_image
    from productlens.types import ImageError

    preds, errors = {}, []
    for im in tqdm(data.images, desc="detect", unit="image", disable=bar_disable(progress)):
        try:
            img = load_det_image(im)
        except ImageError as exc:
            errors.append((str(im.path), str(exc)))
            continue
        if not (im.width and im.height):
            im.width, im.height = img.size
        preds[im.id] = detector.detect(img, score_threshold=0.01)
    return preds, errors


def _relabelled(im, to: np.ndarray):
    """``im`` with its labels mapped through ``to``; crowd regions of a class that maps nowhere (-1) are dropped."""
    crowd = to[im.crowd_labels]
    keep = crowd >= 0
    return dataclasses.replace(im, labels=to[im.labels], crowd=im.crowd[keep], crowd_labels=crowd[keep])


def match_categories(test: CocoSet, names: Sequence[str]) -> tuple[CocoSet, list[str]]:
    """``test`` with its labels mapped by category NAME onto a detector's tags ``names`` (its
    categories become ``names``, ids 1..C), and notes for the user.

    A detector knows its classes by name, not by the training file's ids: test ids may differ
    from the training set's (renumbered, or the same ids on other names). ProductLensError when a
    test category that has boxes is not one of ``names`` (its boxes could never be found; scoring
    without them would flatter the detector) or names more than one of the detector's classes.
    Test categories without boxes that the detector does not know are ignored (noted).
    """
    from productlens.types import ProductLensError

    index: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        index.setdefault(str(n), []).append(i)
    boxes = np.bincount(np.concatenate([im.labels for im in test.images] + [np.zeros(0, np.int64)]),
                        minlength=len(test.categories))
    unknown = [(c, int(boxes[k])) for k, c in enumerate(test.categories) if c["name"] not in index]
    if any(n for _, n in unknown):
        shown = [f"{c['name']!r} (id {c['id']}, {n} box{'es' if n != 1 else ''})" for c, n in unknown if n]
        raise ProductLensError(
            f"{test.path}: test categories the detector was not trained on: {', '.join(shown[:8])}"
            + (", ..." if len(shown) > 8 else "") + f"; its classes: {', '.join(map(str, names))} (categories "
            "are matched by name; rename them, or drop their boxes from the test set)")
    twice = [c["name"] for k, c in enumerate(test.categories) if boxes[k] and len(index.get(c["name"], [])) > 1]
    if twice:
        raise ProductLensError(f"{test.path}: category {twice[0]!r} names {len(index[twice[0]])} of the detector's "
                               "classes; categories are matched by name, so they must be unique")
    to = np.array([index[c["name"]][0] if c["name"] in index else -1 for c in test.categories], np.int64)
    images = [_relabelled(im, to) for im in test.images]
    notes = []
    if unknown:
        notes.append(f"{test.path}: categories without boxes that the detector does not know, ignored: "
                     + ", ".join(repr(c["name"]) for c, _ in unknown[:8]) + (", ..." if len(unknown) > 8 else ""))
    return CocoSet(test.path, [{"id": i + 1, "name": str(n)} for i, n in enumerate(names)], images,
                   list(test.problems)), notes


def plot_per_class_ap(per_class: dict[str, float], boxes: dict[str, int], path: str | Path, *,
                      title: str = "") -> Path:
    """A bar chart (PNG) of AP@0.5 per class, best first, each labelled with its test boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from productlens.eval.sheets import save_chart

    names = sorted(per_class, key=lambda n: (-per_class[n], n))
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * len(names)))
    y = range(len(names))
    ax.barh(y, [per_class[n] for n in names], color="#3a7bd5")
    ax.set_yticks(list(y), [f"{n} ({boxes.get(n, 0)})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP@0.5 (test boxes of the class in brackets)")
    ax.set_title(title or "AP@0.5 per class", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_chart(fig, path, dpi=110)


def plot_examples(data: CocoSet, predictions: dict[int, Sequence[Detection]], path: str | Path, *,
                  photos: int = 8, min_score: float = 0.3) -> Path:
    """A contact sheet of ``photos`` test photos (an even sample), each as a pair: its ground-truth
    boxes, then the detections scoring at least ``min_score``, one tag per object."""
    from productlens.data.coco import load_det_image
    from productlens.eval.sheets import Tile, contact_sheet, placeholder
    from productlens.models.detectors.runtime import one_per_object
    from productlens.pipeline.detect import draw_detections
    from productlens.types import Box, ImageError

    ims = [im for im in data.images if im.id in predictions]
    ims = [ims[int(j)] for j in sorted(set(np.linspace(0, len(ims) - 1, min(photos, len(ims))).round()))] \
        if ims else []
    tiles = []
    for im in ims:
        try:
            img = load_det_image(im)
        except ImageError as exc:
            tiles += [Tile(im.path, f"{im.path.name}\nunreadable: {exc}")] * 2
            continue
        truth = [Detection(Box(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])),
                           data.names[int(lab)], 1.0, int(lab)) for b, lab in zip(im.boxes, im.labels)]
        shown = one_per_object([d for d in predictions[im.id] if d.score >= min_score])
        tiles += [Tile(draw_detections(img, truth, min_score=0, scores=False),
                       f"{im.path.name}\nground truth: {len(truth)} boxes"),
                  Tile(draw_detections(img, shown, min_score=min_score),
                       f"{im.path.name}\ndetected (score >= {min_score:g}): {len(shown)}")]
    rows = [tiles[i:i + 8] for i in range(0, len(tiles), 8)] or placeholder("no test photos")
    return contact_sheet(rows, path, size=220, title="test photos: ground truth, then detections")


def examples_path(plot: str | Path) -> Path:
    """Where ``eval detect --plot CHART.png`` writes its sheet of example photos."""
    plot = Path(plot)
    return plot.with_name(f"{plot.stem}_examples{plot.suffix}")


def evaluate_detection(train_json: str | Path, test_json: str | Path, opts: DetectTrainOptions | None = None, *,
                       model_out: str | Path | None = None, progress: bool = True,
                       plot: str | Path | None = None) -> dict:
    """Train a detector on ``train_json``, detect on ``test_json``'s images and score them (COCO protocol).

    The test set's categories are matched to the detector's by name (:func:`match_categories`);
    a test set without boxes, or with boxes of a class the detector does not know, is an error
    (raised before the training).
    Test images that cannot be read are left out of the score and counted in
    ``skipped``. ``model_out``: keep the trained detector there (else a temporary
    folder). Keys: ``map50``, ``map``, ``per_class``, ``classes`` (classes with
    test boxes, the ones COCO averages over), ``train``, ``test``, ``skipped``,
    ``problems``, ``seconds`` (training included), ``plots`` (the files written). ``plot``:
    write a chart of AP@0.5 per class there (PNG) and a sheet of test photos beside it
    (:func:`examples_path`); what cannot be drawn is told in ``problems``.
    """
    import tempfile
    import time

    from productlens.data.coco import read_coco
    from productlens.models.detectors import load_detector
    from productlens.pipeline.detect_train import train_detector

    t0 = time.perf_counter()
    if plot:
        from productlens.eval.sheets import chart_path, sheet_path

        sheet_path(examples_path(chart_path(plot)))  # both pictures, before the training
    from productlens.types import ProductLensError

    train = read_coco(train_json)
    raw = read_coco(test_json)  # its own categories, matched to the detector's by name
    test, notes = match_categories(raw, train.names)  # before the training: minutes
    if not test.n_boxes:
        raise ProductLensError(f"{test_json}: the test set has no boxes to score (mAP is undefined without them)")
    train_ids = {c["name"]: c["id"] for c in train.categories}
    moved = [f"{c['name']!r} {c['id']} -> {train_ids[c['name']]}" for c in raw.categories
             if train_ids.get(c["name"], c["id"]) != c["id"]]
    renumbered = [f"{raw.path}: category ids differ from {train.path.name}'s; matched by name: "
                  + ", ".join(moved[:8]) + (", ..." if len(moved) > 8 else "")] if moved else []
    untrained = _untrained(train, test)
    with tempfile.TemporaryDirectory(prefix="productlens-detect-") as tmp:
        folder = Path(model_out) if model_out else Path(tmp) / "detector"
        fit = train_detector(train, folder, opts, progress=progress)
        detector = load_detector(folder)
        if list(detector.labels) != train.names:  # the detector's tags are what its label indexes mean
            test, notes = match_categories(raw, detector.labels)
        preds, errors = predict_set(detector, test, progress=progress)
    bad = {p for p, _ in errors}
    scored = CocoSet(test.path, test.categories, [im for im in test.images if str(im.path) not in bad])
    if not scored.n_boxes:
        raise ProductLensError(f"{test_json}: the test set has no boxes to score: none of its photos with boxes "
                               f"could be read ({len(errors)} skipped, e.g. {errors[0][1]})")
    m = coco_map(scored, preds)
    m.update(classes=len(m["per_class"]), train=fit["images"], test=len(scored.images),
             skipped=len(fit["skipped"]) + len(errors),
             problems=[f"train: {p}" for p in train.problems]
             + [f"test: {p}" for p in test.problems + notes + renumbered + untrained]
             + [f"test image skipped: {e}" for _, e in errors],
             seconds=round(time.perf_counter() - t0, 1))
    m["plots"] = _plots(m, scored, preds, plot, Path(test_json).name) if plot else []
    return m


def _untrained(train: CocoSet, test: CocoSet) -> list[str]:
    """A note naming the test classes with boxes that the training set has no box of (they are scored,
    as COCO does, and likely near AP 0: the detector was never shown one). ``test`` is matched by name."""
    trained = {train.names[int(lab)] for im in train.images for lab in im.labels}
    tested = {test.names[int(lab)] for im in test.images for lab in im.labels}
    missing = sorted(tested - trained)
    if not missing:
        return []
    return [f"{test.path}: {len(missing)} class(es) with test boxes but no training box, scored all the same: "
            + ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")]


def _plots(m: dict, scored: CocoSet, preds: dict[int, list[Detection]], plot: str | Path, name: str) -> list[Path]:
    """``evaluate_detection``'s pictures; what cannot be drawn or written joins ``m["problems"]``."""
    from productlens.types import ProductLensError

    written = []
    try:
        if m["per_class"]:
            counts = {n: int(sum((im.labels == i).sum() for im in scored.images)) for i, n in enumerate(scored.names)}
            written.append(plot_per_class_ap(m["per_class"], counts, plot, title=f"{name}: mAP@0.5 {m['map50']:.3f} "
                                                                              f"over {len(m['per_class'])} classes"))
        else:
            m["problems"].append(f"{name} has no boxes to score: no AP chart")
        written.append(plot_examples(scored, preds, examples_path(plot)))
    except ProductLensError as exc:
        m["problems"].append(str(exc))
    return written

"""COCO detection scoring with the maintained scorer (pycocotools' COCOeval).

``coco_map(data, predictions)`` scores detections of the images of ``data``
(a :class:`~productlens.data.coco.CocoSet`) and returns mAP@0.5, mAP@0.5:0.95
and per-class AP@0.5 (classes with boxes in ``data``; COCO averages over them).
``plot_per_class_ap`` and ``plot_examples`` draw the result for people to look at.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from productlens.data.coco import CocoSet
from productlens.models.detectors.runtime import Detection, Detector

if TYPE_CHECKING:
    from productlens.pipeline.detect_train import DetectTrainOptions


def _coco_dict(data: CocoSet) -> dict:
    images, anns = [], []
    for im in data.images:
        images.append({"id": im.id, "width": im.width, "height": im.height, "file_name": str(im.path)})
        for b, lab in zip(im.boxes, im.labels):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": im.id, "category_id": data.categories[lab]["id"],
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": data.categories}


def coco_map(data: CocoSet, predictions: dict[int, Sequence[Detection]]) -> dict:
    """Score ``predictions`` (image id -> detections whose ``label`` indexes ``data.categories``).

    Images missing from ``predictions`` count as having no detections.
    Returns ``map50``, ``map``, ``per_class`` (name -> AP@0.5, for classes with boxes).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = _coco_dict(data)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = [{"image_id": iid, "category_id": data.categories[d.label]["id"], "bbox": list(d.box.as_tuple()),
             "score": float(d.score)} for iid, ds in predictions.items() for d in ds]
    if not dets:
        return {"map50": 0.0, "map": 0.0, "per_class": {}}
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
    for im in tqdm(data.images, desc="detect", unit="image", disable=not progress):
        try:
            img = load_det_image(im)
        except ImageError as exc:
            errors.append((str(im.path), str(exc)))
            continue
        if not (im.width and im.height):
            im.width, im.height = img.size
        preds[im.id] = detector.detect(img, score_threshold=0.01)
    return preds, errors


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
        from productlens.eval.sheets import chart_path

        chart_path(plot)
    train = read_coco(train_json)
    test = read_coco(test_json, categories=train.categories)
    with tempfile.TemporaryDirectory(prefix="productlens-detect-") as tmp:
        folder = Path(model_out) if model_out else Path(tmp) / "detector"
        fit = train_detector(train, folder, opts, progress=progress)
        preds, errors = predict_set(load_detector(folder), test, progress=progress)
    bad = {p for p, _ in errors}
    scored = CocoSet(test.path, test.categories, [im for im in test.images if str(im.path) not in bad])
    m = coco_map(scored, preds)
    m.update(classes=len(m["per_class"]), train=fit["images"], test=len(scored.images),
             skipped=len(fit["skipped"]) + len(errors),
             problems=[f"train: {p}" for p in train.problems] + [f"test: {p}" for p in test.problems]
             + [f"test image skipped: {e}" for _, e in errors],
             seconds=round(time.perf_counter() - t0, 1))
    m["plots"] = _plots(m, scored, preds, plot, Path(test_json).name) if plot else []
    return m


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

"""``productlens eval retrieval``: build a catalog, rank the queries, score mAP@1000.

Challenge mode (default) never shows the gallery's product_id to the system:
the gallery items are handed over with their labels stripped, and the labels
are used only by the scorer. Catalog mode hands them over (the catalog knows
which seller photo shows which product).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from productlens.config import DEFAULT_EMBEDDER
from productlens.data.readers import read_gallery, read_labelled_csv, read_products_jsonl, read_queries
from productlens.eval.metrics import per_query_ap, retrieval_metrics, same_product
from productlens.models.detectors.runtime import Detector
from productlens.pipeline.catalog_build import build_catalog
from productlens.pipeline.fusion import choose_text_weight
from productlens.pipeline.rank import check_submission_ids, rank_queries
from productlens.types import Item, ProductLensError


def evaluate_retrieval(gallery_csv: str | Path, queries_csv: str | Path, *, train_csv: str | Path | None = None,
                       catalog_mode: bool = False, embedder: str = DEFAULT_EMBEDDER, rerank: bool = True, finetune: bool = False,
                       k: int = 1000, progress: bool = True, rankings_out: str | Path | None = None,
                       detector: Detector | None = None, text: bool = False,
                       products: str | Path | None = None, query_views: str | None = None,
                       gallery_views: str | None = None, companions: Sequence[str] = (), verify: bool | None = None,
                       plot: str | Path | None = None) -> dict:
    """Evaluate retrieval end to end and return the metrics dict.

    ``finetune``: fine-tune the backbone's last blocks on ``train_csv`` first.
    ``query_views``: how queries are embedded (``build_catalog``'s option; default
    ``"regions"`` with ``train_csv``, ``"none"`` without); ``gallery_views``: how gallery
    photos are (``build_catalog``'s; default ``"shelf"`` with ``regions`` queries). ``companions``: also
    ``build_catalog``'s (bundled backbones joined on the whole photo; default none).
    ``verify``: spatial verification of each query's top results (``rank_queries``'s;
    default: on where OpenCV is installed). ``plot``: also write a contact sheet of
    queries and their first results there (:func:`plot_rankings`); when it cannot be
    written, the metrics say why in ``plot_error``.
    ``detector``: queries without a box are searched with their best detected box.
    ``text`` (needs ``train_csv``): OCR gallery and query photos and fuse the
    words with the image score; the fusion weight is chosen on training photos
    by cross-fitting over products (:func:`~productlens.pipeline.fusion.choose_text_weight`,
    without fine-tuning). ``products`` (a products.jsonl): in catalog mode, each
    gallery photo's product text (title, name, category) joins its OCR words.
    Keys: ``map@1000``, ``top1``, ``top5``, ``recall@10``, ``queries``, ``gallery``,
    ``seconds`` (wall time including training and embedding), ``skipped``, ``without_match`` (queries
    whose product has no gallery photo: scored 0, kept in the mean); with ``text`` also
    ``text_weight`` and ``weights`` ({weight: held-out training mAP}); ``plot_error`` as above.
    """
    t0 = time.perf_counter()
    if plot:
        from productlens.eval.sheets import sheet_path

        sheet_path(plot)
    if rankings_out:
        from productlens.pipeline.rank import rankings_path

        rankings_path(rankings_out)
    unlisted: list[str] = []  # gallery rows that name no photo: left out with a warning, counted as skipped
    gallery = read_gallery(gallery_csv, skipped=unlisted)
    queries = read_queries(queries_csv)
    for name, rows in ((queries_csv, queries), (gallery_csv, gallery)):
        if not rows:  # a score of 0 for nothing would read as a result
            raise ProductLensError(f"{name}: no rows to evaluate")
        if all(r.product_id is None for r in rows):  # scoring needs the ground truth
            raise ProductLensError(f"{name}: no product_id column (or no value in it): evaluation scores "
                                   "each query against the gallery's product ids")
    truth = {g.id: (-1 if g.product_id is None else int(g.product_id)) for g in gallery}
    photos = {g.id: g.image for g in gallery}
    if not catalog_mode:  # the system never sees the gallery's labels
        gallery = [dataclasses.replace(g, product_id=None) for g in gallery]
    train = read_labelled_csv(train_csv, label="product_id", need_label=True) if train_csv else None
    options = {"query_views": query_views, "gallery_views": gallery_views, "companions": companions}
    weight, weights = 0.0, None
    if products and not (text and catalog_mode):
        raise ProductLensError("--products gives the product text that --text fuses in catalog mode: "
                               "use it with --catalog --text")
    if text:
        if not train:
            raise ProductLensError("--text needs --train: the fusion weight is chosen on training photos")
        if products and catalog_mode:
            gallery = attach_product_text(gallery, read_products_jsonl(products))
        weight, weights = choose_text_weight(gallery, train, embedder=embedder, use_gallery_labels=catalog_mode,
                                             progress=progress, build=options)
    if detector is not None:  # detected once: the boxes searched are the boxes drawn
        from productlens.pipeline.detect import best_boxes

        boxes = best_boxes(detector, [q.image for q in queries], [q.box for q in queries], progress=progress)
        queries = [dataclasses.replace(q, box=b) for q, b in zip(queries, boxes)]
    with tempfile.TemporaryDirectory(prefix="productlens-eval-") as tmp:
        catalog, gerrors = build_catalog(gallery, Path(tmp) / "catalog", embedder=embedder, train=train,
                                         use_gallery_labels=catalog_mode, finetune=finetune and train is not None,
                                         progress=progress, ocr=text, **options)
        with catalog:
            if text:
                catalog.set_text_weight(weight)
            if rankings_out:  # before the ranking: the array cannot hold larger ids
                check_submission_ids(catalog.store.ids())
            rankings, qerrors = rank_queries(catalog, queries, k, rerank=rerank,
                                             group_by_product=catalog_mode, progress=progress, verify=verify)
    if rankings_out:
        from productlens.pipeline.rank import save_rankings

        save_rankings(rankings, rankings_out)
    gallery_ids = np.array(sorted(truth))
    pos = {gid: j for j, gid in enumerate(gallery_ids.tolist())}
    gallery_labels = np.array([truth[g] for g in gallery_ids.tolist()])
    as_index = np.vectorize(lambda i: pos.get(int(i), -1), otypes=[np.int64])(rankings) if rankings.size else rankings
    query_labels = np.array([-1 if q.product_id is None else int(q.product_id) for q in queries])
    metrics = retrieval_metrics(as_index, gallery_labels, query_labels, k)
    products = set(gallery_labels[gallery_labels != -1].tolist())
    metrics["without_match"] = int(sum(q not in products for q in query_labels.tolist()))
    if plot:  # a sheet that cannot be written costs the picture, not the figures
        try:
            plot_rankings(queries, rankings, per_query_ap(as_index, gallery_labels, query_labels, k), truth,
                          photos, plot,
                          title=f"{Path(queries_csv).name} vs {Path(gallery_csv).name}: mAP@{k} "
                                f"{metrics[f'map@{k}']:.3f}")
        except ProductLensError as exc:
            metrics["plot_error"] = str(exc)
    metrics.update(queries=len(queries), gallery=len(gallery), skipped=len(unlisted) + len(gerrors) + len(qerrors),
                   seconds=round(time.perf_counter() - t0, 1))
    if text:
        metrics.update(text_weight=weight, weights=weights)
    return metrics


def plot_rankings(queries: Sequence[Item], rankings: np.ndarray, ap: np.ndarray, truth: dict[int, int],
                  photos: dict[int, str], path: str | Path, *, rows: int = 16, shown: int = 5,
                  title: str = "") -> Path:
    """A contact sheet of queries and their first ``shown`` results, green where a result shows
    the query's product, red where not; the query's box is drawn and its AP in its caption.

    The first half of the ``rows`` are the queries with the lowest AP (where to look first),
    the rest an even sample of the others (what a typical query looks like). ``rankings``
    holds gallery ids (-1: none), ``truth`` maps them to product ids (-1: distractor) and
    ``photos`` to their images. Each query's ``box`` (given, or detected by
    :func:`evaluate_retrieval`) is drawn.
    """
    from productlens.eval.sheets import RIGHT, WRONG, Tile, contact_sheet, placeholder

    n = len(queries)
    if not n:
        return contact_sheet(placeholder("no queries"), path, title=title)
    worst = [int(i) for i in np.argsort(ap, kind="stable")[:min(rows // 2, n)]]
    chosen = set(worst)
    others = [i for i in range(n) if i not in chosen]
    picks = sorted({others[int(j)] for j in np.linspace(0, len(others) - 1, min(rows - len(worst), len(others)))}
                   ) if others else []
    shown_rows = worst + picks
    sheet = []
    for i in shown_rows:
        q = queries[i]
        box = q.box
        row = [Tile(q.image, f"query {q.id}  AP {ap[i]:.2f}\nproduct {q.product_id}", box=box)]
        for r, gid in enumerate(int(g) for g in rankings[i][:shown]):
            if gid < 0:
                break
            label = truth.get(gid, -1)
            right = same_product(label, q.product_id)
            row.append(Tile(photos.get(gid, ""), f"#{r + 1}  {gid}\n" + ("distractor" if label == -1
                                                                         else f"product {label}"),
                            border=RIGHT if right else WRONG))
        if len(row) == 1:
            row[0] = Tile(q.image, f"query {q.id}: skipped\nproduct {q.product_id}", box=box)
        sheet.append(row)
    note = f"rows 1-{len(worst)}: lowest AP; then an even sample" if picks else "lowest AP first"
    return contact_sheet(sheet, path, title=f"{title}  ({note}; green: same product)".strip())


def attach_product_text(gallery: list[Item], products: dict[int, dict]) -> list[Item]:
    """Gallery items with their product's title, category and other text fields filled in."""
    out = []
    for g in gallery:
        rec = products.get(g.product_id) if g.product_id is not None else None
        if rec is None:
            out.append(g)
            continue
        extra = {**{k: v for k, v in rec.items() if k in ("name", "brand", "description", "department")
                    and v not in (None, "")}, **g.extra}
        out.append(dataclasses.replace(g, title=g.title or str(rec.get("title") or ""),
                                       category=g.category or str(rec.get("category_name") or ""), extra=extra))
    return out

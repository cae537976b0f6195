"""Cdiscount scale on synthetic features: thousands of categories, hundreds of thousands of items.

    python benchmarks/bench_classify_scale.py [--classes 5000] [--items 200000] [--dim 256]

1. Training: the productlens head (the library's ``fit_on_features`` with its
   defaults: hold-out of at most 5,000 images, temperature, refit only for small
   sets, noise filter, logit adjustment, hidden layer; ``--epochs``, batches of
   1,024) on ``--items``
   synthetic features (clustered, long-tailed class sizes, each fine class under
   one of 50 coarse classes) with ``--classes`` classes; seconds and peak memory.
   The baseline is scikit-learn's LogisticRegression on the same features
   (skipped above ``--lr-max`` items: it does not finish in minutes).
2. Prediction: calibrated top-4 for one image at a time and per image in batches
   of 256, for 50, 500 and 5,000 classes (the head's work is one matrix product
   and an O(C) argpartition), beside the backbone's own time per image.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np

from productlens.data.augment import View
from productlens.models.classifiers.head import HeadConfig
from productlens.models.classifiers.hierarchy import build_hierarchy
from productlens.models.classifiers.model import top_k
from productlens.pipeline.classify import Features, TrainOptions, fit_on_features


def synthetic(n_classes: int, n_items: int, dim: int, seed: int = 0, spread: float = 2.0):
    """Long-tailed class sizes (Zipf-like, at least 3 each), clustered unit vectors (float16)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_classes + 1) ** 0.7
    sizes = 3 + np.floor(weights / weights.sum() * (n_items - 3 * n_classes)).astype(int)
    sizes[0] += n_items - sizes.sum()
    y = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    x = np.empty((len(y), dim), np.float16)
    for s in range(0, len(y), 20000):
        part = centres[y[s:s + 20000]] + spread * rng.normal(size=(len(y[s:s + 20000]), dim)).astype(np.float32)
        x[s:s + 20000] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return x, y, centres


def test_set(centres: np.ndarray, per_class: int, seed: int = 1, spread: float = 2.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(centres)), per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), centres.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16), y


def train(n_classes: int, n_items: int, dim: int, epochs: int, threads: int):
    x, y, centres = synthetic(n_classes, n_items, dim)
    labels = [f"c{c:05d}" for c in range(n_classes)]
    parents = {"coarse": [f"g{c % 50:02d}" for c in range(n_classes)]}
    hierarchy = build_hierarchy("fine", labels, parents)
    feats = Features(x[None], y, np.arange(len(y)), [], [View().key])
    options = TrainOptions(embedder="synthetic", views="none", tta="none",
                           # clean_epochs too: on clean labels the head otherwise trains 25 epochs whatever
                           # --epochs says (the 2026-12-07 run before this was fixed: 1281 s at 5,000 classes)
                           head=HeadConfig(epochs=epochs, clean_epochs=epochs, batch_size=1024, threads=threads))
    names = [f"{i:07d}" for i in range(len(y))]
    start = time.perf_counter()
    clf, metrics = fit_on_features(feats, hierarchy, options, names)
    seconds = time.perf_counter() - start
    tx, ty = test_set(centres, 2)
    top1 = float((clf.probs_from_features(tx).argmax(1) == ty).mean())
    return clf, seconds, top1, metrics, x, y, tx, ty


def lr_baseline(x, y, tx, ty):
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    m = LogisticRegression(max_iter=200).fit(x.astype(np.float32), y)
    return float((m.predict(tx.astype(np.float32)) == ty).mean()), time.perf_counter() - start


def predict_times(clf, feats: np.ndarray, repeats: int = 500) -> tuple[float, float]:
    """ms per image: one image per call, and in batches of 256 (probabilities + top-4)."""
    one = feats[:repeats]
    start = time.perf_counter()
    for i in range(len(one)):
        top_k(clf.probs_from_features(one[i:i + 1]), clf.labels, 4)
    single = (time.perf_counter() - start) / len(one) * 1000
    batch = np.resize(feats, (2048, feats.shape[1]))
    start = time.perf_counter()
    for s in range(0, len(batch), 256):
        top_k(clf.probs_from_features(batch[s:s + 256]), clf.labels, 4)
    return single, (time.perf_counter() - start) / len(batch) * 1000


def backbone_ms(name: str) -> float:
    """The backbone's own time per image (batch of one, preprocessed input)."""
    from productlens.models.embedders import get_embedder

    emb = get_embedder(name)
    batch = np.zeros((1, *emb.preprocess.shape), emb.preprocess.dtype)
    emb.embed(batch)
    start = time.perf_counter()
    for _ in range(20):
        emb.embed(batch)
    return (time.perf_counter() - start) / 20 * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--classes", type=int, default=5000,
                    help="Fine classes of the largest row (rows of 50, 500 and this many).")
    ap.add_argument("--items", type=int, default=200_000, help="Training items of the largest row.")
    ap.add_argument("--dim", type=int, default=256, help="Feature size (1280: EfficientNet-Lite2's; the "
                                                          "classifier's default ensemble gives 3,840).")
    ap.add_argument("--epochs", type=int, default=3, help="Head training epochs.")
    ap.add_argument("--threads", type=int, default=2, help="Torch threads for the head.")
    ap.add_argument("--lr-max", type=int, default=20_000, help="Largest item count for the sklearn baseline.")
    ap.add_argument("--backbone", default="efficientnet-lite2", help="Backbone timed for the per-image share.")
    args = ap.parse_args()

    print(f"machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores; "
          f"synthetic {args.dim}-d features, head epochs {args.epochs}, batch 1024, {args.threads} threads\n")
    print("| classes | train items | productlens train (s) | peak RSS (GiB) | synthetic test top-1 | "
          "LogisticRegression top-1 | LR train (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    heads = {}
    for n_classes in sorted({min(50, args.classes), min(500, args.classes), args.classes}):
        n_items = max(args.items * n_classes // args.classes, 20 * n_classes)  # same items per class
        clf, seconds, top1, metrics, x, y, tx, ty = train(n_classes, n_items, args.dim, args.epochs, args.threads)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if n_items <= args.lr_max:
            lr_top1, lr_s = lr_baseline(x, y, tx, ty)
            lr_cells = f"{lr_top1:.3f} | {lr_s:.1f}"
        else:
            lr_cells = "not run (too slow) | -"
        print(f"| {n_classes} | {n_items} | {seconds:.1f} | {rss:.2f} | {top1:.3f} | {lr_cells} |", flush=True)
        heads[n_classes] = (clf, tx)
    back = backbone_ms(args.backbone)
    print(f"\nPrediction, ms per image (head: calibrated probabilities + top-4; {args.backbone} alone: "
          f"{back:.1f} ms per image at batch 1, x{1} view):\n")
    print("| classes | head, 1 image per call | head, batches of 256 | head share of backbone + head (batch 1) |")
    print("|---:|---:|---:|---:|")
    for n_classes, (clf, tx) in heads.items():
        single, batched = predict_times(clf, tx.astype(np.float32))
        print(f"| {n_classes} | {single:.3f} | {batched:.4f} | {single / (single + back):.1%} |", flush=True)


if __name__ == "__main__":
    main()

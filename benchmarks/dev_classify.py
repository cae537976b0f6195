"""Train-only development split for classification: does fine-tuning help on a new photo session?

    python benchmarks/dev_classify.py [--finetune] [--split session|block] [--views V] [--tta V] [--model M]
                                      [--data ...]

Reads only ``train.csv`` (val is never read). ``block``: the last 25% of each
product's photos in file-name order are held out (the photos come in
sequences, but a block still shares sessions with the rest: near 0.99 top-1).
``session``: each product's photos are split into two k-means clusters of their
frozen whole-image features and the smaller cluster (at least 10%) is held out,
a stand-in for a new photo session (harder than val). Trains productlens on the
rest (``TrainOptions(finetune=...)``) and prints top-1 on the held-out photos.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from productlens.data.labelled import LabelledSet, read_labelled
from productlens.eval.classification import evaluate_classification
from productlens.pipeline.classify import TrainOptions

ROOT = Path(__file__).resolve().parents[1]


def held_out(data: LabelledSet, split: str) -> np.ndarray:
    """Boolean mask of the held-out photos."""
    y = np.array(data.labels)
    names = [it.image for it in data.items]
    test = np.zeros(len(y), bool)
    feats = None
    if split == "session":
        from sklearn.cluster import KMeans

        from productlens.data.augment import View
        from productlens.models.embedders import get_embedder
        from productlens.pipeline.features_cache import embed_views

        feats = embed_views(get_embedder("efficientnet-lite2"), data.items, [View()], progress=False)
        feats = feats.vectors[0].astype(np.float32)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if feats is not None:
            cluster = KMeans(2, n_init=10, random_state=0).fit_predict(feats[idx])
            small = np.argmin(np.bincount(cluster, minlength=2))
            if (cluster == small).mean() >= 0.1:
                test[idx[cluster == small]] = True
                continue
        idx = idx[np.argsort([names[i] for i in idx], kind="stable")]
        test[idx[int(len(idx) * 0.75):]] = True
    return test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    ap.add_argument("--split", choices=["session", "block"], default="session")
    ap.add_argument("--finetune", action="store_true")
    ap.add_argument("--views", default=None, help="training views (default: TrainOptions' default)")
    ap.add_argument("--tta", default=None, help="prediction views (default: TrainOptions' default)")
    ap.add_argument("--model", default=None, help="backbone (default: TrainOptions' default)")
    args = ap.parse_args()
    data = read_labelled(args.data / "train.csv", label="product_id")
    test = held_out(data, args.split)
    options = TrainOptions(embedder=args.model, finetune=args.finetune, views=args.views, tta=args.tta)
    start = time.perf_counter()
    m = evaluate_classification(data.subset(np.flatnonzero(~test)), data.subset(np.flatnonzero(test)), "product_id",
                                options=options, progress=False)
    print(json.dumps({"split": args.split, "model": options.backbone, "finetune": args.finetune,
                      "views": options.train_views, "tta": options.prediction_views, "held_out": int(test.sum()),
                      "train": int((~test).sum()), "top1": round(m["top1"], 4), "top5": round(m["top5"], 4),
                      "seconds": round(time.perf_counter() - start)}))


if __name__ == "__main__":
    main()

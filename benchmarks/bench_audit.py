"""Label audit on grocery: flip 10% of the training labels, how many does the audit find?

    python benchmarks/bench_audit.py [--data ../shared/data/grocery] [--rate 0.1] [--label product_id]

productlens: ``audit_labels`` (5-fold out-of-fold probabilities of the full
head with its views, confident-learning flags, plus what the small-loss noise
filter leaves out where the out-of-fold prediction disagrees). Baseline, in the same run:
5-fold out-of-fold ``LogisticRegression()`` on the same backbone's whole-image
features, flagging every image whose predicted class is not its label. For
both: precision and recall of the flagged set against the flipped images,
precision of the top-ranked N (N = number flipped), and how many images are
flagged on the unmodified labels (the dataset's own errors or false alarms).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from productlens.data.augment import View
from productlens.data.labelled import LabelledSet, read_labelled
from productlens.eval.audit import audit_labels
from productlens.models.embedders import get_embedder
from productlens.pipeline.classify import TrainOptions
from productlens.pipeline.features_cache import embed_views

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_classify import flip  # noqa: E402  the same random flips as the classification benchmark


def lr_flags(data: LabelledSet, model: str, folds: int) -> tuple[list[int], float]:
    """Baseline: out-of-fold LogisticRegression disagreements, ranked by the predicted class's margin."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    start = time.perf_counter()
    feats = embed_views(get_embedder(model), data.items, [View()], progress=False)
    classes = sorted(set(data.labels))
    y = np.array([classes.index(data.labels[i]) for i in feats.ok])
    probs = cross_val_predict(LogisticRegression(max_iter=2000), feats.vectors[0].astype(np.float32), y,
                              cv=StratifiedKFold(folds, shuffle=True, random_state=0), method="predict_proba")
    pred = probs.argmax(1)
    idx = np.flatnonzero(pred != y)
    margin = probs[idx, pred[idx]] - probs[idx, y[idx]]
    return [int(feats.ok[i]) for i in idx[np.argsort(-margin)]], time.perf_counter() - start


def scores(flagged: list[int], flipped: np.ndarray) -> tuple[float, float, float]:
    truth = set(np.flatnonzero(flipped).tolist())
    hits = len(set(flagged) & truth)
    top = set(flagged[:len(truth)])
    return (hits / len(flagged) if flagged else 0.0, hits / max(1, len(truth)), len(top & truth) / max(1, len(truth)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    ap.add_argument("--label", default="product_id")
    ap.add_argument("--model", default=None, help="backbone (default: the classifier's)")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    clean = read_labelled(args.data / "train.csv", label=args.label)
    noisy = flip(clean, args.rate, args.seed)
    flipped = np.array(noisy.labels) != np.array(clean.labels)
    options = TrainOptions(embedder=args.model)
    backbone = options.backbone

    rows = []
    for name, data in (("flipped", noisy), ("unmodified", clean)):
        report = audit_labels(data, options, folds=args.folds, progress=False)
        pl = [s.index for s in report.suspects]
        base, base_s = lr_flags(data, backbone, args.folds)
        rows.append((name, pl, report.seconds, base, base_s, len(report.duplicates)))
        print(f"done: {name}: productlens flagged {len(pl)} ({report.seconds:.0f} s), baseline {len(base)}", flush=True)

    print(f"\nmachine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; backbone {backbone}; "
          f"{len(clean)} training photos, label {args.label}; {int(flipped.sum())} labels "
          f"({args.rate:.0%}) flipped at random (seed {args.seed}); {args.folds} folds\n")
    print("| method | flagged | precision | recall | precision of top N (N = flipped) | flagged on unmodified labels "
          "| seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    (_, pl, pl_s, base, base_s, dups), (_, pl_clean, _, base_clean, _, dups_clean) = rows
    for method, flags, flags_clean, s in (("baseline: out-of-fold LR, prediction != label", base, base_clean, base_s),
                                          ("productlens audit labels", pl, pl_clean, pl_s)):
        p, r, top = scores(flags, flipped)
        print(f"| {method} | {len(flags)} | {p:.3f} | {r:.3f} | {top:.3f} | {len(flags_clean)} | {s:.0f} |")
    print(f"\nnear-duplicate pairs across classes (cosine >= 0.95): {dups} with flipped labels, "
          f"{dups_clean} on the unmodified labels")


if __name__ == "__main__":
    main()

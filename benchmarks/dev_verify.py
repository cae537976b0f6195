"""How spatial verification's settings were chosen: train-only development splits.

    python benchmarks/dev_verify.py [--data ../shared/data/grocery] [--split open,session,closed]

No evaluation query (val photo) is read. Splits of `train.csv` against the 81 shop
photos (their labels are read only to score), as in ``benchmarks/dev_finetune.py``:
dev-closed (per product the first 75% of its photos in file order fit, the rest
query), dev-session (per product the smaller k-means cluster of its photos
queries), dev-open (half of the products fit, the other products' photos query).
Queries are thinned to 4 photos per product (val has about 3.7), three draws.
The frozen backbone embeds the photos (queries pooled over regions, as catalogs
do); the adapter is fitted on the fitting photos; the ranking is alpha-QE's, as
in catalog search. Each query's top ``--top`` results are then re-ranked by
:mod:`productlens.pipeline.verify` for a grid of minimum inlier counts and weights;
mAP@1000 is printed overall and per department (Fruit / Vegetables / Packages,
from products.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from productlens.config import DEFAULT_EMBEDDER
from productlens.data.images import load_image
from productlens.data.readers import read_gallery, read_labelled_csv
from productlens.eval.metrics import retrieval_metrics
from productlens.heads.adapter import fit_adapter
from productlens.models.embedders import get_embedder
from productlens.pipeline import verify
from productlens.pipeline.catalog import QE_ALPHA, QE_K, query_embedder
from productlens.pipeline.embed import embed_items
from productlens.pipeline.rerank import alpha_qe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_finetune import split  # noqa: E402  (the same splits)

ROOT = Path(__file__).resolve().parents[1]
GRID = [(0, 0.0)] + [(m, w) for m in (12, 15, 20) for w in (0.1, 0.3, 1.0)]
DEPARTMENTS = ("Fruit", "Vegetables", "Packages")


def thin(query: np.ndarray, y: np.ndarray, per: int, seed: int) -> np.ndarray:
    """Indices of at most ``per`` query photos of each product."""
    rng = np.random.default_rng(seed)
    out = [rng.choice(w, min(per, w.size), replace=False)
           for w in (np.flatnonzero(query & (y == p)) for p in np.unique(y[query]))]
    return np.sort(np.concatenate(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    ap.add_argument("--model", default=DEFAULT_EMBEDDER)
    ap.add_argument("--split", default="open,session,closed")
    ap.add_argument("--top", type=int, default=verify.TOP)
    ap.add_argument("--per-product", type=int, default=4)
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args()
    train = read_labelled_csv(args.data / "train.csv")
    shop = read_gallery(args.data / "retrieval-shop" / "gallery.csv")
    dept = {}
    with open(args.data / "products.jsonl") as f:
        for line in f:
            r = json.loads(line)
            dept[int(r["product_id"])] = r["department"]
    y = np.array([t.product_id for t in train])
    shop_y = np.array([g.product_id for g in shop])  # scoring only
    emb = get_embedder(args.model)
    T0 = embed_items(emb, train, desc="train photos").vectors  # whole photos: the dev-session split
    R = embed_items(query_embedder(emb, "regions"), train, desc="train photos, regions").vectors
    S = embed_items(emb, shop, desc="shop photos").vectors
    shop_feats = [verify.local_features(load_image(g.image, target=verify.LONG_SIDE)) for g in shop]
    photo_feats: dict[int, verify.LocalFeatures] = {}
    timing = [0.0, 0]  # seconds, query-result pairs (query features included)

    def mapk(sim: np.ndarray, qy: np.ndarray) -> float:
        return retrieval_metrics(np.argsort(-sim, 1)[:, :1000], shop_y, qy)["map@1000"] if len(qy) else float("nan")

    print(f"top {args.top}; mAP@1000 (mean of {args.draws} draws of {args.per_product} queries per product)")
    print("| split | min inliers | weight | all | " + " | ".join(DEPARTMENTS) + " |")
    print("|---|---|---|---|" + "---|" * len(DEPARTMENTS))
    for kind in args.split.split(","):
        fit = split(train, kind, T0)
        ad = fit_adapter(args.model, R[fit], y[fit], gallery_vectors=S)
        G = ad.transform(S, "gallery")
        results = {g: [] for g in GRID}
        for draw in range(args.draws):
            qi = thin(~fit, y, args.per_product, draw)
            Q = ad.transform(R[qi], "query")
            s = Q @ G.T
            nb = np.argsort(-s, 1)[:, :QE_K]
            sim = alpha_qe(Q, np.take_along_axis(s, nb, 1), G[nb], QE_ALPHA) @ G.T
            top = np.argsort(-sim, 1)[:, :args.top]
            n = np.zeros(top.shape)
            t0 = time.perf_counter()
            for a, i in enumerate(qi):
                if int(i) not in photo_feats:
                    photo_feats[int(i)] = verify.local_features(load_image(train[i].image, target=verify.LONG_SIDE))
                n[a] = [verify.inliers(photo_feats[int(i)], shop_feats[j]) for j in top[a]]
            timing[0] += time.perf_counter() - t0
            timing[1] += top.size
            qy = y[qi]
            dq = np.array([dept.get(int(p), "") for p in qy])
            for m, w in GRID:
                s2 = sim.copy()
                np.put_along_axis(s2, top, np.take_along_axis(s2, top, 1) + verify.boost(n, w, m), 1)
                results[(m, w)].append([mapk(s2, qy)] + [mapk(s2[dq == d], qy[dq == d]) for d in DEPARTMENTS])
        for (m, w), rows in results.items():
            v = np.mean(rows, axis=0)
            label = "none | -" if w == 0 else f"{m} | {w:g}"
            print(f"| dev-{kind} | {label} | **{v[0]:.3f}** | " + " | ".join(f"{x:.3f}" for x in v[1:]) + " |",
                  flush=True)
    print(f"\nverification: {1000 * timing[0] / max(timing[1], 1):.1f} ms per query-result pair "
          f"({timing[1]} pairs; query features computed once per photo)")


if __name__ == "__main__":
    main()

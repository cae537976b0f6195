"""How productlens's retrieval defaults were chosen: train-only development splits.

    python benchmarks/dev_protocol.py [--data ../shared/data/grocery]

No evaluation query (val photo) is read. Three splits of `train.csv`, all
against the 81 unlabelled shop photos (the challenge gallery):
  * dev-closed: half of each product's training photos fit, the other half query;
  * dev-vpr: same, the gallery also holds the fitting photos;
  * dev-open: half of the products fit, the other products' photos query.
It prints mAP@1000 of the plain backbone, domain centring alone, and the adapter
(centring + product evidence) for a few regularisation strengths C, plus the
catalog-mode adapter (shop photos labelled) on dev-closed. A second table
compares query embeddings: the whole photo, or the whole photo pooled with six
crops (``--query-views regions``; the fitting photos, which stand for queries,
are embedded the same way; shop photos always whole). A third table varies the
weight of the adapter's product evidence (regions queries, C=30), in challenge
and catalog mode. A fourth table scores a mixed catalog (dev-mixed): half of the
products have shopper photos (half of each one's photos fit, the other half
query), the others only their shop photo (all their photos query); it prints
the library's defaults in challenge and catalog mode, per kind of product.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from productlens.config import DEFAULT_EMBEDDER
from productlens.data.readers import read_gallery, read_labelled_csv
from productlens.eval.metrics import retrieval_metrics
from productlens.heads.adapter import fit_adapter
from productlens.models.embedders import get_embedder
from productlens.models.embedders.base import l2_normalize
from productlens.pipeline.catalog import query_embedder
from productlens.pipeline.embed import embed_items

ROOT = Path(__file__).resolve().parents[1]


def splits(y: np.ndarray, seed: int = 123) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    rng = np.random.default_rng(seed)
    half = np.zeros(len(y), bool)
    for p in np.unique(y):
        w = rng.permutation(np.where(y == p)[0])
        half[w[: len(w) // 2]] = True
    prods = rng.permutation(np.unique(y))
    in_a = np.isin(y, prods[: len(prods) // 2])
    return {"dev-closed": (half, ~half, False), "dev-vpr": (half, ~half, True),
            "dev-open": (in_a, ~in_a, False), "dev-mixed": (half & in_a, ~(half & in_a), False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    ap.add_argument("--model", default=DEFAULT_EMBEDDER)
    args = ap.parse_args()
    train = read_labelled_csv(args.data / "train.csv")
    shop = read_gallery(args.data / "retrieval-shop" / "gallery.csv")
    emb = get_embedder(args.model)
    T = embed_items(emb, train, desc="train photos").vectors
    S = embed_items(emb, shop, desc="shop photos").vectors
    y = np.array([t.product_id for t in train])
    shop_y = np.array([g.product_id for g in shop])  # used for scoring, and in catalog mode only

    def score(q, g, gy, qy):
        return retrieval_metrics(np.argsort(-(q @ g.T), 1)[:, :1000], gy, qy)["map@1000"]

    print("| split | plain | centring | adapter C=10 | adapter C=30 | adapter C=100 | catalog mode C=30 |")
    print("|---|---|---|---|---|---|---|")
    for name, (fit, query, with_fit_photos) in list(splits(y).items())[:3]:
        G, gy = (np.vstack([S, T[fit]]), np.r_[shop_y, y[fit]]) if with_fit_photos else (S, shop_y)
        Q, qy = T[query], y[query]
        row = [score(Q, G, gy, qy),
               score(l2_normalize(Q - T[fit].mean(0)), l2_normalize(G - G.mean(0)), gy, qy)]
        for C in (10, 30, 100):
            ad = fit_adapter(emb.name, T[fit], y[fit], gallery_vectors=G, C=C)
            row.append(score(ad.transform(Q, "query"), ad.transform(G, "gallery"), gy, qy))
        if name == "dev-closed":
            ad = fit_adapter(emb.name, T[fit], y[fit], gallery_vectors=G, gallery_labels=gy, C=30, weight=1.0)
            row.append(score(ad.transform(Q, "query"), ad.transform(G, "gallery"), gy, qy))
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + (" | - |" if len(row) == 5 else " |"))

    R = embed_items(query_embedder(emb, "regions"), train, desc="train photos, pooled regions").vectors
    print("\n| split | adapter C=30, whole photo | adapter C=30, regions | catalog mode, whole | catalog mode, regions |")
    print("|---|---|---|---|---|")
    for name, (fit, query, with_fit_photos) in list(splits(y).items())[:3]:
        row = []
        for gl in (None, "catalog"):
            for X in (T, R):
                G, gy = (np.vstack([S, T[fit]]), np.r_[shop_y, y[fit]]) if with_fit_photos else (S, shop_y)
                if gl and with_fit_photos or gl and name == "dev-open":
                    row.append(None)
                    continue
                ad = fit_adapter(emb.name, X[fit], y[fit], gallery_vectors=G, C=30, weight=1.0,
                                 gallery_labels=gy if gl else None)
                row.append(score(ad.transform(X[query], "query"), ad.transform(G, "gallery"), gy, y[query]))
        print(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in row) + " |")

    weights = (0.5, 1.0, 2.0, 4.0)
    print("\n| split, mode (regions, C=30) | " + " | ".join(f"weight {w:g}" for w in weights) + " |")
    print("|---|" + "---|" * len(weights))
    for name, (fit, query, with_fit_photos) in list(splits(y).items())[:3]:
        G, gy = (np.vstack([S, T[fit]]), np.r_[shop_y, y[fit]]) if with_fit_photos else (S, shop_y)
        for mode in ("challenge", "catalog"):
            if mode == "catalog" and name != "dev-closed":
                continue
            ad = fit_adapter(emb.name, R[fit], y[fit], gallery_vectors=G, C=30,
                             gallery_labels=gy if mode == "catalog" else None)
            row = []
            for w in weights:
                ad.weight = w
                row.append(score(ad.transform(R[query], "query"), ad.transform(G, "gallery"), gy, y[query]))
            print(f"| {name}, {mode} | " + " | ".join(f"{v:.3f}" for v in row) + " |")

    fit, query, _ = splits(y)["dev-mixed"]
    trained = np.isin(y, np.unique(y[fit]))
    print("\n| dev-mixed (regions, defaults) | products with shopper photos | products with a shop photo only | all |")
    print("|---|---|---|---|")
    for mode in ("challenge", "catalog"):
        ad = fit_adapter(emb.name, R[fit], y[fit], gallery_vectors=S,
                         gallery_labels=shop_y if mode == "catalog" else None)
        Q, G = ad.transform(R, "query"), ad.transform(S, "gallery")
        row = [score(Q[query & part], G, shop_y, y[query & part]) for part in (trained, ~trained, query)]
        print(f"| {mode} mode | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()

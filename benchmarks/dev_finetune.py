"""How the fine-tuning defaults were checked: train-only development splits.

    python benchmarks/dev_finetune.py [--data ../shared/data/grocery] [--split closed,open,session]
                                      [--seller-repeats 2,4,8] [--companions] [--query-views regions]
                                      [--recipe 20:4:4,18:2:3] [--gallery-views none,regions,shelf]

No evaluation query (val photo) is read. Splits of `train.csv` against the 81
shop photos (their labels are read only to score, and in catalog mode):
  * dev-closed: per product, the first 75% of its photos in file order fit and
    the last 25% query (the photos come in sequences, so a random split would
    put near-duplicates on both sides);
  * dev-session: per product, the smaller of two k-means clusters of its frozen
    features queries (a stand-in for a shopping session never trained on; the
    last 25% in file order where that cluster is under 10%), the rest fit;
  * dev-open: half of the products fit, the other products' photos query.
For the frozen backbone and for the backbone fine-tuned on the fitting photos
(`productlens.models.finetune`, default settings) it prints mAP@1000 of plain
cosine search, of the adapter (challenge mode) and of the catalog-mode adapter.
With ``--seller-repeats``, catalog mode's fine-tuning is also run with the
labelled shop photos of the fitting products beside their photos, each counted r times
(``build_catalog``'s ``FINETUNE_SELLER_REPEATS``); those backbones saw the shop
labels, so only their catalog-mode column is printed.
With ``--companions``, each fine-tuned backbone is also scored joined with the
other bundled backbones on the whole photo (the catalog commands'
``--companions``, off by default). ``--query-views regions`` embeds the train photos (fitting photos
and queries) as multi-region descriptors, as catalogs do; default whole photos.
``--gallery-views`` embeds the shop photos under each given view set (default whole photos),
one row each (``shelf``: the queries' regions of the photo and of a 2 x 2 mosaic of it).
``--recipe`` fine-tunes with each given ``first trained block:views:epochs`` instead of the
library's (``FinetuneConfig.for_catalog``: search's ``RECIPES``, and with ``--seller-repeats``
catalog mode's ``CLASSIFIER_RECIPES``), one row each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from productlens.config import DEFAULT_EMBEDDER
from productlens.data.readers import read_gallery, read_labelled_csv
from productlens.eval.metrics import retrieval_metrics
from productlens.heads.adapter import fit_adapter
from productlens.models.embedders import create_embedder, get_embedder
from productlens.models.embedders.joined import companions_for, joined
from productlens.models.finetune import FinetuneConfig, finetune_backbone
from productlens.pipeline.catalog import query_embedder
from productlens.pipeline.embed import embed_items

ROOT = Path(__file__).resolve().parents[1]


def split(train, kind: str, frozen: np.ndarray, seed: int = 0) -> np.ndarray:
    """Boolean mask of the fitting photos (``frozen``: the photos' frozen vectors, for dev-session)."""
    y = np.array([t.product_id for t in train])
    fit = np.zeros(len(y), bool)
    if kind == "session":
        from sklearn.cluster import KMeans

        for p in np.unique(y):
            idx = np.flatnonzero(y == p)
            cluster = KMeans(2, n_init=10, random_state=0).fit_predict(frozen[idx])
            small = np.argmin(np.bincount(cluster, minlength=2))
            if (cluster == small).mean() >= 0.1:
                fit[idx[cluster != small]] = True
            else:
                idx = idx[np.argsort([str(train[i].image) for i in idx])]
                fit[idx[: int(round(len(idx) * 0.75))]] = True
    elif kind == "closed":
        for p in np.unique(y):
            idx = np.where(y == p)[0]
            idx = idx[np.argsort([str(train[i].image) for i in idx])]
            fit[idx[: int(round(len(idx) * 0.75))]] = True
    else:
        prods = np.random.default_rng(seed).permutation(np.unique(y))
        fit = np.isin(y, prods[: len(prods) // 2])
    return fit


def scores(T, y, fit, S, shop_y, model: str) -> dict:
    def m(q, g):
        return retrieval_metrics(np.argsort(-(q @ g.T), 1)[:, :1000], shop_y, y[~fit])["map@1000"]

    out = {"plain": m(T[~fit], S)}
    ad = fit_adapter(model, T[fit], y[fit], gallery_vectors=S)
    out["adapter"] = m(ad.transform(T[~fit], "query"), ad.transform(S, "gallery"))
    ad = fit_adapter(model, T[fit], y[fit], gallery_vectors=S, gallery_labels=shop_y)
    out["catalog"] = m(ad.transform(T[~fit], "query"), ad.transform(S, "gallery"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    ap.add_argument("--model", default=DEFAULT_EMBEDDER)
    ap.add_argument("--split", default="closed,open", help="comma-separated: closed, open, session")
    ap.add_argument("--seller-repeats", default="", help="comma-separated counts, e.g. 2,4,8 (catalog mode)")
    ap.add_argument("--companions", action="store_true", help="also score the fine-tuned backbones joined "
                    "with the other bundled backbones (whole photo)")
    ap.add_argument("--query-views", default="none", help="none (whole photos) or regions")
    ap.add_argument("--gallery-views", default="none", help="comma-separated view sets of the shop photos, "
                    "e.g. none,regions,shelf (one row each)")
    ap.add_argument("--recipe", default="", help="comma-separated block:views:epochs, e.g. 20:4:4,18:2:3 "
                    "(default: the backbone's recipe)")
    args = ap.parse_args()
    train = read_labelled_csv(args.data / "train.csv")
    shop = read_gallery(args.data / "retrieval-shop" / "gallery.csv")
    y = np.array([t.product_id for t in train])
    shop_y = np.array([g.product_id for g in shop])  # scoring, and catalog mode only
    frozen = get_embedder(args.model)
    T0 = embed_items(frozen, train, desc="train photos").vectors  # whole photos: the dev-session split
    Tq = T0 if args.query_views == "none" else \
        embed_items(query_embedder(frozen, args.query_views), train, desc="train photos").vectors
    gallery_views = args.gallery_views.split(",")

    def shop_vectors(emb) -> dict[str, np.ndarray]:
        return {v: embed_items(query_embedder(emb, v), shop, desc=f"shop photos, {v}").vectors for v in gallery_views}

    def gallery_label(v: str) -> str:
        return "" if gallery_views == ["none"] else f", gallery {v}"

    S0 = shop_vectors(frozen)
    repeats = [int(r) for r in args.seller_repeats.split(",") if r]
    recipes = [dict(zip(("train_from", "views", "epochs"), map(int, r.split(":"))))
               for r in args.recipe.split(",") if r] or [{}]
    print("| split | backbone | plain | adapter | catalog mode | fine-tuning s |")
    print("|---|---|---|---|---|---|")
    for kind in args.split.split(","):
        fit = split(train, kind, T0)
        for v, S in S0.items():
            r = scores(Tq, y, fit, S, shop_y, args.model)
            print(f"| dev-{kind} | frozen{gallery_label(v)} | {r['plain']:.3f} | {r['adapter']:.3f} | "
                  f"{r['catalog']:.3f} | |", flush=True)
        items = [t for t, f in zip(train, fit) if f]
        known = {t.product_id for t in items}
        sellers = [g for g in shop if g.product_id in known]  # as build_catalog does
        for rep, recipe in [(r, c) for r in [0, *repeats] for c in recipes]:
            photos = items + (sellers if rep else [])
            counts = [1] * len(items) + [rep] * (len(photos) - len(items))
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                # without --recipe, each mode's own: catalog mode's (with shop photos) trains as a classifier
                cfg = FinetuneConfig(backbone=args.model, **recipe) if recipe else \
                    FinetuneConfig.for_catalog(args.model, catalog_mode=bool(rep))
                res = finetune_backbone(photos, [t.product_id for t in photos], tmp, cfg, repeats=counts)
                secs = time.perf_counter() - t0
                m = res.metrics
                label = f"fine-tuned ({m['train_from_block']}:{m['views']}:{m['epochs']})"
                tuned = create_embedder(res.embedder_name)
                variants = {"": tuned}
                if args.companions:
                    variants[" + companions"] = joined(tuned, companions_for(args.model))
                for suffix, emb in variants.items():
                    T1 = embed_items(query_embedder(emb, args.query_views), train, desc="train photos").vectors
                    for v, S1 in shop_vectors(emb).items():
                        r = scores(T1, y, fit, S1, shop_y, args.model)
                        name = f"{label}{' + shop photos x %d' % rep if rep else ''}{suffix}{gallery_label(v)}"
                        if rep:
                            print(f"| dev-{kind} | {name} | - | - | {r['catalog']:.3f} | {secs:.0f} |", flush=True)
                        else:
                            print(f"| dev-{kind} | {name} | {r['plain']:.3f} | {r['adapter']:.3f} "
                                  f"| {r['catalog']:.3f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()

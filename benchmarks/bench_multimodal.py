"""Text and OCR on grocery: fusion in catalog search, text queries, zero-shot categories.

    python benchmarks/bench_multimodal.py [--data ../shared/data] [--json PATH] [--seeds 5]

Everything trains on ``train.csv`` (and the catalog's own shop photos and
texts) only; val photos are only scored.

1. OCR + title fusion, retrieval-shop in catalog mode, through
   ``productlens eval retrieval``'s function: image only (the reference, the
   whole train.csv adapts the catalog) beside ``--text --products`` (OCR of
   gallery and query photos fused with product titles; the fusion weight is
   chosen on training photos, cross-fitted over products:
   ``productlens.pipeline.fusion.choose_text_weight``). mAP@1000 on the
   queries of packaged products and on fruit and vegetables separately.
2. Text query -> product: for each of the 81 products, the query is its
   category name plus one word drawn at random from its description that is
   not in its title, name or category (``--seeds`` draws). productlens's
   TextSearch (BM25, then MiniLM among ties) beside MiniLM alone (the plain
   way: cosine of sentence vectors) and BM25 alone. Also text -> shop photo
   through the image-text alignment (the photos' own texts unused).
3. Zero-shot categories: the 296 val photos named among the 42 category names
   by text alone (image -> text alignment, no category classifier). (a) the
   alignment trained on the catalog (shop photos + train photos with their
   product titles); (b) trained only on products of even category ids and
   scored on photos of odd categories, among all 42 names and among the 21
   never-seen names. Chance is 1/42 and 1/21. Each with the alignment alone
   and mixed with the backbone's ImageNet concepts (``productlens.heads.conse``,
   the default); the strict part also with the concepts alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from productlens.config import ZERO_SHOT_IMAGENET_WEIGHT
from productlens.data.readers import read_gallery, read_labelled_csv, read_products_jsonl, read_queries
from productlens.eval.metrics import average_precision_at_k, relevance
from productlens.eval.retrieval import attach_product_text, evaluate_retrieval
from productlens.heads.align import fit_alignment, product_text
from productlens.heads.conse import get_concepts, mix
from productlens.models.embedders import get_embedder
from productlens.models.text import get_text_encoder
from productlens.pipeline.catalog_build import build_catalog
from productlens.pipeline.embed import embed_items
from productlens.pipeline.multimodal import fit_catalog_alignment, photos_for_text, zero_shot
from productlens.pipeline.text_search import TextSearch, products_from_jsonl

ROOT = Path(__file__).resolve().parents[1]


def per_query_ap(rankings_npy: Path, gallery_csv: Path, queries_csv: Path) -> tuple[np.ndarray, list]:
    gallery = read_gallery(gallery_csv)
    queries = read_queries(queries_csv)
    ids = np.array([g.id for g in gallery])
    labels = np.array([g.product_id for g in gallery])
    order = np.argsort(ids)
    ids, labels = ids[order], labels[order]
    r = np.load(rankings_npy)
    pos = np.searchsorted(ids, np.maximum(r, 0)).clip(max=len(ids) - 1)
    as_index = np.where((r >= 0) & (ids[pos] == r), pos, -1)
    q = np.array([x.product_id for x in queries])
    rel = relevance(as_index, labels, q)
    n_pos = np.array([(labels == p).sum() for p in q])
    return average_precision_at_k(rel, n_pos, 1000), queries


def fusion(g: Path, work: Path) -> dict:
    shop = g / "retrieval-shop"
    products = read_products_jsonl(g / "products.jsonl")
    out = {}
    for name, kw in (("image only", {}), ("--text --products", {"text": True, "products": g / "products.jsonl"})):
        npy = work / f"rank-{len(out)}.npy"
        m = evaluate_retrieval(shop / "gallery.csv", shop / "queries.csv", train_csv=g / "train.csv",
                               catalog_mode=True, finetune=False, rankings_out=npy, **kw)
        ap, queries = per_query_ap(npy, shop / "gallery.csv", shop / "queries.csv")
        dept = np.array([products[q.product_id]["department"] for q in queries])
        m["packages"] = float(ap[dept == "Packages"].mean())
        m["fruit_veg"] = float(ap[dept != "Packages"].mean())
        m["n_packages"] = int((dept == "Packages").sum())
        m["n_packaged_products"] = len({q.product_id for q, d in zip(queries, dept) if d == "Packages"})
        out[name] = m
        print(f"{name}: mAP@1000 {m['map@1000']:.3f}  packages {m['packages']:.3f}  fruit/veg {m['fruit_veg']:.3f}"
              f"  {m['seconds']} s" + (f"  weight {m['text_weight']}" if "text_weight" in m else ""), flush=True)
    return out


def _stem(w: str) -> str:
    w = w.lower()
    for suf in ("es", "s"):
        if w.endswith(suf) and len(w) > len(suf) + 2:
            return w[:-len(suf)]
    return w


def text_queries(products: dict, seed: int) -> tuple[list[str], np.ndarray]:
    """Category name + one random description word not in the title, name or category."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    rng = random.Random(seed)
    qs, truth = [], []
    for pid, r in sorted(products.items()):
        own = {_stem(w) for w in re.findall(r"\w+", " ".join([r["title"], r["name"].replace("-", " "),
                                                             r["category_name"]]))}
        cands = sorted({w.lower() for w in re.findall(r"[^\W\d_]+", r.get("description", ""))
                        if len(w) > 2 and w.lower() not in ENGLISH_STOP_WORDS and _stem(w) not in own})
        word = rng.choice(cands) if cands else ""
        qs.append(f"{r['category_name'].replace('-', ' ')} {word}".strip())
        truth.append(pid)
    return qs, np.array(truth)


def text_query_bench(g: Path, catalog, seeds: int) -> dict:
    products = read_products_jsonl(g / "products.jsonl")
    ts = TextSearch(products_from_jsonl(products))
    pids = np.array([p.product_id for p in ts.products])
    res: dict[str, list[float]] = {"MiniLM alone (baseline)": [], "BM25 alone": [], "productlens": [],
                                   "text -> shop photo (alignment)": []}
    t0 = time.perf_counter()
    for seed in range(seeds):
        qs, truth = text_queries(products, seed)
        lexical, dense = ts.rankers(qs)
        res["MiniLM alone (baseline)"].append(float((pids[dense.argmax(1)] == truth).mean()))
        res["BM25 alone"].append(float((pids[lexical.argmax(1)] == truth).mean()))
        res["productlens"].append(float((pids[ts.scores(qs).argmax(1)] == truth).mean()))
        hits = [photos_for_text(catalog, q, k=1)[0].product_id for q in qs]
        res["text -> shop photo (alignment)"].append(float((np.array(hits) == truth).mean()))
    out = {k: {"mean": float(np.mean(v)), "per_seed": v} for k, v in res.items()}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["example_queries"] = text_queries(products, 0)[0][:8]
    for k, v in res.items():
        print(f"text query top-1, {k}: {np.mean(v):.3f}", flush=True)
    return out


def zero_shot_bench(g: Path, catalog, train, val) -> dict:
    categories = sorted({(v.extra.get("category_id"), v.category) for v in train + val})
    names = [c for _, c in sorted({(int(i), n) for i, n in categories})]
    truth = [v.category for v in val]
    t0 = time.perf_counter()
    a = {}
    for label, w in (("alignment", 0.0), ("mixed", ZERO_SHOT_IMAGENET_WEIGHT)):
        pred = zero_shot(catalog, [v.image for v in val], names, k=1, imagenet_weight=w)
        a[label] = float(np.mean([p is not None and p[0][0] == t for p, t in zip(pred, truth)]))
    # (b) strict: the alignment never sees a photo or a text of the odd categories
    products = read_products_jsonl(g / "products.jsonl")
    emb = get_embedder()
    enc = get_text_encoder()
    seen = {pid for pid, r in products.items() if int(r["category_id"]) % 2 == 0}
    pairs = [t for t in train if t.product_id in seen]
    shop = [p for pid, p in products.items() if pid in seen]
    xs = embed_items(emb, [t.image for t in pairs] + [p["shop_image"] for p in shop], progress=False)
    all_pids = [t.product_id for t in pairs] + [p["product_id"] for p in shop]
    kept = [all_pids[i] for i in xs.ok]
    texts = enc.encode([product_text(products[p]["title"], products[p]["category_name"], products[p]["name"])
                        for p in kept])
    _, inv, cnt = np.unique(kept, return_inverse=True, return_counts=True)
    align = fit_alignment(xs.vectors, texts, image_space="efficientnet-lite2", text_encoder=enc.name,
                          sample_weight=1.0 / cnt[inv])
    unseen_val = [v for v in val if v.product_id not in seen]
    vv = embed_items(emb, [v.image for v in unseen_val], progress=False)
    name_vecs = enc.encode([n.replace("-", " ") for n in names])
    sims = align.similarity(vv.vectors, name_vecs)
    con = get_concepts(enc.name).embed([unseen_val[i].image for i in vv.ok])
    assert len(con) == len(vv), "a photo read for the alignment failed for the concepts"
    vt = np.array([unseen_val[i].category for i in vv.ok])
    unseen_names = sorted({products[p]["category_name"] for p in products if p not in seen})
    cols = [names.index(n) for n in unseen_names]
    b = {}
    con_sims = con.vectors @ name_vecs.T
    for label, table in (("alignment", sims), ("concepts", con_sims),
                         ("mixed", mix(sims, con_sims, ZERO_SHOT_IMAGENET_WEIGHT))):
        b[label] = {"among_all": float((np.array(names)[table.argmax(1)] == vt).mean()),
                    "among_unseen": float((np.array(unseen_names)[table[:, cols].argmax(1)] == vt).mean())}
    out = {"catalog_top1": a["mixed"], "catalog_top1_alignment_only": a["alignment"],
           "mix_weight": ZERO_SHOT_IMAGENET_WEIGHT,
           "heldout_top1_among_42": b["mixed"]["among_all"], "heldout_top1_among_unseen": b["mixed"]["among_unseen"],
           "heldout": b, "n_val": len(val), "n_heldout_val": len(vt), "n_unseen_names": len(unseen_names),
           "chance_42": 1 / len(names), "chance_unseen": 1 / len(unseen_names),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(f"zero-shot category top-1: catalog alignment {a['alignment']:.3f}, mixed with ImageNet concepts "
          f"(weight {ZERO_SHOT_IMAGENET_WEIGHT}) {a['mixed']:.3f}", flush=True)
    for label, r in b.items():
        print(f"  held-out categories, {label}: {r['among_all']:.3f} among {len(names)}, {r['among_unseen']:.3f} "
              f"among {len(unseen_names)} unseen (chance {1 / len(names):.3f} / {1 / len(unseen_names):.3f})",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--skip-fusion", action="store_true")
    ap.add_argument("--json", type=Path, help="Also write the raw results here.")
    args = ap.parse_args()
    g = args.data / "grocery"
    train = read_labelled_csv(g / "train.csv", label="product_id")
    val = read_labelled_csv(g / "val.csv", label="product_id")
    with tempfile.TemporaryDirectory(prefix="bench-mm-") as tmp:
        work = Path(tmp)
        fus = None if args.skip_fusion else fusion(g, work)
        gallery = attach_product_text(read_gallery(g / "retrieval-shop" / "gallery.csv"),
                                      read_products_jsonl(g / "products.jsonl"))
        t0 = time.perf_counter()
        catalog, _ = build_catalog(gallery, work / "catalog", train=train, use_gallery_labels=True, progress=False)
        with catalog:
            align = fit_catalog_alignment(catalog, train)
            align["seconds"] = round(time.perf_counter() - t0, 1)
            tq = text_query_bench(g, catalog, args.seeds)
            zs = zero_shot_bench(g, catalog, train, val)
    print(f"\n# Multimodal on grocery ({platform.machine()}, {platform.node()})\n")
    if fus:
        a, b = fus["image only"], fus["--text --products"]
        print("| retrieval-shop, catalog mode | mAP@1000 all | packages | fruit & veg | weight | seconds |")
        print("|---|---|---|---|---|---|")
        for name, m in fus.items():
            print(f"| {name} | {m['map@1000']:.3f} | {m['packages']:.3f} | {m['fruit_veg']:.3f} | "
                  f"{m.get('text_weight', '')} | {m['seconds']} |")
        d_pack, d_fv = b["packages"] - a["packages"], b["fruit_veg"] - a["fruit_veg"]
        print(f"\npackages {d_pack:+.3f} (target >= +0.05: {'met' if d_pack >= 0.05 else 'not met'}); "
              f"fruit & veg {d_fv:+.3f} (target >= 0: {'met' if d_fv >= 0 else 'not met'}); "
              f"{a['n_packages']} queries of {a['n_packaged_products']} packaged products")
    print(f"\n| text query -> product ({args.seeds} draws) | top-1 |\n|---|---|")
    for k, v in tq.items():
        if isinstance(v, dict):
            print(f"| {k} | {v['mean']:.3f} |")
    print(f"\ntarget >= 0.80: {'met' if tq['productlens']['mean'] >= 0.80 else 'not met'}; "
          f"example queries: {', '.join(tq['example_queries'])}")
    print(f"\n| zero-shot category top-1 on val | catalog alignment, all {round(1 / zs['chance_42'])} names "
          f"| held-out categories, all names | among the {zs['n_unseen_names']} unseen names |\n|---|---|---|---|")
    print(f"| alignment only | {zs['catalog_top1_alignment_only']:.3f} | {zs['heldout']['alignment']['among_all']:.3f}"
          f" | {zs['heldout']['alignment']['among_unseen']:.3f} |")
    print(f"| ImageNet concepts only | | {zs['heldout']['concepts']['among_all']:.3f} | "
          f"{zs['heldout']['concepts']['among_unseen']:.3f} |")
    print(f"| **productlens** (mixed, weight {zs['mix_weight']}) | {zs['catalog_top1']:.3f} | "
          f"{zs['heldout_top1_among_42']:.3f} | {zs['heldout_top1_among_unseen']:.3f} |")
    print(f"| chance | {zs['chance_42']:.3f} | {zs['chance_42']:.3f} | {zs['chance_unseen']:.3f} |")
    print(f"\nalignment trained in {align['seconds']} s (catalog build included); zero-shot part {zs['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps({"fusion": fus, "text_query": tq, "zero_shot": zs, "align": align},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()

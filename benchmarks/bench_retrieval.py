"""Retrieval on the grocery sets: productlens beside the plain backbone and LDA, same run.

    python benchmarks/bench_retrieval.py [--data ../shared/data/grocery] [--json out.json]

For each set (retrieval-shop challenge and catalog, retrieval-vpr, retrieval-open)
it prints mAP@1000 / top-1 of
  * plain: the backbone's vectors (GeM, cosine, flat search), no training;
  * LDA: scikit-learn LinearDiscriminantAnalysis fitted on the training photos'
    backbone vectors (in catalog mode also on the labelled shop photos), cosine;
  * productlens: `evaluate_retrieval` end to end (fine-tuning the backbone's
    last blocks on the training photos, embedding, adaptation, indexing,
    re-ranking), with its wall time; `--no-finetune` skips the fine-tuning.
Nothing here is tuned on the queries: every setting is the library default.
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
from productlens.data.readers import read_gallery, read_labelled_csv, read_queries
from productlens.eval.metrics import retrieval_metrics
from productlens.eval.retrieval import evaluate_retrieval
from productlens.models.embedders import get_embedder
from productlens.models.embedders.base import l2_normalize
from productlens.pipeline.embed import embed_items

ROOT = Path(__file__).resolve().parents[1]
SETS = [("retrieval-shop", "challenge", "train.csv"), ("retrieval-shop", "catalog", "train.csv"),
        ("retrieval-vpr", "challenge", "train.csv"), ("retrieval-open", "challenge", "retrieval-open/train.csv")]
TARGETS = {("retrieval-shop", "challenge"): 0.75, ("retrieval-shop", "catalog"): 0.92,
           ("retrieval-vpr", "challenge"): 0.85, ("retrieval-open", "challenge"): 0.70}


def _vectors(paths: list[str], cache: dict[str, np.ndarray], model: str) -> np.ndarray:
    missing = [p for p in dict.fromkeys(paths) if p not in cache]
    if missing:
        res = embed_items(get_embedder(model), missing, desc="baseline features")
        for i, v in zip(res.ok.tolist(), res.vectors):
            cache[missing[i]] = v
    return np.stack([cache[p] for p in paths])


def _score(q: np.ndarray, g: np.ndarray, g_labels: np.ndarray, q_labels: np.ndarray) -> dict:
    order = np.argsort(-(l2_normalize(q) @ l2_normalize(g).T), axis=1)[:, :1000]
    return retrieval_metrics(order, g_labels, q_labels)


def run(data: Path, model: str, finetune: bool = True) -> list[dict]:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    cache: dict[str, np.ndarray] = {}
    rows = []
    for name, mode, train_rel in SETS:
        folder = data / name
        gallery, queries = read_gallery(folder / "gallery.csv"), read_queries(folder / "queries.csv")
        train = read_labelled_csv(data / train_rel)
        g_labels = np.array([g.product_id for g in gallery])
        q_labels = np.array([q.product_id for q in queries])
        G = _vectors([g.image for g in gallery], cache, model)
        Q = _vectors([q.image for q in queries], cache, model)
        T = _vectors([t.image for t in train], cache, model)
        plain = _score(Q, G, g_labels, q_labels)
        X, y = T, np.array([t.product_id for t in train])
        if mode == "catalog":
            keep = g_labels != -1
            X, y = np.vstack([T, G[keep]]), np.concatenate([y, g_labels[keep]])
        lda = LinearDiscriminantAnalysis().fit(X, y)
        lda_m = _score(lda.transform(Q), lda.transform(G), g_labels, q_labels)
        ablation = _ablation(model, T, np.array([t.product_id for t in train]), Q, G, g_labels, q_labels,
                             mode == "catalog", [q.image for q in queries], [g.image for g in gallery])
        t0 = time.perf_counter()
        ours = evaluate_retrieval(folder / "gallery.csv", folder / "queries.csv", train_csv=data / train_rel,
                                  catalog_mode=mode == "catalog", embedder=model, finetune=finetune,
                                  progress=False)
        rows.append({"set": name, "mode": mode, "queries": len(queries), "gallery": len(gallery),
                     "plain": plain["map@1000"], "lda": lda_m["map@1000"], "productlens": ours["map@1000"],
                     "plain_top1": plain["top1"], "lda_top1": lda_m["top1"], "productlens_top1": ours["top1"],
                     "target": TARGETS[(name, mode)], "seconds": round(time.perf_counter() - t0, 1),
                     **ablation})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _ablation(model: str, T, y, Q, G, g_labels, q_labels, catalog: bool, q_images, g_images) -> dict:
    """The adapter's parts and the re-ranking options, on the same backbone vectors."""
    from productlens.heads.adapter import fit_adapter
    from productlens.pipeline import verify
    from productlens.pipeline.rerank import alpha_qe, dba

    def ranked(q, g):
        return np.argsort(-(q @ g.T), axis=1)[:, :1000]

    out = {}
    centred_q, centred_g = l2_normalize(Q - T.mean(0)), l2_normalize(G - G.mean(0))
    out["centring"] = retrieval_metrics(ranked(centred_q, centred_g), g_labels, q_labels)["map@1000"]
    ad = fit_adapter(model, T, y, gallery_vectors=G, gallery_labels=g_labels if catalog else None)
    q, g = ad.transform(Q, "query"), ad.transform(G, "gallery")
    out["adapter"] = retrieval_metrics(ranked(q, g), g_labels, q_labels)["map@1000"]

    def qe(qv, gv, k=2):
        s = qv @ gv.T
        idx = np.argsort(-s, axis=1)[:, :k]
        return alpha_qe(qv, np.take_along_axis(s, idx, 1), gv[idx])

    out["adapter+qe"] = retrieval_metrics(ranked(qe(q, g), g), g_labels, q_labels)["map@1000"]
    # spatial verification of the top results, as catalog search does it (gallery features read once)
    s = qe(q, g) @ g.T
    order = np.argsort(-s, axis=1)
    ids = order[:, :1000]
    verifier = verify.SpatialVerifier(lambda idx: [{"image": str(g_images[i])} for i in idx])
    q_imgs = [load_image(im, target=verify.LONG_SIDE) for im in q_images]
    _, v_ids = verifier.rerank(np.take_along_axis(s, ids, 1), ids, q_imgs)
    out["adapter+qe+verify"] = retrieval_metrics(v_ids, g_labels, q_labels)["map@1000"]
    g_dba = dba(g, k=3)
    out["adapter+dba+qe"] = retrieval_metrics(ranked(qe(q, g_dba), g_dba), g_labels, q_labels)["map@1000"]
    return out


def table(rows: list[dict], model: str, finetune: bool = True) -> str:
    out = [f"Backbone `{model}`; mAP@1000 (top-1 in brackets); productlens "
           f"({'last blocks fine-tuned' if finetune else 'frozen backbone'}) time = end to end, training included.",
           "", "| set | mode | queries x gallery | plain | LDA | productlens | target | met | seconds |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['set']} | {r['mode']} | {r['queries']} x {r['gallery']} "
                   f"| {r['plain']:.3f} ({r['plain_top1']:.2f}) | {r['lda']:.3f} ({r['lda_top1']:.2f}) "
                   f"| **{r['productlens']:.3f}** ({r['productlens_top1']:.2f}) "
                   f"| >= {r['target']:.2f} | {'yes' if r['productlens'] >= r['target'] else 'no'} | {r['seconds']} |")
    out += ["", "Ablation on the frozen backbone's vectors (no fine-tuning; mAP@1000; no catalog grouping):", "",
            "| set | mode | centring only | adapter | adapter + alpha-QE | adapter + alpha-QE + verification "
            "(default) | adapter + DBA + alpha-QE |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['set']} | {r['mode']} | {r['centring']:.3f} | {r['adapter']:.3f} | "
                   f"{r['adapter+qe']:.3f} | {r['adapter+qe+verify']:.3f} | {r['adapter+dba+qe']:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    ap.add_argument("--model", default=DEFAULT_EMBEDDER)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-finetune", action="store_true", help="productlens on the frozen backbone")
    args = ap.parse_args()
    if not (args.data / "retrieval-shop").is_dir():
        sys.exit(f"grocery data not found at {args.data}")
    rows = run(args.data, args.model, finetune=not args.no_finetune)
    print(table(rows, args.model, finetune=not args.no_finetune))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

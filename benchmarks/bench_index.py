#!/usr/bin/env python
"""Benchmark the embedded store's approximate index against exact (faiss flat) search.

Synthetic data that looks like product embeddings: a two-level hierarchy of
Gaussian clusters (categories -> products -> photos), Zipf-like product sizes
and per-product spread, everything L2-normalised. Queries come from the same
products with a little more spread (the shop-photo vs. user-photo gap).
Uniform random vectors would make every approximate index look useless, so
they are not used.

    python benchmarks/bench_index.py --n 1000000 --dim 1280 --queries 200 --k 100 \
        --json docs/bench_index_result.json

Reports, for exact search and for the store's approximate index: build time,
memory (growth of the process's anonymous RSS, i.e. excluding the page cache
of the memory-mapped segment files), p50/p99 single-query latency and
recall@k against exact search; prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import faiss

from productlens.index import open_store


# ----------------------------------------------------------------------- data
def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class ClusteredData:
    """Deterministic, chunk-by-chunk generator of clustered unit vectors."""

    def __init__(self, dim: int, n_clusters: int = 5000, seed: int = 0, per_category: int = 25,
                 spread: float = 1.2, categories_per_department: int = 20, style_rank: int = 32,
                 style_share: float = 0.7):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        n_cat = max(1, n_clusters // per_category)
        n_dept = max(1, n_cat // categories_per_department)
        # departments -> categories -> products: each level a Gaussian around its parent
        depts = _normalise(rng.standard_normal((n_dept, dim), dtype=np.float32))
        cat_dept = rng.integers(0, n_dept, n_cat)
        cats = _normalise(depts[cat_dept] + 0.9 * _normalise(rng.standard_normal((n_cat, dim), dtype=np.float32)))
        self.category = rng.integers(0, n_cat, n_clusters)
        offs = _normalise(rng.standard_normal((n_clusters, dim), dtype=np.float32))
        self.centres = _normalise(cats[self.category] + 0.75 * offs)
        # noise norm per product (relative to the unit centre)
        self.sigma = (spread * rng.uniform(0.45, 0.85, n_clusters)).astype(np.float32)
        w = 1.0 / (np.arange(n_clusters) + 20.0) ** 0.8
        self.weights = rng.permutation(w / w.sum())
        # most of the noise lies in a shared low-rank "style" subspace (pose, light, background),
        # as in real embeddings; isotropic noise alone hardly changes any ranking in 1280-d
        self.style_share = float(style_share) if style_rank else 0.0
        self.style = (np.linalg.qr(rng.standard_normal((dim, style_rank)))[0].T.astype(np.float32)
                      if style_rank else None)

    def sample(self, n: int, rng: np.random.Generator, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        c = rng.choice(len(self.centres), size=n, p=self.weights)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32)
        noise *= np.float32(np.sqrt((1 - self.style_share) / self.dim))
        if self.style is not None:
            r = self.style.shape[0]
            z = rng.standard_normal((n, r), dtype=np.float32) * np.float32(np.sqrt(self.style_share / r))
            noise += z @ self.style
        noise *= (spread * self.sigma[c])[:, None]
        noise += self.centres[c]
        return _normalise(noise), c

    def chunks(self, n: int, chunk: int):
        """Yield (start, vectors, cluster) for the n base vectors, chunk rows at a time."""
        for i, start in enumerate(range(0, n, chunk)):
            rng = np.random.default_rng([self.seed, 1, i])
            x, c = self.sample(min(chunk, n - start), rng)
            yield start, x, c

    def queries(self, n: int) -> np.ndarray:
        return self.sample(n, np.random.default_rng([self.seed, 2]), spread=1.15)[0]


# -------------------------------------------------------------------- metrics
def rss_mib() -> dict[str, float]:
    """Current RssAnon / RssFile of this process in MiB (Linux), else ru_maxrss."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(val.split()[0]) / 1024
    except OSError:  # pragma: no cover - not Linux
        import resource

        out["RssAnon"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["RssFile"] = 0.0
    return out


def latencies(search, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Single-query latencies (ms) and the ids found."""
    times, found = [], []
    search(queries[:1], k)  # warm-up
    for i in range(queries.shape[0]):
        t = time.perf_counter()
        _, ids = search(queries[i : i + 1], k)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    return np.asarray(times), np.stack(found)


def exact_truth(data: "ClusteredData", n: int, chunk: int, q: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k of every query, streamed over the generated chunks (for n too big for RAM)."""
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    for start, x, _ in data.chunks(n, chunk):
        s = q @ x.T
        ids = np.broadcast_to(np.arange(start, start + x.shape[0]), s.shape)
        cs, ci = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1)
        top = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, top, 1), np.take_along_axis(ci, top, 1)
    return best_i


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([np.intersect1d(f[f >= 0], t).size / k for f, t in zip(found, truth)]))


def fmt_table(rows: list[dict], k: int) -> str:
    exact = next(r for r in rows if r["name"].startswith("exact"))
    lines = [
        f"| index | parameters | build (s) | memory (MiB) | disk (MiB) | p50 (ms) | p99 (ms) | recall@{k} "
        "| speed-up (p50) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    num = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        speed = "n/a" if exact["p50_ms"] is None else f"{exact['p50_ms'] / r['p50_ms']:.1f}x"
        lines.append(
            f"| {r['name']} | {r['params']} | {r['build_s']:.1f} | {num(r['memory_mib'], '.0f')} | "
            f"{num(r.get('disk_mib'), '.0f')} | {num(r['p50_ms'], '.2f')} | {num(r['p99_ms'], '.2f')} | "
            f"{r['recall']:.4f} | {speed} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="catalog vectors")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=5000, help="products (Gaussian cluster centres)")
    ap.add_argument("--spread", type=float, default=1.2, help="scale of the per-product noise")
    ap.add_argument("--style-rank", type=int, default=32,
                    help="rank of the shared subspace most of the noise lies in (0: isotropic noise)")
    ap.add_argument("--style-share", type=float, default=0.7, help="share of the noise in that subspace")
    ap.add_argument("--chunk", type=int, default=50_000, help="rows generated / upserted at a time")
    ap.add_argument("--exact-max", type=int, default=None,
                    help="store's exact_max (default: n-1, so the approximate index is used)")
    ap.add_argument("--store-exact", action="store_true",
                    help="measure the store's own exact scan (exact_max = n, no approximate index) instead")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the store's choice)")
    ap.add_argument("--nprobe", type=int, default=None, help="IVF probes (default: tuned by the store)")
    ap.add_argument("--rerank", type=int, default=None, help="store's rerank factor (default: the store's)")
    ap.add_argument("--threads", type=int, default=None, help="faiss threads (default: available cores)")
    ap.add_argument("--store-dir", default=None, help="where to build the store (default: a temp dir, removed)")
    ap.add_argument("--vector-dtype", choices=("float32", "float16"), default="float32",
                    help="how the store keeps its vectors on disk (float16: half the disk and page cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exact", choices=("faiss", "stream"), default="faiss",
                    help="exact baseline: faiss IndexFlatIP in RAM (timed), or only a streamed ground truth "
                         "(for n whose vectors do not fit in RAM, e.g. 10M x 1280 = 51 GB)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--markdown", default=None, help="also write the markdown table (with a header) here")
    args = ap.parse_args(argv)

    threads = args.threads or len(os.sched_getaffinity(0))
    faiss.omp_set_num_threads(threads)
    exact_max = args.n if args.store_exact else args.exact_max if args.exact_max is not None else args.n - 1
    options = {"exact_max": exact_max, "threads": threads,
               "vector_dtype": args.vector_dtype}
    for name in ("nlist", "nprobe", "rerank"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)

    data = ClusteredData(args.dim, args.clusters, args.seed, spread=args.spread,
                         style_rank=args.style_rank, style_share=args.style_share)
    queries = data.queries(args.queries)
    tmp = None
    store_dir = Path(args.store_dir) if args.store_dir else Path(tmp := tempfile.mkdtemp(prefix="bench-index-"))
    need = args.n * args.dim * (4 if args.vector_dtype == "float32" else 2) + args.n * (args.dim + 8) * 2
    free = shutil.disk_usage(store_dir).free
    if free < need:  # vector segments + the IVF file written twice (old and new generation) at worst
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"bench_index: {store_dir} has {free / 1e9:.0f} GB free; {args.n:,} x {args.dim} "
                 f"{args.vector_dtype} vectors plus the SQ8 index need about {need / 1e9:.0f} GB")
    load_start = os.getloadavg()[0]
    log = lambda *a: print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)  # noqa: E731
    rows: list[dict] = []
    try:
        # ---- ingest into the embedded store
        if args.store_dir and (store_dir / "store.sqlite").exists():
            shutil.rmtree(store_dir)
        t0 = time.perf_counter()
        with open_store(store_dir, dim=args.dim, **options) as store:
            for start, x, c in data.chunks(args.n, args.chunk):
                meta = [{"product_id": int(p), "category": f"cat{int(data.category[p]):04d}"} for p in c]
                store.upsert(np.arange(start, start + x.shape[0]), x, meta)
                log(f"ingested {start + x.shape[0]:,}/{args.n:,}")
        ingest_s = time.perf_counter() - t0
        log(f"ingest {ingest_s:.1f}s")

        # ---- approximate index of the store
        gc.collect()
        store = open_store(store_dir, **options)
        len(store)  # load the snapshot (memory-mapped segments)
        m0 = rss_mib()
        t0 = time.perf_counter()
        if args.store_exact:  # at or below its exact_max the store scans its segments, with no index
            ann, params = None, f"exact scan of the segments, {args.vector_dtype}"
        else:
            store.build_index(force=True)
            ann = store._ann.index  # noqa: SLF001 - benchmark reports the chosen parameters
            params = f"IVF{ann.nlist},SQ8 nprobe={ann.nprobe} rerank={store.rerank}x from {args.vector_dtype}"
        build_s = time.perf_counter() - t0
        m1 = rss_mib()
        log(f"store ready {build_s:.1f}s: {params}")
        lat_a, found_a = latencies(store.search, queries, args.k)
        m2 = rss_mib()
        approx = {
            "name": "embedded store (exact)" if args.store_exact else "embedded store (approximate)",
            "params": params,
            "build_s": build_s,
            "memory_mib": m1["RssAnon"] - m0["RssAnon"],
            "file_cache_mib": m2["RssFile"],
            "p50_ms": float(np.percentile(lat_a, 50)),
            "p99_ms": float(np.percentile(lat_a, 99)),
            "disk_mib": disk_mib(store_dir),
            "nlist": int(ann.nlist) if ann is not None else None,
            "nprobe": int(ann.nprobe) if ann is not None else None,
            "rerank": store.rerank,
        }
        log(f"store p50 {approx['p50_ms']:.2f} ms")
        store.close()
        del store, ann
        gc.collect()

        if args.exact == "stream":  # ---- exact ground truth only, streamed (the vectors do not fit in RAM)
            t0 = time.perf_counter()
            truth = exact_truth(data, args.n, args.chunk, queries, args.k)
            log(f"streamed exact ground truth {time.perf_counter() - t0:.1f}s")
            exact = {"name": "exact (streamed brute force, ground truth only)",
                     "params": f"float32 vectors = {args.n * args.dim * 4 / 2**30:.0f} GiB: no in-RAM index",
                     "build_s": 0.0, "memory_mib": None, "p50_ms": None, "p99_ms": None, "recall": 1.0,
                     "truth_s": time.perf_counter() - t0}
        else:
            # ---- exact baseline: faiss flat inner product (all vectors in memory)
            m0 = rss_mib()
            t0 = time.perf_counter()
            flat = faiss.IndexFlatIP(args.dim)
            for _, x, _ in data.chunks(args.n, args.chunk):
                flat.add(x)
            flat_build_s = time.perf_counter() - t0
            m1 = rss_mib()
            log(f"flat build {flat_build_s:.1f}s")
            _, truth = flat.search(queries, args.k)
            lat_e, found_e = latencies(flat.search, queries, args.k)
            exact = {
                "name": "exact (faiss IndexFlatIP)",
                "params": "brute force, float32",
                "build_s": flat_build_s,
                "memory_mib": m1["RssAnon"] - m0["RssAnon"],
                "p50_ms": float(np.percentile(lat_e, 50)),
                "p99_ms": float(np.percentile(lat_e, 99)),
                "recall": recall_at(found_e, truth),
            }
            del flat
        approx["recall"] = recall_at(found_a, truth)
        rows = [exact, approx]
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    table = fmt_table(rows, args.k)
    setup = (
        f"{args.n:,} x {args.dim} clustered vectors ({args.clusters} products) kept as {args.vector_dtype}, "
        f"{args.queries} single queries, k={args.k}, {threads} threads, "
        f"{platform.processor() or platform.machine()}, faiss {faiss.__version__}; "
        f"store ingest {ingest_s:.0f}s; load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    print(setup)
    print()
    print(table)
    result = {"setup": vars(args) | {"threads": threads, "ingest_s": ingest_s, "faiss": faiss.__version__},
              "rows": rows, "table": table, "summary": setup}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"## Index benchmark\n\n{setup}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

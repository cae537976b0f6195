#!/usr/bin/env python
"""Benchmark the Milvus store backend against the embedded store on the same clustered vectors.

    python benchmarks/bench_milvus.py --n 200000 --dim 1280 --queries 200 --k 100 \
        --json docs/bench_milvus_result.json --markdown docs/bench_milvus_result.md

Starts a local standalone Milvus (``pip install milvus``; or ``--uri`` for a
running server), then for each store: ingest ("build": upserts, flush and index
build until searches use the index), memory (RSS of the Milvus server
processes after the build, all collections so far included, or the growth
of this process's anonymous RSS for the embedded store, whose vectors are
memory-mapped files), p50/p99
single-query latency through the productlens ``Store`` interface, and
recall@k against exact search (numpy brute force over the same vectors).
The data are bench_index.py's clustered vectors (departments -> categories ->
products -> photos), never uniform random ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import ClusteredData, exact_truth, latencies, recall_at, rss_mib  # noqa: E402

from productlens.index import open_store  # noqa: E402


def milvus_rss_mib() -> float:
    """Resident memory of the local Milvus server processes (MiB)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"milvus" in cmd and b"run" in cmd:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run_store(name: str, params: str, open_fn, data, n, chunk, q, k, truth, memory_fn, delta=True) -> dict:
    before = memory_fn() if delta else 0.0
    t0 = time.perf_counter()
    store = open_fn()
    for start, x, c in data.chunks(n, chunk):
        ids = np.arange(start, start + x.shape[0])
        store.upsert(ids, x, [{"category": f"c{int(v) % 50}"} for v in c])
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {start + x.shape[0]:,} vectors", file=sys.stderr, flush=True)
    store.build_index()
    store.search(q[:1], k)
    build = time.perf_counter() - t0
    times, found = latencies(store.search, q, k)
    row = {"name": name, "params": params, "build_s": build, "memory_mib": memory_fn() - before,
           "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
           "recall": recall_at(found, truth)}
    store.close()
    print(f"[{time.strftime('%H:%M:%S')}] {row}", file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=20_000)
    ap.add_argument("--indexes", default="flat,ivf_sq8,hnsw", help="Milvus indexes to measure")
    ap.add_argument("--no-embedded", action="store_true", help="measure Milvus only")
    ap.add_argument("--uri", default=None, help="a running Milvus (default: start a local one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)

    data = ClusteredData(args.dim)
    q = data.queries(args.queries)
    t = time.perf_counter()
    truth = exact_truth(data, args.n, args.chunk, q, args.k)
    print(f"exact ground truth: {time.perf_counter() - t:.1f}s", file=sys.stderr)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_milvus"))
    server = None
    try:
        emb_opts = {"exact_max": min(200_000, args.n - 1)} if args.n > 200_000 else {}
        if not args.no_embedded:
            rows.append(run_store("embedded store", "exact" if args.n <= 200_000 else "IVF,SQ8 + rerank",
                                  lambda: open_store(tmp / "emb", dim=args.dim, **emb_opts), data, args.n,
                                  args.chunk, q, args.k, truth, lambda: rss_mib()["RssAnon"]))
        uri = args.uri
        if uri is None:
            from milvus import MilvusServer

            server = MilvusServer()
            server.set_base_dir(str(tmp / "milvus"))
            server.start()
            uri = f"http://127.0.0.1:{server.listen_port}"
        for index in args.indexes.split(","):
            coll = f"bench_{index}"
            rows.append(run_store(f"Milvus 2.3 ({index})", index,
                                  lambda: open_store(coll, dim=args.dim, backend="milvus", uri=uri, index=index),
                                  data, args.n, args.chunk, q, args.k, truth, milvus_rss_mib, delta=False))
            with open_store(coll, backend="milvus", uri=uri) as s:
                s.drop()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    head = (f"{args.n:,} x {args.dim} float32 clustered vectors, {args.queries} single queries, k={args.k}, "
            f"{os.cpu_count()} cores, {platform.machine()}; build = upserts + flush + index until searches use it")
    lines = [f"| store | build (s) | memory (MiB) | p50 (ms) | p99 (ms) | recall@{args.k} |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['build_s']:.1f} | {r['memory_mib']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['recall']:.4f} |" for r in rows]
    table = "\n".join(lines)
    print(head + "\n\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": head, "rows": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(f"## Milvus backend vs embedded store ({args.n:,} x {args.dim})\n\n"
                                       f"```\npython benchmarks/bench_milvus.py {' '.join(argv or sys.argv[1:])}\n```\n\n"
                                       f"{head}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Disk reads of the embedded store when its vectors are not in the page cache.

A store whose segments outgrow the page cache reads its vectors from disk. The
kernel's read-ahead (``/sys/block/*/queue/read_ahead_kb``; 8 MB on this machine's
disk) turns each scattered row that re-ranking or a gather touches into megabytes
of reads. Once the segments are larger than half the memory, the store maps them
with ``MADV_RANDOM``, while its sequential scans read whole blocks from the files
(``productlens.index.embedded.segments``;
``$PRODUCTLENS_SEGMENT_ACCESS`` forces either way). This benchmark runs both
(``normal`` and ``random``) in the same run on a store whose segment files are
evicted from the page cache before every measured operation
(``posix_fadvise(DONTNEED)`` with the store closed), which is what every read
looks like once the vectors are several times larger than the memory:

    python benchmarks/bench_cold_reads.py --n 1000000 --dim 1280 --vector-dtype float16

Operations: gathering ``--gathers`` scattered rows (``Store.vectors``), single-query
approximate searches (each re-ranks about 200 rows from the segments), and one
exact search (a sequential scan of every segment). For each: wall time and the
bytes this process read from disk (``read_bytes`` of ``/proc/self/io``).

Second table: a store that does not fit in memory, the case at 10M vectors on this
machine, reproduced at a smaller size by running the searches inside a memory
cgroup (``--memory-limit-mb``; default: the approximate index plus half the
segments). ``--queries`` single-query searches after 5 warm-up ones, in each mode
(``normal``, ``random``, and ``auto``, which must find ``random`` from the cgroup's
limit). Needs root to create the cgroup; skipped with a message otherwise. Linux only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import ClusteredData  # noqa: E402

from productlens.index import open_store  # noqa: E402
from productlens.index.embedded.segments import ACCESS_ENV, memory_bytes  # noqa: E402


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes"):
                return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def evict(store_dir: Path) -> None:
    """Drop the store's segment files from the page cache (the store must be closed)."""
    for p in store_dir.glob("seg-*.npy"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_ahead_kb(path: Path) -> str:
    """The read-ahead setting of the block device that holds ``path``."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (sys_dev / "queue", sys_dev.resolve().parent / "queue"):
        if (queue / "read_ahead_kb").exists():
            return f"{(queue / 'read_ahead_kb').read_text().strip()} KB"
    return "unknown"


@contextmanager
def memory_cgroup(limit: int):
    """Run the body inside a new memory cgroup limited to ``limit`` bytes (cgroup v1 or v2)."""
    parent = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                parent, limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
                break
            if controllers == "" and (Path("/sys/fs/cgroup") / path.lstrip("/") / "cgroup.controllers").exists():
                parent, limit_file = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
    if parent is None:
        raise OSError("no memory cgroup found")
    child = parent / f"bench-cold-{os.getpid()}"
    child.mkdir()
    try:
        (child / limit_file).write_text(str(limit))
        (child / "cgroup.procs").write_text(str(os.getpid()))
        memory_bytes.cache_clear()  # the store reads its limit once per process
        try:
            yield
        finally:
            (parent / "cgroup.procs").write_text(str(os.getpid()))
            memory_bytes.cache_clear()
    finally:
        for _ in range(50):  # the cgroup goes once its charges are gone
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def limited_run(store_dir: Path, options: dict, queries: np.ndarray, k: int) -> dict:
    """p50 / p99 (ms) and mean MB read of single-query searches, after 5 warm-up searches."""
    evict(store_dir)
    with open_store(store_dir, **options) as st:
        len(st)
        for i in range(5):
            st.search(queries[i:i + 1], k)
        times, reads = [], []
        for i in range(5, queries.shape[0]):
            r0, t0 = read_bytes(), time.perf_counter()
            st.search(queries[i:i + 1], k)
            times.append((time.perf_counter() - t0) * 1000)
            reads.append((read_bytes() - r0) / 1e6)
        chosen = "random" if st._snap.random else "normal"  # noqa: SLF001 - what auto chose
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "mb": float(np.mean(reads)), "chosen": chosen}


def measure(store_dir: Path, options: dict, op) -> tuple[float, float]:
    """(seconds, MB read from disk) of ``op(store)`` on a freshly opened store with a cold cache."""
    evict(store_dir)
    with open_store(store_dir, **options) as st:
        len(st)  # open the snapshot (maps the segments, loads the approximate index)
        r0, t0 = read_bytes(), time.perf_counter()
        op(st)
        return time.perf_counter() - t0, (read_bytes() - r0) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--vector-dtype", choices=("float32", "float16"), default="float16")
    ap.add_argument("--gathers", type=int, default=2000, help="scattered rows gathered at once")
    ap.add_argument("--queries", type=int, default=10, help="cold single-query approximate searches")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--limited-queries", type=int, default=100, help="searches in the memory-limited run")
    ap.add_argument("--memory-limit-mb", type=int, default=None,
                    help="memory cgroup limit of that run (default: index file + half the segments)")
    ap.add_argument("--dir", default=None, help="where to build the store (default: a temporary folder)")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    args = ap.parse_args(argv)
    if not Path("/proc/self/io").exists():
        sys.exit("bench_cold_reads: needs Linux (/proc/self/io)")
    data = ClusteredData(args.dim, 5000, 0)
    queries = data.queries(max(args.queries, args.limited_queries + 5))
    options = {"exact_max": args.n - 1, "vector_dtype": args.vector_dtype}
    tmp = Path(tempfile.mkdtemp(prefix="bench-cold-", dir=args.dir))
    rows = []
    try:
        t0 = time.perf_counter()
        with open_store(tmp, dim=args.dim, **options) as st:
            for start, x, c in data.chunks(args.n, 50_000):
                st.upsert(np.arange(start, start + x.shape[0]), x, [{"product_id": int(p)} for p in c])
            st.build_index(force=True)
        print(f"store of {args.n:,} x {args.dim} {args.vector_dtype} built in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        ids = np.sort(np.random.default_rng(1).choice(args.n, args.gathers, replace=False))
        read_ahead = read_ahead_kb(tmp)
        for mode, label in (("normal", "normal: the kernel's read-ahead"),
                            ("random", "random: MADV_RANDOM")):
            os.environ[ACCESS_ENV] = mode
            g_s, g_mb = measure(tmp, options, lambda st: st.vectors(ids))
            q = [measure(tmp, options, lambda st, i=i: st.search(queries[i:i + 1], args.k))
                 for i in range(args.queries)]
            e_s, e_mb = measure(tmp, {**options, "exact_max": args.n + 1}, lambda st: st.search(queries[:1], args.k))
            rows.append((label, g_s, g_mb, float(np.median([s for s, _ in q])), float(np.median([m for _, m in q])),
                         e_s, e_mb))
            print(f"{label}: done", file=sys.stderr, flush=True)
        seg_mb = sum(p.stat().st_size for p in tmp.glob("seg-*.npy")) / 1e6
        ann_mb = sum(p.stat().st_size for p in tmp.glob("ann-*.faiss")) / 1e6
        limit_mb = args.memory_limit_mb or int(ann_mb + seg_mb / 2)
        limited = []
        try:
            with memory_cgroup(limit_mb * 1_000_000):
                for mode in ("normal", "random", "auto"):
                    os.environ[ACCESS_ENV] = mode
                    limited.append((mode, limited_run(tmp, options, queries[:args.limited_queries + 5], args.k)))
                    print(f"memory-limited {mode}: done", file=sys.stderr, flush=True)
        except OSError as exc:
            print(f"memory-limited run skipped: cannot create a memory cgroup ({exc})", file=sys.stderr)
    finally:
        os.environ.pop(ACCESS_ENV, None)
        shutil.rmtree(tmp, ignore_errors=True)
    head = (f"{args.n:,} x {args.dim} {args.vector_dtype} ({seg_mb:,.0f} MB of segments), every operation on a cold "
            f"page cache; the store's disk reads ahead {read_ahead}\n\n"
            f"| segment reads | gather {args.gathers:,} rows: s | MB read | ANN query p50: ms | MB read (median) "
            f"| exact scan: s | MB read |\n|---|---:|---:|---:|---:|---:|---:|")
    lines = [head] + [f"| {r[0]} | {r[1]:.2f} | {r[2]:,.1f} | {r[3] * 1000:.1f} | {r[4]:,.1f} | {r[5]:.2f} | "
                      f"{r[6]:,.0f} |" for r in rows]
    if limited:
        lines += ["", f"The same store searched inside a {limit_mb:,} MB memory cgroup (index file {ann_mb:,.0f} MB): "
                  f"{args.limited_queries} single-query searches after 5 warm-up ones", "",
                  "| segment reads | p50 (ms) | p99 (ms) | MB read per query |", "|---|---:|---:|---:|"]
        lines += [f"| {mode}" + (f" (chose {r['chosen']})" if mode == "auto" else "")
                  + f" | {r['p50']:.1f} | {r['p99']:.1f} | {r['mb']:,.1f} |" for mode, r in limited]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

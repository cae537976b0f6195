#!/usr/bin/env python
"""Benchmark the Ray Data shard pipeline against the single-process path on the same images.

    python benchmarks/bench_ray.py --n 400 --workers 2 --json docs/bench_ray_result.json \
        --markdown docs/bench_ray_result.md

Measures, on the same image files (page cache warmed first, so this measures
compute, not the disk):

* **single process**: ``embed_items(get_embedder(model), paths)`` with all
  cores for inference (``$PRODUCTLENS_THREADS`` or the usable cores);
* **Ray**: a local Ray with ``--workers`` CPUs (its start-up timed on its own),
  then ``embed_shards`` into a fresh work dir: ``--workers`` actors, one CPU and
  one inference thread each (the wall time includes creating the actors and
  loading the model in each, and writing the parquet shards).

Then checks that the two give the same embeddings (max abs difference, by
manifest order) and prints a markdown table. Default images: the grocery
photos listed in ``../shared/data/grocery/train.csv``, cycled up to ``--n``;
generated images when the shared data is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from productlens.pipeline.ray_embed import embed_shards, iter_shards, shard_path, write_manifest
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from productlens.pipeline.ray_embed import embed_shards, iter_shards, shard_path, write_manifest

from productlens.config import num_threads
from productlens.models.embedders import get_embedder
from productlens.pipeline.embed import embed_items
from productlens.types import Item

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "grocery" / "train.csv"


def list_images(spec: Path, n: int, tmp: Path) -> tuple[list[str], str]:
    """``n`` image paths (cycled) from a csv with an ``image`` column; generated ones if it is absent."""
    if spec.is_file():
        with open(spec, newline="") as fh:
            paths = [str(spec.parent / row["image"]) for row in csv.DictReader(fh)]
        source = f"{spec.parent.name}/{spec.name}"
    else:
        from PIL import Image

        print(f"{spec} not found: using generated images", file=sys.stderr)
        rng = np.random.default_rng(0)
        (tmp / "gen").mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(min(n, 200)):
            arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(arr).resize((224, 168), Image.BILINEAR)
            paths.append(str(tmp / "gen" / f"{i}.jpg"))
            img.save(paths[-1], quality=85)
        source = "generated 224x168 images"
    if not paths:
        raise SystemExit(f"no images in {spec}")
    return [paths[i % len(paths)] for i in range(n)], source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite2")
    ap.add_argument("--images", type=Path, default=DEFAULT_CSV, help="a csv with an 'image' column")
    ap.add_argument("--n", type=int, default=400, help="images (the list is cycled when shorter)")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (one CPU each)")
    ap.add_argument("--shard-size", type=int, default=None,
                    help="images per shard (default: n / (4 * workers), so each worker gets several)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--markdown", default=None, help="also write the markdown table (with a header) here")
    args = ap.parse_args(argv)

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    log = lambda *a: print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)  # noqa: E731
    try:
        paths, source = list_images(args.images, args.n, tmp)
        n = len(paths)
        shard_size = args.shard_size or max(1, -(-n // (4 * args.workers)))
        for p in set(paths):
            Path(p).read_bytes()  # warm the page cache for both pipelines
        load_start = os.getloadavg()[0]

        # ---- single process: embed_items with all cores
        embedder = get_embedder(args.model)
        embed_items(embedder, paths[: 2 * args.batch_size], batch_size=args.batch_size, progress=False)  # warm-up
        t0 = time.perf_counter()
        single = embed_items(embedder, paths, batch_size=args.batch_size, progress=False)
        single_s = time.perf_counter() - t0
        log(f"single process: {n / single_s:.2f} img/s ({num_threads()} inference threads)")

        # ---- Ray: start-up, then the shard pipeline (actors + model loads + embedding + parquet)
        items = [Item(id=i, image=p) for i, p in enumerate(paths)]
        work = tmp / "work"
        write_manifest(items, work)
        ray_tmp = tempfile.mkdtemp(prefix="plray", dir="/tmp")
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, _temp_dir=ray_tmp, logging_level="WARNING",
                 object_store_memory=256 * 2**20)
        start_s = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            report = embed_shards(work, embedder=args.model, shard_size=shard_size, workers=args.workers,
                                  batch_size=args.batch_size, progress=False)
            ray_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        log(f"ray: start-up {start_s:.1f}s, {n / ray_s:.2f} img/s ({report.shards_written} shards of {shard_size})")

        # ---- steady state: images of the shards finished after the first one / time between (file mtimes)
        shards = list(iter_shards(work))
        done = sorted((shard_path(work, s).stat().st_mtime, len(i)) for s, i, _, _ in shards)
        span = done[-1][0] - done[0][0]
        steady_r = sum(k for _, k in done[1:]) / span if len(done) > 1 and span > 0 else float("nan")

        # ---- agreement, by manifest order
        ids = np.concatenate([i for _, i, _, _ in shards])
        vecs = np.concatenate([v for _, _, v, _ in shards])
        same_rows = np.array_equal(ids, single.ok)
        max_diff = float(np.abs(vecs - single.vectors).max()) if same_rows else float("inf")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    single_r, ray_r, ray_all_r = n / single_s, n / ray_s, n / (ray_s + start_s)
    rows = [
        {"name": f"single process (`embed_items`, {num_threads()} inference threads)", "wall_s": single_s,
         "img_s": single_r},
        {"name": f"Ray Data, {args.workers} actors x 1 CPU (`embed_shards`, Ray already running)", "wall_s": ray_s,
         "img_s": ray_r},
        {"name": "Ray Data, including Ray start-up", "wall_s": ray_s + start_s, "img_s": ray_all_r},
        {"name": "Ray Data, steady state (first shard written -> last; no actor start)",
         "wall_s": None, "img_s": steady_r},
    ]
    lines = ["| pipeline | wall (s) | images/s | vs single process |", "|---|---:|---:|---:|"]
    fmt = lambda x: "" if x is None or x != x else f"{x:.2f}"  # noqa: E731 - None/NaN: not measured
    lines += [f"| {r['name']} | {fmt(r['wall_s'])} | {fmt(r['img_s'])} | {r['img_s'] / single_r:.3f} |"
              for r in rows]
    table = "\n".join(lines)
    setup = (f"{n} images ({source}), {args.model}, batch {args.batch_size}, shards of {shard_size} "
             f"({report.shards_written} shards); {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; Ray {ray.__version__} start-up {start_s:.2f}s (measured separately); "
             f"skipped images: single {len(single.errors)}, Ray {report.images_skipped}; embeddings agree: "
             f"max abs diff {max_diff:.2e}{'' if same_rows else ' (DIFFERENT ROWS)'}; "
             f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(setup)
    print()
    print(table)
    result = {"setup": vars(args) | {"n": n, "shard_size": shard_size, "source": source, "cores": os.cpu_count(),
                                     "ray": ray.__version__, "inference_threads": num_threads()},
              "ray_start_s": start_s, "single_img_s": single_r, "ray_img_s": ray_r,
              "ray_img_s_with_start": ray_all_r, "ray_img_s_steady": steady_r if steady_r == steady_r else None,
              "ratio": ray_r / single_r, "max_abs_diff": max_diff if same_rows else None,
              "rows": rows, "table": table, "summary": setup}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"## Ray batch-embedding benchmark\n\n{setup}\n\n{table}\n")
    return 0 if same_rows and max_diff < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Benchmark gallery embedding end to end against the bare model.

    python benchmarks/bench_embed.py --model efficientnet-lite2 --limit 1000 \
        --batch-size 32 --json docs/bench_embed_result.json

Measures, in the same run and on the same images:

* **bare model**: ``embedder.run`` alone on batches that are already decoded
  and preprocessed in memory (the ceiling: the ONNX session's own throughput);
* **productlens**: ``embed_items`` from the image files (decode, crop, resize,
  normalise, inference, GeM pooling, L2 normalisation, error handling).

Both are warmed up first (and the files read once, so the page cache is warm:
this measures compute, not the disk). The machine may be shared, so the two
are timed alternately on chunks of the image list (bare, productlens,
productlens, bare, ...) and the totals are compared. Default images: the grocery
photos listed in ``../shared/data/grocery/train.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    from productlens.pipeline.embed import default_workers, embed_items
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from productlens.pipeline.embed import default_workers, embed_items

from productlens.config import num_threads
from productlens.data.images import load_image
from productlens.models.embedders import create_embedder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "grocery" / "train.csv"
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def list_images(spec: Path, limit: int) -> list[str]:
    """Image paths from a folder (recursive, sorted) or a csv with an ``image`` column."""
    if spec.is_dir():
        paths = sorted(str(p) for p in spec.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    else:
        with open(spec, newline="") as fh:
            paths = [str(spec.parent / row["image"]) for row in csv.DictReader(fh)]
    if not paths:
        raise SystemExit(f"no images found in {spec}")
    return paths[:limit] if limit else paths


def bare_rate(embedder, batches: list[np.ndarray], n: int) -> tuple[float, int]:
    """Images/s of ``embedder.run`` over ``n`` images, cycling the in-memory batches."""
    done, k = 0, 0
    t0 = time.perf_counter()
    while done < n:
        batch = batches[k % len(batches)][: n - done]
        embedder.run(batch)
        done += len(batch)
        k += 1
    return time.perf_counter() - t0, done


def pipeline_rate(embedder, paths, batch_size, workers) -> tuple[float, int]:
    t0 = time.perf_counter()
    res = embed_items(embedder, paths, batch_size=batch_size, workers=workers, progress=False)
    elapsed = time.perf_counter() - t0
    if res.errors:
        print(f"warning: {len(res.errors)} images failed, e.g. {res.errors[0][2]}", file=sys.stderr)
    return elapsed, len(paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet-lite2")
    ap.add_argument("--images", type=Path, default=DEFAULT_CSV,
                    help="a folder of images or a csv with an 'image' column (default: grocery train)")
    ap.add_argument("--limit", type=int, default=1000, help="number of images (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: cores // 2)")
    ap.add_argument("--rounds", type=int, default=1, help="timed passes over the images")
    ap.add_argument("--chunk", type=int, default=256,
                    help="images per alternation between bare and productlens (0: all at once)")
    ap.add_argument("--bare-batches", type=int, default=8,
                    help="distinct preprocessed batches kept in memory for the bare model")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    paths = list_images(args.images, args.limit)
    n, bs = len(paths), args.batch_size
    embedder = create_embedder(args.model)
    workers = args.workers or default_workers()
    print(f"{embedder!r}: {n} images, batch {bs}, {num_threads()} inference threads, "
          f"{workers} decode threads", file=sys.stderr)

    # Warm-up: page cache, the pre-decoded batches, and a few batches of each path.
    for p in paths:
        Path(p).read_bytes()
    pre = [embedder.preprocess(load_image(p, target=embedder.preprocess.size))
           for p in paths[: bs * args.bare_batches]]
    batches = [np.stack(pre[i:i + bs]) for i in range(0, len(pre), bs)]
    del pre
    bare_rate(embedder, batches, 2 * bs)
    pipeline_rate(embedder, paths[: 2 * bs], bs, workers)

    # Timed: alternate the two on chunks of the image list (bare, productlens,
    # productlens, bare, ...) so that load from other processes hits both alike.
    chunk = args.chunk or n
    bare_t = pipe_t = 0.0
    bare_n = pipe_n = 0
    rounds, pairs, flip = [], [], 0
    for r in range(args.rounds):
        rec = {"bare": [0.0, 0], "pipe": [0.0, 0]}
        for c in range(0, n, chunk):
            part = paths[c:c + chunk]
            times = {}
            for what in (("bare", "pipe") if flip % 2 == 0 else ("pipe", "bare")):
                if what == "bare":
                    t, k = bare_rate(embedder, batches, len(part))
                else:
                    t, k = pipeline_rate(embedder, part, bs, workers)
                rec[what][0] += t
                rec[what][1] += k
                times[what] = t
            pairs.append(times["bare"] / times["pipe"])  # same images, adjacent in time
            flip += 1
        bare_r, pipe_r = rec["bare"][1] / rec["bare"][0], rec["pipe"][1] / rec["pipe"][0]
        bare_t, bare_n = bare_t + rec["bare"][0], bare_n + rec["bare"][1]
        pipe_t, pipe_n = pipe_t + rec["pipe"][0], pipe_n + rec["pipe"][1]
        rounds.append({"bare_img_s": bare_r, "productlens_img_s": pipe_r, "ratio": pipe_r / bare_r,
                       "load_avg_1min": os.getloadavg()[0]})
        print(f"round {r + 1}: bare {bare_r:6.2f} img/s, productlens {pipe_r:6.2f} img/s, "
              f"ratio {pipe_r / bare_r:.3f} (load average {os.getloadavg()[0]:.1f})", file=sys.stderr)

    bare = bare_n / bare_t
    pipe = pipe_n / pipe_t
    ratio = pipe / bare
    median_pair = float(np.median(pairs))
    table = "\n".join([
        f"Embedding {n} images ({args.images.name}), {args.model}, batch {bs}, "
        f"{num_threads()} inference threads, {workers} decode thread(s), "
        f"{args.rounds} round(s) alternating every {chunk} images; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}",
        "",
        "| pipeline | what is timed | images/s | vs bare model |",
        "|---|---|---:|---:|",
        f"| bare model (baseline) | `embedder.run` on preprocessed batches in memory | {bare:.2f} | 1.00 |",
        f"| productlens | `embed_items` from the files: decode + preprocess + run + pool + L2 | "
        f"{pipe:.2f} | {ratio:.3f} |",
        "",
        f"Ratio of the totals: {ratio:.3f}; median over the {len(pairs)} adjacent "
        f"(bare, productlens) chunk pairs: {median_pair:.3f} "
        f"(range {min(pairs):.3f}-{max(pairs):.3f}).",
    ])
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": args.model, "images": str(args.images), "n": n, "batch_size": bs,
            "inference_threads": num_threads(), "decode_workers": workers,
            "cores": os.cpu_count(), "chunk": chunk, "rounds": rounds,
            "bare_img_s": bare, "productlens_img_s": pipe, "ratio": ratio,
            "chunk_pair_ratios": pairs, "median_chunk_pair_ratio": median_pair,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

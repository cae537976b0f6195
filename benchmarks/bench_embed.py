#!/usr/bin/env python
"""Benchmark gallery embedding end to end against the bare model.

    python benchmarks/bench_embed.py --model efficientnet-lite2 --limit 1000 \
        --batch-size 32 --json docs/bench_embed_result.json

Measures, in the same run and on the same images:

* **bare model**: ``embedder.run`` alone (one onnxruntime call per batch) on
  batches that are already decoded and preprocessed in memory, exactly what
  ``embedder.preprocess`` returns (the ceiling: the ONNX session's own
  throughput). For the bundled models that is the resized uint8 pixels: their
  graph does the normalisation and GeM pooling, in both measurements alike;
* **productlens**: ``embed_items`` from the image files (decode, crop, resize,
  inference, L2 normalisation, error handling).

``--views regions`` (or another view set) measures a multi-view path instead: the
bare model runs every view of every image (the preprocessed crops in memory), and
productlens is ``embed_items`` with the pooled multi-region embedder, as a catalog
embeds its gallery and queries (one vector per image). With ``--per-view`` it is
``embed_views`` with the feature cache off, as classifiers train and predict (one
vector per view and image).

Both are warmed up first (and the files read once, so the page cache is warm:
this measures compute, not the disk). The machine may be shared, so the two
are timed alternately (bare, productlens, productlens, bare, ...: ``--rounds``
passes, optionally in ``--chunk``-image pieces) and the totals are compared. Default images: the grocery
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
from productlens.data.augment import PooledViewEmbedder, PooledViewPreprocess, view_set
from productlens.data.images import load_image
from productlens.models.embedders import create_embedder
from productlens.models.embedders.base import MODEL_BATCH

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


def bare_run(embedder, batches: list[np.ndarray], n: int, first: int = 0) -> None:
    """``embedder.run`` over ``n`` images of the in-memory batches, from batch ``first``.

    A batch row may hold several views of one image (``(views, *shape)``). The model
    sees at most ``MODEL_BATCH`` images a call, as ``embedder.embed`` gives it (larger
    calls are slower per image)."""
    done, k = 0, first
    while done < n:
        batch = batches[k % len(batches)][: n - done]
        rows = batch.reshape(-1, *embedder.preprocess.shape)
        for i in range(0, len(rows), MODEL_BATCH):
            embedder.run(rows[i:i + MODEL_BATCH])
        done += len(batch)
        k += 1


def pipeline_run(embedder, paths, batch_size, workers, views=None, per_view=False) -> None:
    if views is not None and per_view:
        from productlens.pipeline.features_cache import embed_views

        res = embed_views(embedder, paths, views, cache=False, progress=False, batch_size=batch_size,
                          workers=workers)
    else:
        if views is not None:
            embedder = PooledViewEmbedder(embedder, views)
        res = embed_items(embedder, paths, batch_size=batch_size, workers=workers, progress=False)
    if res.errors:
        print(f"warning: {len(res.errors)} images failed, e.g. {res.errors[0][2]}", file=sys.stderr)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) of ``fn(*args)``."""
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet-lite2")
    ap.add_argument("--images", type=Path, default=DEFAULT_CSV,
                    help="a folder of images or a csv with an 'image' column (default: grocery train)")
    ap.add_argument("--limit", type=int, default=1000, help="number of images (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: one per core, at most 8)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="timed passes over the images (the bare/productlens order flips each time)")
    ap.add_argument("--chunk", type=int, default=256,
                    help="images per alternation between bare and productlens (one embed_items "
                         "call each; a multiple of the batch size; 0: all the images at once)")
    ap.add_argument("--bare-batches", type=int, default=0,
                    help="preprocessed batches kept in memory for the bare model, cycled "
                         "(0: all the images; each costs batch x 3 x size^2 x 4 bytes)")
    ap.add_argument("--views", default="none",
                    help="view set: none (the whole image) or e.g. regions (every view of every image, "
                         "pooled into one vector as catalogs embed)")
    ap.add_argument("--per-view", action="store_true",
                    help="with --views: embed_views, one vector per view, as classifiers train and predict")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    paths = list_images(args.images, args.limit)
    n, bs = len(paths), args.batch_size
    embedder = create_embedder(args.model)
    workers = args.workers or default_workers()
    views = None if args.views == "none" else view_set(args.views)
    nv = len(views) if views else 1
    print(f"{embedder!r}: {n} images x {nv} views, batch {bs}, {num_threads()} inference threads, "
          f"{workers} decode threads", file=sys.stderr)

    # Warm-up: page cache, the pre-decoded batches, and a few batches of each path.
    for p in paths:
        Path(p).read_bytes()
    prep = PooledViewPreprocess(embedder.preprocess, views) if views else embedder.preprocess
    kept = paths[: bs * args.bare_batches] if args.bare_batches else paths
    batches = [np.stack([prep(load_image(p, target=prep.size)) for p in kept[i:i + bs]])
               for i in range(0, len(kept), bs)]
    bare_run(embedder, batches, 2 * bs)
    pipeline_run(embedder, paths[: 2 * bs], bs, workers, views, args.per_view)

    # Timed: alternate the two (bare, productlens, productlens, bare, ...) on the
    # same images, so that load from other processes hits both alike.
    chunk = args.chunk or n
    tot = {"bare": np.zeros(2), "pipe": np.zeros(2)}  # wall, cpu seconds
    rounds, pairs, flip = [], [], 0
    for r in range(args.rounds):
        rec = {"bare": np.zeros(2), "pipe": np.zeros(2)}
        for c in range(0, n, chunk):
            part = paths[c:c + chunk]
            times = {}
            for what in (("bare", "pipe") if flip % 2 == 0 else ("pipe", "bare")):
                if what == "bare":
                    times[what] = timed(bare_run, embedder, batches, len(part), c // bs)
                else:
                    times[what] = timed(pipeline_run, embedder, part, bs, workers, views, args.per_view)
                rec[what] += times[what]
            pairs.append(times["bare"][0] / times["pipe"][0])
            flip += 1
        bare_r, pipe_r = n / rec["bare"][0], n / rec["pipe"][0]
        for what in tot:
            tot[what] += rec[what]
        load = os.getloadavg()[0]
        rounds.append({"bare_img_s": bare_r, "productlens_img_s": pipe_r,
                       "ratio": pipe_r / bare_r, "load_avg_1min": load})
        print(f"round {r + 1}: bare {bare_r:6.2f} img/s, productlens {pipe_r:6.2f} img/s, "
              f"ratio {pipe_r / bare_r:.3f} (load average {load:.1f})", file=sys.stderr)

    measured = ("`embed_views`" if args.per_view else "`embed_items`, pooled views") if views else "`embed_items`"
    total = n * args.rounds
    bare, pipe = total / tot["bare"][0], total / tot["pipe"][0]
    bare_cpu, pipe_cpu = tot["bare"][1] / total * 1e3, tot["pipe"][1] / total * 1e3
    ratio = pipe / bare
    median_pair = float(np.median(pairs))
    table = "\n".join([
        f"Embedding {n} images ({args.images.name}) x {args.rounds} rounds"
        f"{f', {nv} views each ({args.views})' if views else ''}, {args.model}, "
        f"batch {bs}, {num_threads()} inference threads, {workers} decode thread(s), "
        f"bare/productlens alternating every {chunk} images; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        "",
        "| pipeline | what is timed | images/s | vs bare model | CPU ms/image |",
        "|---|---|---:|---:|---:|",
        f"| bare model (baseline) | `embedder.run` on preprocessed batches in memory "
        f"| {bare:.2f} | 1.000 | {bare_cpu:.1f} |",
        f"| productlens | {measured} from the files: decode + "
        f"{'crop + ' if views else ''}resize + run + L2 | {pipe:.2f} | {ratio:.3f} | {pipe_cpu:.1f} |",
        "",
        f"Ratio of the totals: {ratio:.3f}; median over the {len(pairs)} adjacent "
        f"(bare, productlens) pairs: {median_pair:.3f} "
        f"(range {min(pairs):.3f}-{max(pairs):.3f}). CPU ms/image: all threads of the process.",
    ])
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": args.model, "images": str(args.images), "n": n, "views": args.views,
            "per_view": args.per_view, "batch_size": bs,
            "inference_threads": num_threads(), "decode_workers": workers,
            "cores": os.cpu_count(), "chunk": chunk, "rounds": rounds,
            "bare_img_s": bare, "productlens_img_s": pipe, "ratio": ratio,
            "bare_cpu_ms_per_image": bare_cpu, "productlens_cpu_ms_per_image": pipe_cpu,
            "pair_ratios": pairs, "median_pair_ratio": median_pair,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Video clips of grocery products: clip-level top-1 beside single-frame top-1.

    python benchmarks/bench_video.py [--data ../shared/data] [--json PATH]

For every product with val photos, one mp4 clip (``productlens.data.clips``):
its val phone photos in sequence, 1 s each at 8 fps, 224 px, each zooming in
or out, shaking, 30% of frames motion-blurred and 30% with a patch covering a
third of the frame. The catalog is the retrieval-shop gallery (81 shop photos,
catalog mode) adapted on train.csv, as in bench_retrieval.

- single frame (the baseline): every frame that ``identify-video`` samples,
  searched on its own; the share whose best product is right.
- productlens: ``identify_video`` (blurred and duplicate frames dropped,
  scores pooled over time); the share of clips whose best product is right.
- photos: the same val photos without degradation, one query each (context).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from productlens.data.clips import make_clip
from productlens.data.readers import read_gallery, read_labelled_csv
from productlens.pipeline.catalog_build import build_catalog
from productlens.pipeline.video import identify_video, sample_frames

ROOT = Path(__file__).resolve().parents[1]


def best_products(catalog, images) -> list[int]:
    res = catalog.embed_queries(images)
    _, ids = catalog.search_vectors(res.vectors, len(catalog.store), group_by_product=True)
    md = catalog.store.get(ids[:, 0])
    out = [-1] * len(images)
    for i, m in zip(res.ok, md):
        out[i] = int((m or {}).get("product_id", -1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, help="Also write the raw results here.")
    args = ap.parse_args()
    g = args.data / "grocery"
    val = read_labelled_csv(g / "val.csv", label="product_id")
    by_product = defaultdict(list)
    for v in val:
        by_product[v.product_id].append(v.image)
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        clips = {p: make_clip(imgs, work / f"clip_{p}.mp4", seed=p) for p, imgs in sorted(by_product.items())}
        t_clips = time.perf_counter() - t0
        catalog, _ = build_catalog(read_gallery(g / "retrieval-shop" / "gallery.csv"), work / "catalog",
                                   train=read_labelled_csv(g / "train.csv"), use_gallery_labels=True, progress=False)
        with catalog:
            frame_hits, clip_hits, seconds, used = [], [], [], []
            for p, path in clips.items():
                frames, _ = sample_frames(path)
                frame_hits += [b == p for b in best_products(catalog, [f.image for f in frames])]
                t = time.perf_counter()
                res = identify_video(catalog, path)
                seconds.append(time.perf_counter() - t)
                clip_hits.append(res.products[0].product_id == p)
                used.append((res.frames_sampled, res.frames_used))
            photo_hits = [b == v.product_id for b, v in zip(best_products(catalog, [v.image for v in val]), val)]
    out = {"clips": len(clips), "frames": len(frame_hits), "single_frame_top1": float(np.mean(frame_hits)),
           "clip_top1": float(np.mean(clip_hits)), "photo_top1": float(np.mean(photo_hits)),
           "seconds_per_clip_p50": float(np.median(seconds)), "clip_seconds": round(t_clips, 1),
           "frames_sampled_mean": float(np.mean([u[0] for u in used])),
           "frames_used_mean": float(np.mean([u[1] for u in used]))}
    gain = out["clip_top1"] - out["single_frame_top1"]
    print(f"\n# Video clips of grocery products ({platform.machine()}, {platform.node()})\n")
    print("| method | unit | n | top-1 |\n|---|---|---|---|")
    print(f"| single frame (baseline) | frame | {out['frames']} | {out['single_frame_top1']:.3f} |")
    print(f"| productlens identify-video | clip | {out['clips']} | {out['clip_top1']:.3f} |")
    print(f"| undegraded val photos (context) | photo | {len(val)} | {out['photo_top1']:.3f} |")
    print(f"\nclip - frame: {gain:+.3f} (target >= +0.10: {'met' if gain >= 0.10 else 'not met'}); "
          f"{out['frames_sampled_mean']:.1f} frames sampled and {out['frames_used_mean']:.1f} used per clip; "
          f"identify-video p50 {out['seconds_per_clip_p50']:.2f} s per clip")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

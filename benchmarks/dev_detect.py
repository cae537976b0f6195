"""Train-only development split for detection: does tuning the backbone's last layers help?

    python benchmarks/dev_detect.py [--tune 21 20] [--epochs N] [--data ../shared/data]

Reads only ccp ``train.json`` (val is never read): every 4th image is held out
and scored, the others train. The training views are extracted once, through
the trunk that stops before the earliest tuned block; the frozen rows get their
C5 (and the later tuned rows their input) by running the frozen blocks on those
maps, so every row trains on the same views. Each row trains the library's
detector (``train_detector``, default head and epochs) with the backbone frozen
or with ``DetectTrainOptions(tune_from=B)``, exports it and scores the held-out
images with pycocotools, all in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from productlens.data.coco import read_coco
from productlens.eval.detection import coco_map, predict_set
from productlens.models.detectors import load_detector
from productlens.models.detectors.pyramid import split_torch
from productlens.pipeline.detect_train import DetectTrainOptions, Views, extract_views, train_detector

ROOT = Path(__file__).resolve().parents[1]


def dev_split(train_json: Path, work: Path) -> tuple[Path, Path]:
    """fit.json (3 of every 4 images) and held.json (every 4th) beside a link to the photos."""
    data = json.loads(train_json.read_text())
    images = sorted(data["images"], key=lambda r: r["id"])
    held_ids = {r["id"] for r in images[3::4]}
    for name, keep in (("fit", lambda i: i not in held_ids), ("held", lambda i: i in held_ids)):
        part = dict(data, images=[r for r in images if keep(r["id"])],
                    annotations=[a for a in data["annotations"] if keep(a["image_id"])])
        (work / f"{name}.json").write_text(json.dumps(part))
    for r in images:  # file_name is relative to the json's folder: mirror its first folder
        top = Path(r["file_name"]).parts[0]
        link = work / top
        if not link.exists():
            link.symlink_to(train_json.parent / top)
    return work / "fit.json", work / "held.json"


def derive(views: Views, arch: str, start: int, stop: int | None) -> Views:
    """``views`` whose third map (the input of block ``start``) is run, frozen, up to the input of
    block ``stop`` (None: C5)."""
    import torch

    _, _, tail = split_torch(arch, start)
    out = []
    with torch.no_grad():
        for c3, c4, t in views.feats:
            x = torch.from_numpy(t[None].astype(np.float32))
            if stop is None:
                x = tail(x)
            else:
                for block in list(tail.blocks)[:stop - start]:
                    x = block(x)
            out.append((c3, c4, np.ascontiguousarray(x[0].numpy(), np.float16)))
    return dataclasses.replace(views, feats=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--tune", type=int, nargs="*", default=[21], help="first tuned blocks, one row each")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base = DetectTrainOptions() if args.epochs is None else DetectTrainOptions(epochs=args.epochs)
    with tempfile.TemporaryDirectory(prefix="dev-detect-") as tmp:
        rows = run(args.data / "ccp" / "train.json", Path(tmp), base, args.tune)
    print("| backbone | mAP@0.5 | mAP@0.5:0.95 | s (head, export, scoring) |\n|---|---:|---:|---:|")
    for r in rows:
        name = "frozen" if r["tune_from"] is None else f"tuned from block {r['tune_from']}"
        print(f"| {name} | {r['map50']:.3f} | {r['map']:.3f} | {r['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def run(train_json: Path, work: Path, base: DetectTrainOptions, tune: list[int]) -> list[dict]:
    """Split, extract the views once, train and score one detector per row; returns the rows."""
    fit_json, held_json = dev_split(train_json, work)
    fit, held = read_coco(fit_json), read_coco(held_json)
    first = min(tune) if tune else None
    t = time.perf_counter()
    views = extract_views(fit, dataclasses.replace(base, tune_from=first))
    print(f"{len(views)} views of {views.images} images in {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for block in [None, *sorted(tune, reverse=True)]:
        t = time.perf_counter()
        v = views if first is None or block == first else derive(views, base.backbone, first, block)
        train_detector(fit, work / f"det-{block}", dataclasses.replace(base, tune_from=block), views=v)
        preds, errors = predict_set(load_detector(work / f"det-{block}"), held, progress=False)
        m = coco_map(held, preds)
        rows.append({"tune_from": block, "map50": m["map50"], "map": m["map"],
                     "seconds": round(time.perf_counter() - t, 1), "unreadable": len(errors)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\ndev split: {fit.n_boxes} boxes in {len(fit.images)} fit images, {len(held.images)} held out\n")
    return rows


if __name__ == "__main__":
    main()

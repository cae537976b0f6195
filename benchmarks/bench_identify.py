#!/usr/bin/env python
"""Benchmark one photo's identification by the service's engine, by photo size, against its models alone.

    python benchmarks/bench_identify.py [--catalog DIR] [--photos 12] [--sizes 224,1000,4032]

What a person waits for after uploading a photo to the web page or ``/v1/identify``:
``sniff_image`` (decoding the upload in full, as the service does) and ``Engine.identify``
(the classifier's top categories, the search with spatial verification, one match per
product). Phone photos are often 12 MP, so the same grocery val photos are also written
enlarged (a little pixel noise, JPEG quality 90) to each ``--sizes`` side.

Baseline in the same run: the **models alone**, the onnxruntime calls identify makes
(the query embedder's views and the classifier's views) on inputs already preprocessed in
memory. Identify's time beyond them is decoding, cropping, resizing, verification and the
search itself.

Without ``--catalog``, a catalog is built in a temporary folder from the grocery shop photos
(``retrieval-shop/gallery.csv``, seven-region queries, no adapter) with a classifier of the
grocery categories trained on every 7th photo of ``train.csv`` (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from productlens.serve.engine import Engine, ServeConfig, sniff_image
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from productlens.serve.engine import Engine, ServeConfig, sniff_image

from PIL import Image

from productlens.data.augment import StackedViewEmbedder, View
from productlens.data.images import load_image

REPO = Path(__file__).resolve().parents[1]
GROCERY = REPO.parent / "shared" / "data" / "grocery"
MAX_PIXELS = 200_000_000


def build_catalog(folder: Path, data: Path) -> Path:
    """The shop photos with seven-region queries, and a category classifier on every 7th training photo."""
    from productlens.data.labelled import read_labelled
    from productlens.data.readers import read_catalog
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.catalog_build import build_catalog as build
    from productlens.pipeline.classify import train_classifier

    cat, _ = build(read_catalog(data / "retrieval-shop" / "gallery.csv"), folder / "catalog",
                   query_views="regions", progress=False)
    cat.close()
    train = read_labelled(data / "train.csv", label="category_name")
    train_classifier(train.subset(range(0, len(train), 7)), folder / "classifier", progress=False)
    with Catalog.open(folder / "catalog") as cat:
        cat.attach_classifier(folder / "classifier")
    return folder / "catalog"


def enlarged(sources: list[Path], side: int, folder: Path) -> list[Path]:
    """The photos at ``side`` pixels on the longer side (JPEG q90, a little noise); originals when ``side`` is 0."""
    out = []
    rng = np.random.default_rng(side)
    for i, src in enumerate(sources):
        img = load_image(src)
        if side and max(img.size) != side:
            f = side / max(img.size)
            img = img.resize((round(img.width * f), round(img.height * f)), Image.BICUBIC)
            arr = np.asarray(img, np.int16) + rng.integers(-3, 4, (img.height, img.width, 3))
            img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        path = folder / f"{side}-{i:03d}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def models_alone(engine: Engine, img: Image.Image) -> float:
    """Seconds of the onnxruntime calls identify makes for ``img``, on inputs preprocessed in memory."""
    cat = engine.catalog
    query = cat.query_embedder.preprocess(img)[None]
    views = StackedViewEmbedder(cat.classifier.embedder, [View.parse(v) for v in cat.classifier.views])
    inputs = views.preprocess(img)[None]
    t = time.perf_counter()
    cat.query_embedder.embed(query)
    views.embed(inputs)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=GROCERY, help="the grocery folder")
    ap.add_argument("--catalog", type=Path, help="a catalog with a classifier (default: built here)")
    ap.add_argument("--photos", type=int, default=12, help="val photos per size")
    ap.add_argument("--sizes", default="0,1000,4032", help="longer sides (0: the photos as they are)")
    ap.add_argument("--repeats", type=int, default=3, help="timed identifications of each photo")
    args = ap.parse_args()
    if not (args.data / "val.csv").exists():
        print(f"no grocery data at {args.data}", file=sys.stderr)
        return 2
    from productlens.data.readers import read_labelled_csv

    val = [Path(t.image) for t in read_labelled_csv(args.data / "val.csv")]
    photos = val[:: max(1, len(val) // args.photos)][: args.photos]
    with tempfile.TemporaryDirectory(prefix="bench-identify-") as tmp:
        tmp = Path(tmp)
        catalog = args.catalog or build_catalog(tmp, args.data)
        engine = Engine(ServeConfig(catalog=str(catalog)))
        print("| photos | side px | decode ms (p50) | identify ms (p50) | models alone ms (p50) | identify / models |")
        print("|---|---:|---:|---:|---:|---:|")
        for side in [int(s) for s in args.sizes.split(",")]:
            files = enlarged(photos, side, tmp)
            dec, ident, bare = [], [], []
            for path in files:
                data = path.read_bytes()
                engine.identify(sniff_image(data, MAX_PIXELS))  # warm (first photo: sessions, caches)
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    img = sniff_image(data, MAX_PIXELS)
                    t1 = time.perf_counter()
                    engine.identify(img)
                    t2 = time.perf_counter()
                    dec.append(t1 - t)
                    ident.append(t2 - t1)
                    bare.append(models_alone(engine, img))
            d, i, b = (1000 * statistics.median(x) for x in (dec, ident, bare))
            shown = f"{max(img.size)}" if side == 0 else str(side)
            print(f"| {len(files)} grocery val | {shown} | {d:.0f} | {i:.0f} | {b:.0f} | {i / b:.2f} |", flush=True)
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

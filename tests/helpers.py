"""Small generated product photos for tests: no committed images, no shared data."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 70, 200), (230, 200, 40), (150, 60, 170), (30, 170, 170)]


def product_photo(product: int, variant: int, *, shop: bool, size: int = 96) -> Image.Image:
    """A 'product' (a coloured shape whose form depends on the product) on a white
    (shop) or noisy cluttered (shopper) background, shifted per variant."""
    rng = np.random.default_rng(1000 * product + variant + (0 if shop else 7))
    if shop:
        img = Image.new("RGB", (size, size), (255, 255, 255))
    else:
        img = Image.fromarray(rng.integers(60, 200, (size, size, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    c = COLOURS[product % len(COLOURS)]
    off = 0 if shop else int(rng.integers(-8, 9))
    box = (24 + off, 20 + off, 72 + off, 76 + off)
    if product // len(COLOURS) == 0:
        d.rectangle(box, fill=c)
    else:
        d.ellipse(box, fill=c)
    d.line((box[0], box[1], box[2], box[3]), fill=(0, 0, 0), width=3 + product % 3)
    return img


def write_dataset(root: Path, n_products: int = 4, per_product: int = 4) -> dict[str, Path]:
    """Write a tiny AIcrowd-style dataset: gallery.csv (shop photos), queries.csv and train.csv."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    gal, qry, trn = [], [], []
    for p in range(n_products):
        path = root / "img" / f"shop_{p}.jpg"
        product_photo(p, 0, shop=True).save(path)
        gal.append({"seller_img_id": p, "img_path": f"img/shop_{p}.jpg", "product_id": p})
        for v in range(per_product):
            for split, rows in (("q", qry), ("t", trn)):
                name = f"img/{split}_{p}_{v}.jpg"
                product_photo(p, v + (100 if split == "q" else 0), shop=False).save(root / name)
                if split == "q":
                    rows.append({"user_img_id": len(rows), "img_path": name, "bbox_x": "", "bbox_y": "",
                                 "bbox_w": "", "bbox_h": "", "product_id": p})
                else:
                    rows.append({"image": name, "product_id": p, "product_name": f"product {p}"})
    out = {}
    for name, rows in (("gallery", gal), ("queries", qry), ("train", trn)):
        out[name] = root / f"{name}.csv"
        with open(out[name], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return out


DET_CLASSES = [{"id": 7, "name": "square"}, {"id": 9, "name": "disc"}]


def detection_photo(seed: int, size: tuple[int, int] = (160, 120)) -> tuple[Image.Image, list[tuple[list[float], int]]]:
    """A noisy background with 1-2 objects: red squares (category 7) and blue discs (category 9)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(90, 170, (size[1], size[0], 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    anns = []
    for k in range(1 + seed % 2):
        s = int(rng.integers(28, 48))
        x = int(rng.integers(0, size[0] // 2 - s)) + k * size[0] // 2
        y = int(rng.integers(0, size[1] - s))
        cid = 7 if rng.random() < 0.5 else 9
        if cid == 7:
            d.rectangle((x, y, x + s - 1, y + s - 1), fill=(220, 30, 30))
        else:
            d.ellipse((x, y, x + s - 1, y + s - 1), fill=(30, 50, 220))
        anns.append(([float(x), float(y), float(s), float(s)], cid))
    return img, anns


def write_coco(root: Path, name: str, n_images: int, seed: int = 0, extra: dict | None = None) -> Path:
    """Write ``root/<name>.json`` (COCO) and its photos under ``root/photos``; ``extra`` merges into the json."""
    import json

    (root / "photos").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        img, anns = detection_photo(seed * 1000 + i)
        file = f"photos/{name}_{i}.jpg"
        img.save(root / file, quality=95)
        images.append({"id": i + 1, "file_name": file, "width": img.size[0], "height": img.size[1]})
        for bbox, cid in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cid, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": 0})
    data = {"images": images, "annotations": annotations, "categories": DET_CLASSES}
    for key, value in (extra or {}).items():
        data[key] = data[key] + value if isinstance(value, list) else value
    path = root / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def package_photo(word: str, variant: int, *, shop: bool, colour: tuple[int, int, int] = (200, 120, 40),
                  size: int = 160) -> Image.Image:
    """A 'package' of one colour with a brand ``word`` printed on a white label; packages that
    differ only by their word look alike to an image embedder but not to OCR."""
    from PIL import ImageFont

    rng = np.random.default_rng(variant + (0 if shop else 13))
    if shop:
        img = Image.new("RGB", (size, size), (255, 255, 255))
    else:
        img = Image.fromarray(rng.integers(90, 170, (size, size, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    off = 0 if shop else int(rng.integers(-6, 7))
    d.rectangle((10 + off, 20 + off, size - 10 + off, size - 20 + off), fill=colour)
    d.rectangle((16 + off, 56 + off, size - 16 + off, 104 + off), fill=(255, 255, 255))
    font = ImageFont.load_default(size=30)
    d.text((size // 2 + off, 80 + off), word, fill=(0, 0, 0), font=font, anchor="mm")
    return img


def add_columns(csv_path: Path, out_path: Path, columns: dict) -> Path:
    """Copy a csv adding columns: ``columns[name](row) -> value`` for each row."""
    rows = list(csv.DictReader(open(csv_path)))
    with open(out_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{name: fn(r) for name, fn in columns.items()}})
    return out_path


def titled_catalog(root: Path, n_products: int, category) -> Path:
    """A catalog folder of the generated shop photos titled 'product P', category ``category(P)``, catalog mode."""
    from productlens.data.readers import read_gallery
    from productlens.pipeline.catalog_build import build_catalog

    paths = write_dataset(root, n_products=n_products, per_product=1)
    gallery = add_columns(paths["gallery"], root / "gallery_t.csv",
                          {"title": lambda r: f"product {r['product_id']}",
                           "category_name": lambda r: category(int(r["product_id"]))})
    cat, _ = build_catalog(read_gallery(gallery), root / "cat", use_gallery_labels=True, progress=False)
    cat.close()
    return root / "cat"


def drop_collections(uri: str, prefix: str) -> None:
    """Drop the Milvus collections a test made (their names start with ``prefix``)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)
    finally:
        client.close()


def tiny_embedder(folder: Path) -> str:
    """Write a tiny 8-d ONNX embedder (16 px input) into ``folder``; returns its ``onnx:PATH`` name."""
    import json

    from test_embedders import _tiny_onnx

    _tiny_onnx(folder / "tiny.onnx")
    (folder / "tiny.json").write_text(json.dumps({"size": 16, "resize": "squash"}))
    return f"onnx:{folder / 'tiny.onnx'}"


@contextlib.contextmanager
def local_ray():
    """A local Ray with 2 CPUs and a short temp dir (socket paths must stay < 107 characters)."""
    import shutil
    import tempfile

    import ray

    tmp = tempfile.mkdtemp(prefix="plrayt", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, object_store_memory=200 * 2**20,
             logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

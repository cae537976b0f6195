"""Small generated product photos for tests: no committed images, no shared data."""

from __future__ import annotations

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

"""``productlens index``: build, add to, remove from and describe a catalog."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from productlens.cli.common import fail_cleanly
from productlens.config import DEFAULT_EMBEDDER

app = typer.Typer(help="Build and maintain a catalog index.", no_args_is_help=True)


@app.command("build")
@fail_cleanly
def build(
    catalog: Path = typer.Argument(..., help="Folder, gallery.csv, labelled csv or products.jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Catalog folder to create."),
    train: Optional[Path] = typer.Option(None, help="csv of labelled shopper photos (image, product_id) to adapt the embedding."),
    model: str = typer.Option(DEFAULT_EMBEDDER, help="Embedder name (see `productlens models`)."),
    catalog_labels: bool = typer.Option(False, "--catalog-labels", help="Let the adapter learn from the catalog's own product ids."),
    finetune: bool = typer.Option(True, help="With --train: fine-tune the backbone's last blocks first (minutes)."),
    overwrite: bool = typer.Option(False, help="Replace an existing catalog folder."),
    ocr: bool = typer.Option(False, "--ocr", help="Read the print on gallery and query photos and fuse it with "
                                                  "the image score (needs --train: the weight is chosen on "
                                                  "its photos, cross-fitted over products)."),
) -> None:
    """Embed a catalog and write its index (atomically)."""
    from productlens.data.readers import read_catalog, read_labelled_csv
    from productlens.pipeline.catalog import build_catalog
    from productlens.pipeline.fusion import choose_text_weight
    from productlens.types import ProductLensError

    items = read_catalog(catalog)
    train_items = read_labelled_csv(train, label="product_id") if train else None
    if ocr and not train_items:
        raise ProductLensError("--ocr needs --train: the fusion weight is chosen on training photos")
    cat, errors = build_catalog(items, out, embedder=model, train=train_items,
                                use_gallery_labels=catalog_labels, finetune=finetune and train_items is not None,
                                overwrite=overwrite, ocr=ocr)
    with cat:
        if ocr:
            weight, table = choose_text_weight(items, train_items, embedder=model,
                                               use_gallery_labels=catalog_labels, progress=True)
            cat.set_text_weight(weight)
            typer.echo(f"text fusion weight {weight:g} (training-photo mAP by weight: "
                       + ", ".join(f"{w:g}: {m:.3f}" for w, m in table.items()) + ")")
        typer.echo(f"indexed {len(cat)} items into {out} ({cat.embedder.name if cat.adapter else model}{', adapted' if cat.adapter else ''}); "
                   f"skipped {len(errors)}")


@app.command("add")
@fail_cleanly
def add(
    catalog_dir: Path = typer.Argument(..., help="An existing catalog folder."),
    items: Path = typer.Argument(..., help="gallery.csv (seller_img_id are the ids), csv or folder of new items."),
) -> None:
    """Add or replace items (same id replaces) without rebuilding."""
    from productlens.data.readers import read_catalog
    from productlens.pipeline.catalog import Catalog

    with Catalog.open(catalog_dir) as cat:
        errors = cat.add(read_catalog(items))
        typer.echo(f"catalog now holds {len(cat)} items; skipped {len(errors)}")


@app.command("remove")
@fail_cleanly
def remove(catalog_dir: Path = typer.Argument(...), ids: List[int] = typer.Argument(..., help="Item ids.")) -> None:
    """Remove items by id."""
    from productlens.pipeline.catalog import Catalog

    with Catalog.open(catalog_dir) as cat:
        n = cat.remove(ids)
        typer.echo(f"removed {n}; catalog now holds {len(cat)} items")


@app.command("info")
@fail_cleanly
def info(catalog_dir: Path = typer.Argument(...)) -> None:
    """Describe a catalog."""
    from productlens.pipeline.catalog import Catalog

    with Catalog.open(catalog_dir) as cat:
        clf = cat.classifier
        typer.echo(f"items: {len(cat)}\nembedder: {cat.embedder.name}\ndim: {cat.store.dim}\n"
                   f"adapter: {'yes' if cat.adapter else 'no'}\n"
                   f"classifier: {f'{len(clf.labels)} classes ({clf.embedder_name})' if clf else 'no'}")


@app.command("attach-classifier")
@fail_cleanly
def attach_classifier(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder."),
    model_dir: Path = typer.Argument(..., help="A classifier folder from `productlens classify train`."),
) -> None:
    """Copy a category classifier into the catalog: `search` then also prints the query's top categories."""
    from productlens.pipeline.catalog import Catalog

    with Catalog.open(catalog_dir) as cat:
        cat.attach_classifier(model_dir)
        typer.echo(f"attached {model_dir} ({len(cat.classifier.labels)} classes) to {catalog_dir}")

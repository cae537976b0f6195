"""``productlens index``: build, add to, remove from and describe a catalog."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from productlens.cli.common import (fail_cleanly, fail_if_none_done, gallery_views_option, query_views_option,
                                     reports_skipped)
from productlens.config import DEFAULT_EMBEDDER

app = typer.Typer(help="Build and maintain a catalog index.", no_args_is_help=True)


@app.command("build")
@fail_cleanly
def build(
    catalog: Path = typer.Argument(..., help="Folder of photos (or of a folder per product), gallery.csv, "
                                             "labelled csv or products.jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Catalog folder to create."),
    train: Optional[Path] = typer.Option(None, help="csv of labelled shopper photos (image, product_id) to adapt the embedding."),
    model: str = typer.Option(DEFAULT_EMBEDDER, help="Embedder name (see `productlens models`)."),
    catalog_labels: bool = typer.Option(False, "--catalog-labels",
                                        help="Let the fine-tuning and the adapter learn from the catalog's own product ids."),
    finetune: bool = typer.Option(True, help="With --train: fine-tune the backbone's last blocks first (minutes)."),
    query_views: Optional[str] = query_views_option(),
    gallery_views: Optional[str] = gallery_views_option(),
    companions: bool = typer.Option(False, "--companions", help="Join the other bundled backbones, run on "
                                    "the whole photo, to the embedding (about 12 ms more per photo; helps "
                                    "products never trained on, hurts galleries of trained products)."),
    overwrite: bool = typer.Option(False, help="Replace an existing catalog folder (in one step with the embedded "
                                               "store; a Milvus or Qdrant collection is dropped before the new one "
                                               "is written, so a failed rebuild leaves it empty: rebuild again)."),
    ocr: bool = typer.Option(False, "--ocr", help="Read the print on gallery and query photos and fuse it with "
                                                  "the image score (needs --train: the weight is chosen on "
                                                  "its photos, cross-fitted over products)."),
    engine: str = typer.Option("local", help="local: embed in this process; ray: on Ray, in resumable "
                                             "parquet shards under OUT/work (rerun to resume)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster (e.g. ray://head:10001 "
                                                                          "or auto); default: a local Ray."),
    workers: int = typer.Option(2, help="--engine ray: model-holding workers."),
    shard_size: int = typer.Option(1024, "--shard-size", help="--engine ray: images per shard."),
    store: str = typer.Option("embedded", help="embedded (inside OUT, no server), milvus or qdrant."),
    vector_dtype: str = typer.Option("float32", "--vector-dtype", help="--store embedded: float32, or float16 "
                                     "(half the disk and page cache; scores change by about 1e-3)."),
    milvus_uri: Optional[str] = typer.Option(None, "--milvus-uri", help="Milvus server (default "
                                             "$PRODUCTLENS_MILVUS_URI or http://127.0.0.1:19530); token from "
                                             "$PRODUCTLENS_MILVUS_TOKEN."),
    collection: Optional[str] = typer.Option(None, help="--store milvus/qdrant: collection name (default: "
                                                        "OUT's name)."),
    milvus_index: str = typer.Option("hnsw", "--milvus-index", help="--store milvus: flat (exact), hnsw, "
                                                                    "ivf_flat or ivf_sq8."),
    qdrant_url: Optional[str] = typer.Option(None, "--qdrant-url", help="--store qdrant: a Qdrant server "
                                             "(default $PRODUCTLENS_QDRANT_URL or http://127.0.0.1:6333); API "
                                             "key from $PRODUCTLENS_QDRANT_API_KEY."),
    qdrant_path: Optional[Path] = typer.Option(None, "--qdrant-path", help="--store qdrant: a folder for "
                                               "qdrant-client's local mode instead of a server."),
) -> None:
    """Embed a catalog and write its index (atomically with the embedded store; resumably with --engine ray)."""
    from productlens.data.readers import read_catalog, read_labelled_csv
    from productlens.models.embedders.joined import companions_for
    from productlens.pipeline.catalog_build import build_catalog, check_catalog_target
    from productlens.pipeline.fusion import choose_text_weight
    from productlens.types import ProductLensError

    if engine not in ("local", "ray"):
        raise ProductLensError(f"--engine must be local or ray, not {engine!r}")
    spec = _store_spec(store, out, collection, milvus_uri=milvus_uri, milvus_index=milvus_index,
                       qdrant_url=qdrant_url, qdrant_path=qdrant_path, vector_dtype=vector_dtype)
    if engine == "ray":
        from productlens.pipeline.manifest import read_manifest

        unlisted: list[str] = []  # rows that name no photo (warned about as they are read)
        items = read_manifest(catalog, skipped=unlisted)  # also a csv/parquet manifest with id, image columns
        if train or ocr or companions or gallery_views not in (None, "none") or query_views not in (None, "none"):
            raise ProductLensError("--engine ray builds a catalog of plain embeddings of whole photos; --train, "
                                   "--ocr, --companions, --query-views and --gallery-views need --engine local")
        from productlens.pipeline.bulk import RayOptions, build_catalog_sharded

        cat, errors = build_catalog_sharded(items, out, embedder=model, store=spec, overwrite=overwrite,
                                            ray=RayOptions(address=ray_address, workers=workers,
                                                           shard_size=shard_size))
        with cat:
            typer.echo(f"indexed {len(cat)} items into {out} ({model}, Ray, {store} store); "
                       f"skipped {len(errors) + len(unlisted)}")
        return
    unlisted: list[str] = []  # rows that name no photo (warned about as they are read)
    items = read_catalog(catalog, skipped=unlisted)
    train_items = read_labelled_csv(train, label="product_id", need_label=True) if train else None
    if train and not train_items:
        raise ProductLensError(f"--train {train}: no labelled photo in it (only a header?)")
    if ocr and not train_items:
        raise ProductLensError("--ocr needs --train: the fusion weight is chosen on training photos")
    options = {"query_views": query_views, "gallery_views": gallery_views,
               "companions": companions_for(model) if companions else []}
    if ocr:  # chosen first: a failure here must not leave a catalog behind
        check_catalog_target(out, overwrite)  # nor may a folder that cannot be written cost the minutes it takes
        weight, table = choose_text_weight(items, train_items, embedder=model, use_gallery_labels=catalog_labels,
                                           progress=True, build=options)
    cat, errors = build_catalog(items, out, embedder=model, train=train_items,
                                use_gallery_labels=catalog_labels, finetune=finetune and train_items is not None,
                                overwrite=overwrite, ocr=ocr, store=spec, **options)
    with cat:
        if ocr:
            cat.set_text_weight(weight)
            typer.echo(f"text fusion weight {weight:g} (training-photo mAP by weight: "
                       + ", ".join(f"{w:g}: {m:.3f}" for w, m in table.items()) + ")")
        typer.echo(f"indexed {len(cat)} items into {out} ({cat.embedder.name if cat.adapter else model}{', adapted' if cat.adapter else ''}); "
                   f"skipped {len(errors) + len(unlisted)}")


def _store_spec(store: str, out: Path, collection: str | None, *, milvus_uri: str | None, milvus_index: str,
                qdrant_url: str | None, qdrant_path: Path | None, vector_dtype: str = "float32"):
    import os
    import re
    import urllib.parse

    from productlens.pipeline.store_spec import StoreSpec
    from productlens.types import ProductLensError

    from productlens.index.embedded.schema import VECTOR_DTYPES

    if vector_dtype not in VECTOR_DTYPES:
        raise ProductLensError(f"--vector-dtype must be one of {', '.join(VECTOR_DTYPES)}, not {vector_dtype!r}")
    if store == "embedded":
        return StoreSpec(options={"vector_dtype": vector_dtype} if vector_dtype != "float32" else {})
    if vector_dtype != "float32":
        raise ProductLensError(f"--vector-dtype applies to the embedded store; the {store} store keeps its own")
    # the default collection is named after the folder, in the letters Milvus takes ("2024-café" -> "c_2024_caf_")
    name = collection or re.sub(r"^(?=\d)", "c_", re.sub(r"[^A-Za-z0-9_]", "_", out.resolve().name))
    if store == "milvus" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", name):
        raise ProductLensError(f"--collection {name!r}: a Milvus collection name takes letters, digits and "
                               "underscores, starts with a letter or underscore, and has at most 200 characters")
    for uri in (milvus_uri, qdrant_url):
        if uri and "@" in (urllib.parse.urlsplit(uri).netloc or ""):  # it would be saved in store.json and shown
            raise ProductLensError("give the server's credentials in $PRODUCTLENS_MILVUS_TOKEN or "
                                   "$PRODUCTLENS_QDRANT_API_KEY, not in its address (the address is saved in "
                                   "the catalog's store.json and shown in messages)")
    if store == "milvus":
        return StoreSpec("milvus", name, {"uri": milvus_uri or os.environ.get("PRODUCTLENS_MILVUS_URI")
                                          or "http://127.0.0.1:19530", "index": milvus_index})
    if store == "qdrant":
        if qdrant_path is not None:
            if qdrant_path.resolve().is_relative_to(out.resolve()):  # the build swaps --out whole: it would go
                raise ProductLensError(f"--qdrant-path {qdrant_path} is inside --out {out}, which a build replaces "
                                       "whole; keep the Qdrant folder elsewhere")
            return StoreSpec("qdrant", name, {"location": str(qdrant_path.resolve())})
        return StoreSpec("qdrant", name, {"url": qdrant_url or os.environ.get("PRODUCTLENS_QDRANT_URL")
                                          or "http://127.0.0.1:6333"})
    raise ProductLensError(f"--store must be embedded, milvus or qdrant, not {store!r}")


@app.command("add")
@fail_cleanly
@reports_skipped
def add(
    catalog_dir: Path = typer.Argument(..., help="An existing catalog folder."),
    items: Path = typer.Argument(..., help="gallery.csv (seller_img_id are the ids), csv or folder of new items."),
) -> None:
    """Add or replace items (same id replaces) without rebuilding.

    A gallery csv or products.jsonl names its items' ids. A folder or an ``image`` csv does not:
    its items get new ids (never one the catalog has had), and a folder's subfolders become
    the products of the same category name, or new products."""
    from productlens.data.readers import catalog_ids_given, read_catalog
    from productlens.pipeline.catalog import Catalog
    from productlens.types import ProductLensError

    unlisted: list[str] = []  # rows that name no photo (warned about as they are read)
    new = read_catalog(items, skipped=unlisted)
    if not new:
        raise ProductLensError(f"{items}: no items to add")
    with Catalog.open(catalog_dir) as cat:
        with cat.writing():
            given = catalog_ids_given(items)
            if not given:
                new = cat.with_new_ids(new, products_by_category=items.is_dir())
            had = {it.id for it, md in zip(new, cat.store.get([it.id for it in new])) if md is not None}
            errors = cat.add(new)
            cat.mark_used(max(it.id for it in new))
            skipped = {i for i, _, _ in errors}
            done = [it.id for i, it in enumerate(new) if i not in skipped]
            added, replaced = [i for i in done if i not in had], [i for i in done if i in had]
            for _, _, message in errors:
                typer.echo(f"skipped: {message}", err=True)
            if added:
                typer.echo(f"added {len(added)} item(s) under {'their own' if given else 'new'} ids {id_ranges(added)}")
            if replaced:
                typer.echo(f"replaced {len(replaced)} item(s) with new photos or data: ids {id_ranges(replaced)}")
            typer.echo(f"catalog now holds {len(cat)} items; skipped {len(errors) + len(unlisted)}")
        if done:  # the same open catalog (its model stays loaded), after the writer lock is let go
            _approximate_index_now(cat)
    fail_if_none_done(len(done), len(errors) + len(unlisted))


def _approximate_index_now(cat) -> None:
    """Past the exact-search limit, bring ``cat``'s approximate index up to date now, not in the next search
    (a server's request). Called once the writer lock is let go: other writers need not wait for it. The
    items are in; a failure here is said, and the next search builds the index."""
    from productlens.types import ProductLensError

    try:
        if len(cat) > getattr(cat.store, "exact_max", len(cat)):
            typer.echo(f"bringing the approximate index up to date ({len(cat)} items: a second or two to patch "
                       "it, about half a minute per 200,000 to build it anew)", err=True)
            cat.store.build_index()
    except (ProductLensError, OSError, MemoryError) as exc:
        typer.echo(f"warning: the approximate index was not brought up to date ({exc}); the next search "
                   "will do it", err=True)


def id_ranges(ids: List[int], limit: int = 8) -> str:
    """``[4, 5, 6, 9]`` -> ``"4..6, 9"`` (runs of consecutive ids; after ``limit`` runs, the count of the rest)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    shown = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs[:limit])
    rest = sum(b - a + 1 for a, b in runs[limit:])
    return shown + (f" and {rest} more" if rest else "")


@app.command("remove")
@fail_cleanly
def remove(catalog_dir: Path = typer.Argument(..., help="A catalog folder."),
           ids: List[int] = typer.Argument(..., help="Item ids.")) -> None:
    """Remove items by id (under the catalog's writer lock, as `index add` and the service write)."""
    from productlens.pipeline.catalog import Catalog

    with Catalog.open(catalog_dir) as cat, cat.writing():
        unknown = [i for i, md in zip(ids, cat.store.get(ids)) if md is None]
        n = cat.remove(ids)
        typer.echo(f"removed {n}; catalog now holds {len(cat)} items")
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            typer.echo(f"warning: {len(unknown)} id(s) not in the catalog: {shown}", err=True)


@app.command("info")
@fail_cleanly
def info(catalog_dir: Path = typer.Argument(..., help="A catalog folder.")) -> None:
    """Describe a catalog."""
    from productlens.pipeline.catalog import Catalog

    with Catalog.open(catalog_dir, check=False) as cat:
        clf = cat.classifier
        dtype = getattr(cat.store, "vector_dtype", None)
        typer.echo(f"items: {len(cat)}\nembedder: {cat.vector_name}\ndim: {cat.store.dim}"
                   f"{f' ({dtype})' if dtype else ''}\n"
                   f"adapter: {'yes' if cat.adapter else 'no'}\n"
                   f"views: queries {cat.store.get_info('query_views', 'none')}, "
                   f"gallery {cat.store.get_info('gallery_views', 'none')}\n"
                   f"classifier: {f'{len(clf.labels)} classes ({clf.embedder_name})' if clf else 'no'}")
        if cat.model_changed:
            typer.echo(f"warning: {cat.model_changed}: searches are refused until it is restored or the "
                       "catalog rebuilt", err=True)


@app.command("attach-classifier")
@fail_cleanly
def attach_classifier(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder."),
    model_dir: Path = typer.Argument(..., help="A classifier folder from `productlens classify train`."),
) -> None:
    """Copy a category classifier into the catalog: `search` then also prints the query's top categories."""
    from productlens.pipeline.catalog import Catalog

    with Catalog.open(catalog_dir) as cat, cat.writing():
        cat.attach_classifier(model_dir)
        typer.echo(f"attached {model_dir} ({len(cat.classifier.labels)} classes) to {catalog_dir}")

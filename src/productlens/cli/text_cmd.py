"""``productlens text``: text queries, image-text alignment, zero-shot categories, OCR."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import List, Optional

import typer

from productlens.cli.common import expand_folders, fail_cleanly, fail_if_none_done, owner_label, reports_skipped
from productlens.config import ZERO_SHOT_IMAGENET_WEIGHT
from productlens.types import ProductLensError

app = typer.Typer(help="Product text: search by words, align photos with titles, zero-shot, OCR.",
                  no_args_is_help=True)


@app.command("search")
@fail_cleanly
def search(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder whose items have titles or descriptions."),
    query: str = typer.Argument(..., help='Words, e.g. "oat yoghurt".'),
    k: int = typer.Option(10, "-k", min=1, help="Number of products."),
    photos: bool = typer.Option(False, "--photos", help="Rank photos through the image-text alignment instead "
                                                        "(`productlens text align` first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Rank the catalog's products (or photos) for a text query."""
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.multimodal import photos_for_text, text_search
    from productlens.types import key_owner

    with Catalog.open(catalog_dir) as cat:
        if photos:
            rows = [{"id": h.id, "product_id": h.product_id, "title": h.title, "image": h.image, "score": h.score}
                    for h in photos_for_text(cat, query, k)]
        else:
            # an item with no product stands for itself (text_search keys it by product_key): name the item
            rows = []
            for key, title, score in text_search(cat, query, k):
                pid, item = key_owner(key)
                rows.append({"product_id": pid, "title": title, "score": score} if item is None else
                            {"product_id": None, "id": item, "title": title, "score": score})
            if rows and all(r["score"] < 1e-4 for r in rows):  # no BM25 score (TextSearch.scores: ties < 1e-4)
                typer.echo("note: no word of the query occurs in the catalog's text; the products are ordered "
                           "by MiniLM similarity alone (the scores shown are BM25's, all 0)", err=True)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r, row in enumerate(rows, 1):
        who = owner_label(row["product_id"], row.get("id"))
        typer.echo(f"{r:3d}  {row['score']:.4f}  {who}  {row['title'] or row.get('image', '')}")


@app.command("align")
@fail_cleanly
@reports_skipped
def align(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder."),
    train: Optional[Path] = typer.Option(None, help="csv of labelled photos (image, product_id) of the catalog's "
                                                    "products: more pairs than the gallery alone."),
) -> None:
    """Train the image -> text alignment on the catalog's (photo, product text) pairs."""
    from productlens.data.readers import read_labelled_csv
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.multimodal import fit_catalog_alignment

    with Catalog.open(catalog_dir) as cat:
        photos = read_labelled_csv(train, label="product_id", need_label=True) if train else ()
        m = fit_catalog_alignment(cat, photos, progress=True)
    for msg in m["skipped"]:
        typer.echo(f"skipped: {msg}", err=True)
    typer.echo(f"alignment saved in {catalog_dir}/align: {m['gallery_photos']} gallery + {m['train_photos']} "
               f"training photos of {m['products']} products (ridge alpha {m['alpha']:g})")


@app.command("zero-shot")
@fail_cleanly
def zero_shot_cmd(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder with an alignment."),
    images: List[str] = typer.Argument(..., help="Photos (or folders of photos) to name."),
    names: str = typer.Option(..., help="Category names, comma-separated, or @FILE with one name a line."),
    k: int = typer.Option(4, "-k", min=1, help="Names per photo, most likely first."),
    imagenet_weight: float = typer.Option(
        ZERO_SHOT_IMAGENET_WEIGHT, "--imagenet-weight", min=0.0,
        help="Weight of the backbone's ImageNet concepts beside the catalog's alignment (0: alignment only)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Name each photo's category among NAMES by text alone (the names need no photos).

    Scores: the alignment's cosine with --imagenet-weight 0; otherwise both signals,
    each standardised over the names, added (higher is better, not a probability).
    """
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.multimodal import zero_shot

    if names.startswith("@"):
        try:
            lines = Path(names[1:]).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ProductLensError(f"{names[1:]}: not a UTF-8 text file of names ({e.reason} "
                                   f"at byte {e.start})") from None
        except IsADirectoryError:
            raise ProductLensError(f"{names[1:]}: a folder; --names @FILE reads one name a line") from None
        name_list = [ln.strip() for ln in lines if ln.strip()]
    else:  # comma-separated, csv-style: "Milk, 3%",Juice is two names
        name_list = [n.strip() for n in next(csv.reader([names], skipinitialspace=True), []) if n.strip()]
    name_list = distinct_names(name_list)
    images = expand_folders(images)
    if not images:
        raise ProductLensError("no images given (the folders hold no image files)")
    with Catalog.open(catalog_dir) as cat:
        preds = zero_shot(cat, images, name_list, k=k, imagenet_weight=imagenet_weight)
    if as_json:
        typer.echo(json.dumps([{"image": i, "categories": p} for i, p in zip(images, preds)]))
    else:
        for img, p in zip(images, preds):
            typer.echo(f"{img}: " + ("unreadable" if p is None else ", ".join(f"{n} {s:.3f}" for n, s in p)))
    fail_if_none_done(sum(p is not None for p in preds), sum(p is None for p in preds))


def distinct_names(names: List[str]) -> List[str]:
    """Each name once, the first spelling kept: a name given twice would split its own score. Names that differ
    only in case, spacing or a hyphen or underscore between words ("Oat milk", "oat-milk", "oat_milk") are one:
    the text model reads no case and nearly the same words. Other punctuation keeps names apart ("C++" and "C",
    "-5°C" and "5°C"). Each merge is said on stderr."""
    firsts: dict[str, str] = {}
    for n in names:
        key = " ".join(re.sub(r"(?<=\w)[-_](?=\w)", " ", n.casefold()).split())
        if key in firsts and firsts[key] != n:
            typer.echo(f"note: names {firsts[key]!r} and {n!r} are taken as one ({firsts[key]!r})", err=True)
        firsts.setdefault(key, n)
    return list(firsts.values())


@app.command("ocr")
@fail_cleanly
@reports_skipped
def ocr(
    images: List[str] = typer.Argument(..., help="Photos (or folders of photos) to read."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (text, score, box per word)."),
) -> None:
    """Print the words read on each photo (an unreadable photo is reported and skipped)."""
    from productlens.models.ocr import get_ocr

    images = expand_folders(images)
    if not images:
        raise ProductLensError("no images given (the folders hold no image files)")
    words, errors = get_ocr().read_many(images)
    for _, _, msg in errors:
        typer.secho(f"skipped: {msg}", err=True, fg=typer.colors.YELLOW)  # the message names the file
    if as_json:
        typer.echo(json.dumps([{"image": img, "words": None if w is None else
                                [{"text": x.text, "score": round(x.score, 4), "box": x.box} for x in w]}
                               for img, w in zip(images, words)]))
    else:
        for img, w in zip(images, words):
            if w is not None:
                typer.echo(f"{img}: " + " ".join(x.text for x in w))
    fail_if_none_done(len(images) - len(errors), len(errors))

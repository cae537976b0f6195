"""``productlens search``, ``rank`` and ``demo``."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Optional

import typer

from productlens.cli import demo_state
from productlens.cli.common import unused_text_note, verify_option
from productlens.config import DEFAULT_EMBEDDER, GIVEN_TEXT_WEIGHT
from productlens.eval.metrics import same_product


def search(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder (from `productlens index build`)."),
    image: str = typer.Argument(..., help="Query image: a path or an http(s) URL."),
    box: Optional[str] = typer.Option(None, help="Product box in pixels: x,y,w,h (clipped to the image)."),
    k: int = typer.Option(10, "-k", min=1, help="Number of results."),
    rerank: bool = typer.Option(True, help="alpha-QE re-ranking."),
    verify: Optional[bool] = verify_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    detect: bool = typer.Option(False, "--detect", help="Without --box: search the best detected product."),
    detector: Optional[str] = typer.Option(None, help="Detector folder or onnx:PATH for --detect (default: "
                                                      "$PRODUCTLENS_DETECTOR or the cache's detectors/default)."),
    text: Optional[str] = typer.Option(None, help="Words about the query (e.g. a title), fused with the image "
                                                  "score (at the catalog's text weight, chosen on its training "
                                                  f"photos; else {GIVEN_TEXT_WEIGHT})."),
    plot: Optional[Path] = typer.Option(None, help="Also write a PNG of the query and its results here."),
) -> None:
    """Rank the catalog for one query photo."""
    from productlens.data.images import read_once
    from productlens.eval.sheets import sheet_path
    from productlens.models.detectors import load_detector
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.detect import best_box_of
    from productlens.types import Box

    if plot:
        sheet_path(plot)
    query_box = Box.parse(box)
    with Catalog.open(catalog_dir) as cat:
        note = unused_text_note(cat, text)
        if note:
            typer.echo(note, err=True)
        source = read_once(image)  # a URL: downloaded once for the detector, the search and the categories
        if detect and query_box is None:
            query_box = best_box_of(load_detector(detector), source)
            shown = ",".join(f"{v:.0f}" for v in query_box.as_tuple()) if query_box else "none (whole photo)"
            typer.echo(f"detected box: {shown}", err=True)
        hits = cat.search(source, box=query_box, k=k, rerank=rerank, text=text, verify=verify)
        categories = None
        if not as_json and cat.classifier is not None:  # the attached classifier's top 4 categories
            categories = cat.classify(source, box=query_box, k=4)
    if plot:
        _plot_hits([(source, query_box, None, hits)], plot, title=f"{Path(image).name}: top {len(hits)}")
    if as_json:
        typer.echo(json.dumps([h.__dict__ for h in hits]))
        return
    if categories is not None:
        typer.echo("categories: " + ", ".join(f"{c} {p:.2f}" for c, p in categories))
    for rank, h in enumerate(hits, 1):
        product = h.product_id if h.product_id is not None else "-"
        typer.echo(f"{rank:3d}  {h.score:.4f}  id={h.id}  product={product}  {h.title or h.image}")


def _plot_hits(queries: list, path: Path, *, title: str, per_row: int = 6) -> None:
    """A sheet of (query image, box, true product id or None, hits): the query, then its results
    with score and title; green/red borders where the true product is known (-1, a distractor,
    is never right). A sheet that cannot be written is a warning: the results stand."""
    from productlens.eval.sheets import RIGHT, WRONG, Tile, contact_sheet
    from productlens.types import ProductLensError, result_name

    rows = []
    for image, box, truth, hits in queries:
        tiles = [Tile(image, "query" + (f"\nproduct {truth}" if truth is not None else ""), box=box)]
        for r, h in enumerate(hits, 1):
            border = None if truth is None else RIGHT if same_product(h.product_id, truth) else WRONG
            name = result_name(h.title, h.id, h.product_id)
            tiles.append(Tile(h.image, f"#{r} {h.score:.3f}\n{name}", border=border))
        rows += [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    try:
        typer.echo(f"wrote {contact_sheet(rows, path, title=title)}", err=True)
    except ProductLensError as exc:
        typer.echo(f"warning: {exc}", err=True)


def rank(
    catalog_dir: Path = typer.Argument(..., help="A catalog folder built from gallery.csv."),
    queries: Path = typer.Argument(..., help="AIcrowd queries.csv (user_img_id, img_path, bbox_x..bbox_h)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the N x k int32 .npy."),
    k: int = typer.Option(1000, "-k", min=1, help="Ranked gallery ids per query: the columns of the .npy."),
    rerank: bool = typer.Option(True, help="alpha-QE re-ranking."),
    verify: Optional[bool] = verify_option(),
) -> None:
    """Write the AIcrowd Visual Product Recognition submission array (seller_img_id, best first)."""
    from productlens.data.readers import read_queries
    from productlens.fileio import check_outputs_apart
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.rank import check_submission_ids, rank_queries, rankings_path, save_rankings

    rankings_path(out)  # before the ranking, not after it
    check_outputs_apart({"--out": out}, reads=[queries], folders=[catalog_dir])
    with Catalog.open(catalog_dir) as cat:
        check_submission_ids(cat.store.ids())
        rankings, errors = rank_queries(cat, read_queries(queries), k, rerank=rerank, verify=verify)
    save_rankings(rankings, out)
    typer.echo(f"wrote {rankings.shape[0]} x {rankings.shape[1]} rankings to {out}; {len(errors)} queries unreadable")


def default_catalog() -> Path | None:
    """``$CATALOG``, else ../shared/data/grocery beside the project, else None."""
    env = os.environ.get("CATALOG")
    if env:
        return Path(env)
    return beside_project("grocery")


def beside_project(*parts: str) -> Path | None:
    """``../shared/data/<parts>`` beside the working directory or beside the project, if it is a folder."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        cand = base.parent.joinpath("shared", "data", *parts)
        if cand.is_dir():
            return cand
    return None


DEMO_COMPOSITES = 300  # composites for the demo's product detector: a few minutes on 2 cores


def default_backgrounds(catalog: Path) -> Path | None:
    """Photos without grocery products to paste onto: the ccp street photos beside the catalog's
    folders, or in ../shared/data beside the project (as :func:`default_catalog`), if present."""
    here = Path(catalog).resolve()
    near = (p.parent / "ccp" / "photos" for p in (here, *here.parents))
    return next((c for c in near if c.is_dir()), None) or beside_project("ccp", "photos")


def demo_detector(items, out: Path, backgrounds: Path | None, composites: int = DEMO_COMPOSITES) -> None:
    """Train (or reuse) the demo's class-agnostic product detector at ``out``, or say why not."""
    import tempfile

    from productlens.data.coco import read_coco
    from productlens.data.readers import image_files
    from productlens.data.synth import synthesize_coco
    from productlens.pipeline.detect_train import DetectTrainOptions, train_detector
    from productlens.types import ProductLensError

    if (out / "detector.json").is_file():
        typer.echo(f"product detector: reusing {out} (delete it to retrain)")
        return
    photos = [str(f) for f in image_files(backgrounds)] if backgrounds and backgrounds.is_dir() else []
    if not photos:
        typer.echo("product detector: skipped, no background photos (give --backgrounds DIR); "
                   "the page then shows no boxes")
        return
    typer.echo(f"training a product detector on {composites} composites (catalog photos pasted onto "
               f"{len(photos)} photos from {backgrounds}) ...")
    try:
        with tempfile.TemporaryDirectory(prefix="productlens-demo-det-") as tmp:
            ann = synthesize_coco([it.image for it in items], photos, Path(tmp) / "composites",
                                  n_images=composites, progress=False)
            m = train_detector(read_coco(ann), out, DetectTrainOptions(epochs=3, scales=(1.0,)))
    except ProductLensError as e:  # e.g. no white-background catalog photo to cut out
        typer.echo(f"product detector: skipped ({e}); the page then shows no boxes")
        return
    typer.echo(f"product detector written to {out} ({m.get('seconds', 0):.0f} s)")


def command_name() -> str:
    """How to type this command from here: ``productlens`` where the shell finds this one, else its path
    (`make run` runs .venv/bin/productlens, which a shell without the venv activated does not find)."""
    import shutil
    import sys

    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("productlens")
    if here is None or here.name != "productlens" or (found and Path(found).resolve() == here):
        return "productlens"
    try:
        return os.path.relpath(here)
    except ValueError:
        return str(here)


def _demo_catalog(items, src: Path, out: Path, model: str, train, unlisted: list[str], classifier_base: Path | None):
    """Build the demo's catalog at ``out`` (and attach a category classifier trained on
    ``classifier_base``/train.csv when given); returns it open."""
    import tempfile

    from productlens.data.labelled import read_labelled
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.pipeline.classify import TrainOptions, train_classifier

    demo_state.forget(out)
    typer.echo(f"indexing {len(items)} catalog items from {src}"
               + (f", adapting on {len(train)} labelled photos" if train else ""))
    labelled = any(it.product_id is not None for it in items)  # a catalog knows its products
    cat, errors = build_catalog(items, out, embedder=model, train=train, use_gallery_labels=labelled,
                                overwrite=True)
    typer.echo(f"catalog written to {out} ({len(cat)} items, skipped {len(errors) + len(unlisted)})")
    if classifier_base is not None:
        typer.echo("training a category classifier on train.csv (category_name) ...")
        with tempfile.TemporaryDirectory(prefix="productlens-demo-") as tmp:
            res = train_classifier(read_labelled(classifier_base / "train.csv", label="category_name"),
                                   Path(tmp) / "clf", TrainOptions(embedder=model, views="flip", tta="tta"))
            cat.attach_classifier(Path(tmp) / "clf")
        typer.echo(f"classifier attached: {res.classifier.metrics['classes']} categories, {res.seconds:.0f} s")
    return cat


def demo(
    catalog: Optional[Path] = typer.Option(None, help="Catalog folder/csv/jsonl; default $CATALOG or ../shared/data/grocery."),
    out: Path = typer.Option(Path("runs/catalog"), help="Where the catalog index is written (replaced if it is "
                                                        "one); demo.png and detector/ go beside it, in its parent."),
    model: str = typer.Option(DEFAULT_EMBEDDER, help="Embedder name."),
    queries: int = typer.Option(5, min=0, help="How many example queries to answer."),
    seed: int = typer.Option(0, help="Seed for picking the example queries."),
    classifier: bool = typer.Option(True, help="With a train.csv that has a category_name column: train a "
                                               "category classifier (frozen backbone, flips; minutes) and "
                                               "attach it, for the top-4 categories."),
    detector: bool = typer.Option(True, help="Train a product detector on copy-paste composites of the "
                                             "catalog's white-background photos (minutes; kept beside the "
                                             "catalog as detector/ and reused on later runs), for the boxes "
                                             "on the page. Needs background photos."),
    backgrounds: Optional[Path] = typer.Option(None, help="Folder of photos without products to paste onto; "
                                                          "default ../shared/data/ccp/photos when present."),
) -> None:
    """Index a catalog and answer example queries (the main job of `make run`)."""
    from productlens.data.readers import read_catalog, read_labelled_csv
    from productlens.pipeline.catalog import Catalog
    from productlens.types import ProductLensError

    src = catalog or default_catalog()
    if src is None:
        raise ProductLensError("no catalog: ../shared/data/grocery is absent and CATALOG is not set; "
                               "run `make run CATALOG=/path/to/folder-or.csv`")
    if not Path(src).exists():
        given = "--catalog" if catalog else "CATALOG"
        raise ProductLensError(f"no catalog at {src} (from {given}): give a folder of photos, a csv or a "
                               "products.jsonl")
    src = Path(src)
    if detector and backgrounds is not None and not backgrounds.is_dir():  # before the minutes of indexing
        raise ProductLensError(f"--backgrounds {backgrounds}: no such folder")
    unlisted: list[str] = []  # rows that name no photo (warned about as they are read)
    items = read_catalog(src, skipped=unlisted)
    base = src if src.is_dir() else src.parent
    train = read_labelled_csv(base / "train.csv") if (base / "train.csv").is_file() else None
    with_classifier = bool(classifier and train and any(t.category for t in train))
    key = demo_state.build_key([str(src), *([str(base / "train.csv")] if train else []),
                                *(str(it.image) for it in (*items, *(train or ())))],
                               {"model": model, "classifier": with_classifier})
    cat = None
    if demo_state.reusable(out, key):
        try:
            cat = Catalog.open(out)
            typer.echo(f"catalog: reusing {out}, built from these same photos (delete it to rebuild)")
        except ProductLensError as e:  # damaged since: built anew
            typer.echo(f"catalog: rebuilding {out} ({e})")
    if cat is None:
        cat = _demo_catalog(items, src, out, model, train, unlisted, base if with_classifier else None)
        demo_state.remember(out, key)
    if detector:
        demo_detector(items, out.parent / "detector", backgrounds or default_backgrounds(src))
    held_out = (base / "val.csv").is_file()
    pool = read_labelled_csv(base / "val.csv") if held_out else items
    if not held_out:  # each example then finds itself first: say so rather than let the ticks impress
        typer.echo("\nno val.csv beside the catalog: the examples are catalog photos, which find themselves first")
    rng = random.Random(seed)
    shown = []
    with cat:
        for q in rng.sample(list(pool), min(queries, len(pool))):
            try:
                hits = cat.search(q.image, k=3)
            except ProductLensError as e:  # a photo the build skipped too: said, and the next example
                typer.echo(f"\nskipped example: {e}", err=True)
                continue
            shown.append((q.image, q.box, q.product_id, hits))
            truth = f" (true product {q.product_id}{': ' + q.title if q.title else ''})" \
                if q.product_id is not None else ""
            typer.echo(f"\nquery {q.image}{truth}")
            for r, h in enumerate(hits, 1):
                mark = " ✓" if same_product(h.product_id, q.product_id) else ""
                typer.echo(f"  {r}. {h.score:.3f}  {h.title or h.image}{mark}")
    if shown:
        from productlens.eval.sheets import drawn_here

        picture = out.parent / "demo.png"  # demo's own output (make run's runs/demo.png)
        if picture.is_file() and not drawn_here(picture):
            picture.unlink()  # one drawn before pictures carried productlens's mark: demo replaces it
        _plot_hits(shown, picture, title="example queries and their top 3 (green: the right product)")
    typer.echo(f"\nsearch it: {command_name()} search {out} PHOTO.jpg")

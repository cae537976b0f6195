"""``productlens eval``: end-to-end evaluation commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from productlens.cli.common import fail_cleanly, gallery_views_option, query_views_option, verify_option
from productlens.config import DEFAULT_EMBEDDER

app = typer.Typer(help="Evaluate productlens on labelled data.", no_args_is_help=True)


@app.command("retrieval")
@fail_cleanly
def retrieval(
    gallery: Path = typer.Option(..., help="gallery.csv (seller_img_id, img_path, product_id; -1 = distractor)."),
    queries: Path = typer.Option(..., help="queries.csv (user_img_id, img_path, bbox_x..bbox_h, product_id)."),
    train: Optional[Path] = typer.Option(None, help="csv of labelled shopper photos to adapt the embedding."),
    catalog: bool = typer.Option(False, "--catalog", help="Catalog mode: the gallery's product ids may be used."),
    finetune: bool = typer.Option(True, help="With --train: fine-tune the backbone's last blocks first (minutes)."),
    model: str = typer.Option(DEFAULT_EMBEDDER, help="Embedder name."),
    rerank: bool = typer.Option(True, help="alpha-QE re-ranking."),
    verify: Optional[bool] = verify_option(),
    query_views: Optional[str] = query_views_option(),
    gallery_views: Optional[str] = gallery_views_option(),
    companions: bool = typer.Option(False, "--companions", help="Join the other bundled backbones, run on "
                                    "the whole photo, to the embedding (about 12 ms more per photo; helps "
                                    "products never trained on, hurts galleries of trained products)."),
    rankings: Optional[Path] = typer.Option(None, help="Also write the N x 1000 rankings .npy here."),
    detect: bool = typer.Option(False, "--detect", help="Queries without a box: search the best detected box."),
    detector: Optional[str] = typer.Option(None, help="Detector folder or onnx:PATH for --detect (default: "
                                                      "$PRODUCTLENS_DETECTOR or the cache's detectors/default)."),
    text: bool = typer.Option(False, "--text", help="Fuse OCR words (and --products text) with the image "
                                                   "score; the weight is chosen on the --train photos."),
    products: Optional[Path] = typer.Option(None, help="products.jsonl: product titles for --text (catalog mode)."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of queries and their top 5 results (the lowest "
                                                   "AP first, then an even sample)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
) -> None:
    """Rank the gallery for every query and print mAP@1000, top-1, top-5, recall@10."""
    from productlens.eval.retrieval import evaluate_retrieval
    from productlens.fileio import check_outputs_apart
    from productlens.models.detectors import load_detector
    from productlens.models.embedders.joined import companions_for

    check_outputs_apart({"--rankings": rankings, "--plot": plot}, reads=[gallery, queries, train, products])
    m = evaluate_retrieval(gallery, queries, train_csv=train, catalog_mode=catalog, embedder=model,
                           rerank=rerank, finetune=finetune, rankings_out=rankings,
                           progress=not as_json, detector=load_detector(detector) if detect else None,
                           text=text, products=products, query_views=query_views, gallery_views=gallery_views,
                           companions=companions_for(model) if companions else [], verify=verify, plot=plot)
    typer.echo(f"mode: {'catalog' if catalog else 'challenge'}  model: {model}  adapted: {bool(train)}"
               f"  fine-tuned: {bool(train) and finetune}  detect: {detect}"
               + (f"  text weight: {m['text_weight']:g}" if text else ""))
    typer.echo(f"queries: {m['queries']}  gallery: {m['gallery']}  skipped: {m['skipped']}  seconds: {m['seconds']}")
    typer.echo(f"mAP@1000: {m['map@1000']:.4f}  top-1: {m['top1']:.4f}  top-5: {m['top5']:.4f}  "
               f"recall@10: {m['recall@10']:.4f}")
    if m.get("without_match"):
        typer.echo(f"warning: {m['without_match']} of {m['queries']} queries show a product with no photo in the "
                   "gallery (or no product_id): each scores 0 in every figure", err=True)
    if rankings:
        typer.echo(f"wrote the rankings (one row of seller_img_id per query, best first) to {rankings}", err=True)
    if plot:
        typer.echo(f"warning: {m['plot_error']}" if "plot_error" in m else f"wrote {plot}", err="plot_error" in m)
    if as_json:
        typer.echo(json.dumps({k: m[k] for k in ("map@1000", "top1", "top5", "recall@10", "queries",
                                                  "gallery", "seconds", "text_weight") if k in m}))


from productlens.cli.classify_cmd import eval_classify  # noqa: E402

app.command("classify")(eval_classify)

from productlens.cli.detect_cmd import eval_detect  # noqa: E402

app.command("detect")(eval_detect)

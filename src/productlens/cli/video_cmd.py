"""``productlens identify-video``: which catalog product a short clip shows."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from productlens.cli.common import owner_label, unused_text_note
from productlens.config import GIVEN_TEXT_WEIGHT
from productlens.data.video import MAX_FRAMES, MAX_FRAMES_LIMIT


def identify_video(
    clip: Path = typer.Argument(..., help="A video file (mp4, avi, mov, webm...)."),
    catalog: Optional[Path] = typer.Option(None, help="A catalog folder (from `productlens index build`)."),
    products: Optional[Path] = typer.Option(None, help="Or a products.jsonl: a catalog of its shop images is "
                                                       "built on the fly (titles included)."),
    text: Optional[str] = typer.Option(None, help="A title or transcript given with the clip, fused with the "
                                                  "image score."),
    text_weight: Optional[float] = typer.Option(None, help="Weight of --text (and the frames' OCR) against the "
                                                           "image score (default: the catalog's, chosen on its "
                                                           f"training photos; else {GIVEN_TEXT_WEIGHT})."),
    detect: bool = typer.Option(False, "--detect", help="Search the best detected product in each frame."),
    detector: Optional[str] = typer.Option(None, help="Detector folder or onnx:PATH for --detect (default: "
                                                      "$PRODUCTLENS_DETECTOR or the cache's detectors/default)."),
    k: int = typer.Option(5, "-k", min=1, help="Number of products."),
    max_frames: int = typer.Option(MAX_FRAMES, min=1, max=MAX_FRAMES_LIMIT,
                                   help="Frames sampled evenly over the clip, whatever its length."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Rank catalog products for a video clip, with the timestamps of the frames that support each."""
    from productlens.data.readers import read_catalog
    from productlens.models.detectors import load_detector
    from productlens.pipeline.catalog import Catalog
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.pipeline.video import identify_video as run
    from productlens.types import ProductLensError

    if (catalog is None) == (products is None):
        raise ProductLensError("give one of --catalog DIR or --products products.jsonl")
    det = load_detector(detector) if detect else None
    with tempfile.TemporaryDirectory(prefix="productlens-video-") as tmp:
        if products is not None:
            cat, _ = build_catalog(read_catalog(products), Path(tmp) / "catalog", progress=False)
        else:
            cat = Catalog.open(catalog)
        with cat:
            note = unused_text_note(cat, text, text_weight)
            if note:
                typer.echo(note, err=True)
            res = run(cat, clip, detector=det, text=text, k=k, max_frames=max_frames, text_weight=text_weight)
    if as_json:
        typer.echo(json.dumps(asdict(res)))
        return
    typer.echo(f"{clip}: {res.duration:.1f} s, {res.frames_sampled} frames sampled, {res.frames_used} used "
               f"({res.dropped_blank} blank, {res.dropped_blurred} blurred, {res.dropped_duplicates} "
               "near-duplicates" + (f", {res.dropped_unusable} unusable" if res.dropped_unusable else "") + " dropped)")
    for r, m in enumerate(res.products, 1):
        times = ", ".join(f"{t:.2f}s" for t in m.times[:8]) + (" ..." if len(m.times) > 8 else "")
        typer.echo(f"{r:3d}  {m.score:.4f}  {owner_label(m.product_id, m.id)}  {m.title}  frames: {times or '-'}")

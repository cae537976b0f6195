"""``productlens data``: fetch datasets into the cache."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from productlens.cli.common import fail_cleanly

app = typer.Typer(help="Datasets: download (cached; checksummed; safe extraction) and make copy-paste "
                       "detection data.", no_args_is_help=True)


@app.command("fetch")
@fail_cleanly
def fetch(
    url: str = typer.Argument(..., help="http(s):// or file:// URL of a file or archive."),
    sha256: Optional[str] = typer.Option(None, help="Expected SHA-256 of the download."),
    extract: bool = typer.Option(False, help="Unpack a zip / tar(.gz) beside the download."),
) -> None:
    """Download URL into the cache (once) and print the local path."""
    from productlens.data.download import fetch as do_fetch

    typer.echo(str(do_fetch(url, sha256=sha256, extract=extract)))


@app.command("composites")
@fail_cleanly
def composites(
    products: Path = typer.Argument(..., help="White-background product photos: a folder, or a gallery/catalog csv."),
    backgrounds: Path = typer.Argument(..., help="A folder of background photos (with none of the products in them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the composites and annotations.json."),
    n: int = typer.Option(600, "-n", min=1, help="Number of composite photos."),
    tag: str = typer.Option("product", help="The single category name of the boxes."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Copy-paste detection data: cut the products out and paste them onto backgrounds (COCO json out).

    OUT is written whole (replaced atomically); a file, or a folder of yours that productlens
    did not write, is refused before any work. Each photo that cannot be used is reported."""
    from tqdm import tqdm

    from productlens.data.readers import image_files, read_catalog
    from productlens.data.synth import write_composites
    from productlens.fileio import check_replaceable

    def images_in(folder: Path) -> list[str]:  # not an earlier run's composites when --out lies inside
        return [str(p) for p in image_files(folder, exclude=out)]

    def warn(msg: str) -> None:  # on a line of its own, above the progress bar
        tqdm.write(f"warning: {msg}", file=sys.stderr)

    check_replaceable(out)
    sources = images_in(products) if products.is_dir() else [it.image for it in read_catalog(products)]
    done = write_composites(sources, images_in(backgrounds), out, n_images=n, tag=tag, seed=seed, warn=warn)
    path = done.annotations
    typer.echo(f"{done.summary()}; wrote {path}; train a detector on it with "
               f"`productlens detector train {path} --out DIR`")

"""Build a catalog on Ray: manifest -> embedding shards -> store, each stage resumable.

``build_catalog_sharded`` is what ``productlens index build --engine ray`` runs.
The catalog folder keeps the stages' files::

    catalog/
      work/manifest.parquet, work/shards/   (productlens.pipeline.manifest / .shards)
      store/ or store.json                   (productlens.pipeline.store_spec)

A run that fails or is killed (a Ray worker lost, the Milvus server gone)
leaves the shards written so far and the store marked incomplete
(``load_complete`` False, which :meth:`Catalog.open` refuses); the same command
again embeds only the missing shards and loads only the shards not loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from productlens.config import DEFAULT_EMBEDDER
from productlens.pipeline.catalog import MODEL_KEY, Catalog, catalog_format
from productlens.pipeline.features_cache import model_record
from productlens.pipeline.store_spec import SPEC_FILE, StoreSpec
from productlens.types import Item, ProductLensError

WORK = "work"


@dataclass(frozen=True)
class RayOptions:
    """How to run the embedding on Ray (see :func:`productlens.pipeline.ray_embed.embed_shards`)."""

    address: str | None = None  # a cluster (``ray://head:10001`` or ``auto``); None: a local Ray
    workers: int = 2            # model-holding actors
    cpus_per_worker: int = 1    # CPUs and inference threads of each
    shard_size: int = 1024      # images per shard (the unit of resumption)
    batch_size: int = 32


def _is_finished(out: Path) -> bool:
    try:
        spec = StoreSpec.of(out)
        store = spec.open(out)
    except ProductLensError:  # no catalog, or its collection is gone: nothing finished to keep
        return False
    with store:
        return store.get_info("load_complete", True) is not False


def build_catalog_sharded(items: Sequence[Item], out: str | os.PathLike, *, embedder: str = DEFAULT_EMBEDDER,
                          store: StoreSpec | None = None, ray: RayOptions = RayOptions(),
                          overwrite: bool = False, progress: bool = True) -> tuple[Catalog, list]:
    """Embed ``items`` on Ray into shards under ``out/work`` and load them into the catalog's store.

    Returns the open catalog and the skipped images' ``(manifest row, image,
    message)``. An unfinished build in ``out`` (same items, same embedder) is
    resumed; a finished catalog is replaced only with ``overwrite``. The store is
    the embedded one in ``out/store`` unless ``store`` names a server (Milvus).
    """
    from productlens.models.embedders import get_embedder
    from productlens.pipeline.manifest import write_manifest
    from productlens.pipeline.ray_embed import embed_shards
    from productlens.pipeline.shards import all_errors, load_shards, read_meta

    out = Path(out)
    spec = store or StoreSpec()
    if not items:
        raise ProductLensError("the catalog has no items")
    if out.exists() and not out.is_dir():
        raise ProductLensError(f"{out} exists and is not a folder")
    if out.exists() and _is_finished(out):
        if not overwrite:
            raise ProductLensError(f"{out} holds a finished catalog; pass --overwrite to rebuild it")
        import shutil

        shutil.rmtree(out)
    recorded = (out / SPEC_FILE).is_file() or (out / "store").is_dir()
    spec.probe(out, overwrite, resume=recorded)  # a server that cannot be reached fails before the embedding
    out.mkdir(parents=True, exist_ok=True)
    work = out / WORK
    write_manifest(items, work)
    # before any shard is loaded, a rerun tries the images an earlier run skipped again (a share that was
    # not mounted): their shards had counted as done, and the rerun reported an empty catalog as built
    report = embed_shards(work, embedder=embedder, shard_size=ray.shard_size, workers=ray.workers,
                          address=ray.address, batch_size=ray.batch_size, progress=progress,
                          cpus_per_worker=ray.cpus_per_worker, retry_errors=not recorded)
    if not report.complete:  # pragma: no cover - embed_shards raises on failures
        raise ProductLensError(f"only {report.shards_done_before + report.shards_written} of "
                               f"{report.shards_total} shards were embedded; rerun to resume")
    errors = all_errors(work)  # every shard's, not only this run's
    if len(errors) >= len(items):  # as the single-process build: an empty catalog is no result
        shown = "; ".join(str(e[-1]) for e in errors[:3])
        raise ProductLensError(f"no gallery image could be read ({len(errors)} skipped: {shown})")
    dim = read_meta(work)["dim"]
    old = StoreSpec.of(out) if recorded else spec
    if (old.backend, old.path) != (spec.backend, spec.path):
        raise ProductLensError(f"{out} was started with the {old.backend} store {old.path or 'store/'}, not "
                               f"the {spec.backend} store {spec.path or 'store/'}")
    # a store this build did not record may be another catalog's collection: create() refuses it
    st = spec.open(out, dim=dim) if recorded else spec.create(out, dim, overwrite=overwrite)
    try:
        spec.save(out)
        for key, value in (("adapter", False), ("ocr", False), (MODEL_KEY, model_record(get_embedder(embedder))),
                           ("catalog_format", catalog_format("none"))):
            st.set_info(key, value)
        load_shards(work, st, progress=progress)
    finally:
        st.close()
    return Catalog.open(out), errors


__all__ = ["RayOptions", "build_catalog_sharded"]

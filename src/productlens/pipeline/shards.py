"""Embedding shards on disk (parquet) and loading them into a catalog store.

A work dir holds ``manifest.parquet`` (:mod:`productlens.pipeline.manifest`) and::

    shards/_meta.json             {"embedder", "dim", "shard_size", "rows"}
    shards/shard-000012.parquet   id int64, vector fixed_size_list<float32>[dim], metadata json str
    shards/shard-000012.errors.json  [{"index", "id", "image", "message"}, ...] (skipped images)

Shard ``i`` holds manifest rows ``[i * shard_size, (i + 1) * shard_size)``; a
shard file that exists is complete (it is renamed into place after its errors
file). :func:`productlens.pipeline.ray_embed.embed_shards` writes them;
:func:`load_shards` puts them into any :class:`~productlens.index.Store`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from productlens.pipeline.manifest import _pa
from productlens.progress import bar_disable
from productlens.types import ProductLensError

log = logging.getLogger(__name__)

SHARDS = "shards"
META = "_meta.json"


def shard_path(work_dir: str | os.PathLike, shard: int) -> Path:
    """The parquet file of shard number ``shard`` (``shards/shard-000012.parquet``)."""
    return Path(work_dir) / SHARDS / f"shard-{shard:06d}.parquet"


def read_meta(work_dir: Path) -> dict[str, Any] | None:
    """The work dir's ``shards/_meta.json`` (embedder, dim, shard_size, rows), None before any run."""
    path = work_dir / SHARDS / META
    return json.loads(path.read_text()) if path.is_file() else None


def shard_errors(work_dir: str | os.PathLike, shard: int) -> list[tuple[int, str, str]]:
    """The images shard ``shard`` skipped, ``(manifest row, image, message)``; [] for a shard not written."""
    path = shard_path(work_dir, shard).with_suffix(".errors.json")
    if not path.is_file() or not shard_path(work_dir, shard).is_file():
        return []
    return [(e["index"], e["image"], e["message"]) for e in json.loads(path.read_text(encoding="utf-8"))]


def all_errors(work_dir: str | os.PathLike) -> list[tuple[int, str, str]]:
    """The images every written shard skipped (this run's and earlier runs'), in manifest order."""
    meta = read_meta(Path(work_dir))
    if meta is None:
        return []
    n = math.ceil(meta["rows"] / meta["shard_size"])
    return sorted(e for s in range(n) for e in shard_errors(work_dir, s))


def _read_shard(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    _, pq = _pa()
    table = pq.read_table(path)
    vec = table.column("vector").combine_chunks()
    vectors = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    ids = table.column("id").to_numpy().astype(np.int64, copy=False)
    return ids, vectors, [json.loads(t) for t in table.column("metadata").to_pylist()]


def iter_shards(work_dir: str | os.PathLike) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[dict]]]:
    """Yield ``(shard_no, ids int64, vectors float32 (n, dim), metadata dicts)`` of the completed shards, in order."""
    work_dir = Path(work_dir)
    meta = read_meta(work_dir)
    if meta is None:
        raise ProductLensError(f"{work_dir} holds no shards: run embed_shards first")
    for shard in range(math.ceil(meta["rows"] / meta["shard_size"])):
        path = shard_path(work_dir, shard)
        if path.is_file():
            yield (shard, *_read_shard(path, meta["dim"]))


def _store_call(what: str, fn, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise ProductLensError(f"load_shards: {what} failed: {type(exc).__name__}: {exc} (loaded shards are "
                               f"recorded in the store's 'loaded_shards'; rerun load_shards to continue)") from exc


def load_shards(work_dir: str | os.PathLike, store, *, progress: bool = True) -> int:
    """Upsert every completed shard into ``store`` in shard order; returns the number of items upserted now.

    The store's info records the shards loaded (``loaded_shards``, updated after
    each shard's upsert, so a rerun skips them), where they came from
    (``loaded_from``), the ``embedder``, and ``load_complete`` (False until every
    shard of the manifest is in). A store error becomes a ProductLensError naming
    the shard. A store of another dim or embedder, or with an adapter, is refused.
    """
    from tqdm.auto import tqdm

    work_dir = Path(work_dir)
    meta = read_meta(work_dir)
    if meta is None:
        raise ProductLensError(f"{work_dir} holds no shards: run embed_shards first")
    if store.dim != meta["dim"]:
        raise ProductLensError(f"the store holds {store.dim}-d vectors but the shards in {work_dir} are "
                               f"{meta['dim']}-d ({meta['embedder']})")
    info_embedder = _store_call("reading the store's info", store.get_info, "embedder")
    if info_embedder not in (None, meta["embedder"]):
        raise ProductLensError(f"the store holds {info_embedder} embeddings, the shards {meta['embedder']}")
    if _store_call("reading the store's info", store.get_info, "adapter"):
        raise ProductLensError("the store's vectors go through an adapter; the shards hold plain embeddings")
    n_shards = math.ceil(meta["rows"] / meta["shard_size"])
    source = {"work_dir": str(work_dir.absolute()), **meta}
    loaded: set[int] = set()
    if _store_call("reading the store's info", store.get_info, "loaded_from") == source:
        loaded = set(_store_call("reading the store's info", store.get_info, "loaded_shards") or [])
    for key, value in (("load_complete", False), ("loaded_from", source), ("loaded_shards", sorted(loaded)),
                       ("embedder", meta["embedder"])):
        _store_call("writing the store's info", store.set_info, key, value)
    todo = [s for s in range(n_shards) if s not in loaded and shard_path(work_dir, s).is_file()]
    count = 0
    for shard in tqdm(todo, desc="loading shards", unit="shard", disable=bar_disable(progress)):
        ids, vectors, metadata = _read_shard(shard_path(work_dir, shard), meta["dim"])
        if len(ids):
            _store_call(f"upserting shard {shard} ({len(ids)} items)", store.upsert, ids, vectors, metadata)
        loaded.add(shard)
        _store_call(f"recording shard {shard}", store.set_info, "loaded_shards", sorted(loaded))
        count += len(ids)
    if len(loaded) == n_shards:
        _store_call("indexing", store.build_index)  # a server backend indexes what it was sent
        _store_call("writing the store's info", store.set_info, "load_complete", True)
    else:
        log.warning("load_shards: %d of %d shards loaded; embed the missing ones and rerun",
                    len(loaded), n_shards)
    return count


__all__ = ["all_errors", "iter_shards", "load_shards", "read_meta", "shard_errors", "shard_path"]

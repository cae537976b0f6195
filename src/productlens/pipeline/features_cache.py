"""On-disk cache of image features, per embedder and view.

Layout: ``cache_dir()/features/<embedder slug>-<model hash>/<view hash>/shard-*.npz``
(``$PRODUCTLENS_FEATURE_CACHE`` replaces ``cache_dir()/features``);
each shard holds ``keys`` (sha1 of the file's bytes and crop box) and ``vectors``
(float16). The embedder's folder is named by the sha256 of its ONNX file and its
preprocessing, and holds a ``last-used`` mark that each use touches. So a changed
file, a changed model or a changed preprocessing misses the cache, while a copy of the same photos
(another folder, new modification times, another machine with the same cache)
or the same model exported again hits it.
Shards are written through :func:`productlens.fileio.atomic_path`, so an
interrupted run keeps every finished shard and never leaves a partial one; many
small shards are merged into one now and then.

Vectors are stored and returned as float16-rounded values, so features are the
same whether they were just computed or read back.

The same identity guards what is stored elsewhere: :func:`model_record` is what a catalog
records of its model, and :func:`model_change` says why an embedder is no longer the one a
catalog or a classifier recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from productlens.fileio import atomic_path, file_hash
from productlens.types import Item

log = logging.getLogger(__name__)

#: Shards in one view folder beyond which they are merged into one.
MAX_SHARDS = 24
#: The names FeatureCache gives its files and folders (``productlens cache`` finds them by these).
SHARDS = "shard-*.npz"
VIEW_FILE = "view.txt"
#: an empty file in an embedder's folder, touched whenever the folder is used (see :func:`last_used`)
USED_FILE = "last-used"
_EMBEDDER_DIR = re.compile(r"^[A-Za-z0-9._-]*-[0-9a-f]{12}$")
_VIEW_DIR = re.compile(r"^[0-9a-f]{16}$")


def feature_root() -> Path:
    """Where the feature cache lies: ``$PRODUCTLENS_FEATURE_CACHE``, else the cache's ``features``."""
    from productlens.config import cache_dir

    return Path(os.environ.get("PRODUCTLENS_FEATURE_CACHE") or cache_dir() / "features")


def cache_folders(root: str | os.PathLike | None = None) -> list[tuple[Path, list[Path]]]:
    """Each embedder folder that :class:`FeatureCache` wrote under ``root`` (default
    :func:`feature_root`), with its view folders; known by their names, sorted."""
    root = Path(root) if root is not None else feature_root()
    if not root.is_dir():
        return []
    out = []
    for emb in sorted(p for p in root.iterdir() if p.is_dir() and _EMBEDDER_DIR.match(p.name)):
        out.append((emb, sorted(v for v in emb.iterdir() if v.is_dir() and _VIEW_DIR.match(v.name))))
    return out


def last_used(folder: Path) -> float:
    """When an embedder's folder of the feature cache was last used (seconds since the epoch): the
    time of its :data:`USED_FILE`, or for a folder written before that file existed, of its newest shard."""
    try:
        return (folder / USED_FILE).stat().st_mtime
    except OSError:
        return max((f.stat().st_mtime for f in folder.glob(f"*/{SHARDS}")), default=0.0)


def model_identity(embedder) -> str:
    """A string that changes whenever the embedder's model or its preprocessing changes (a user's
    ``onnx:PATH`` model keeps its preprocessing in a JSON file, which may change on its own)."""
    if hasattr(embedder, "main") and hasattr(embedder, "companion"):  # a JoinedEmbedder
        return f"{model_identity(embedder.main)}+{model_identity(embedder.companion)}"
    parts = [str(embedder.name), str(getattr(embedder, "gem_p", ""))]
    preprocess = getattr(embedder, "preprocess", None)
    if hasattr(preprocess, "to_json"):
        parts.append(json.dumps(preprocess.to_json(), sort_keys=True))
    onnx = getattr(embedder, "onnx_path", None)
    if onnx is not None:
        try:
            parts.append("sha256:" + model_fingerprint(embedder))
        except OSError:
            parts.append(str(onnx))
    return "|".join(parts)


_FINGERPRINTS: dict[tuple, str] = {}


def model_fingerprint(embedder) -> str:
    """sha256 (first 16 hex digits) of the embedder's ONNX file: recorded by trained heads."""
    onnx = getattr(embedder, "onnx_path", None)
    if onnx is None:
        return ""
    from productlens.models.embedders.export import file_sha256

    return _memo_digest(_FINGERPRINTS, Path(onnx), lambda path: file_sha256(path)[:16])



def model_record(embedder) -> dict[str, Any]:
    """What a catalog records of the model its vectors were made with (see :func:`model_change`): a user's
    ``onnx:`` model file's fingerprint, and the preprocessing (which such a model keeps in a JSON file)."""
    user_file = str(embedder.name).startswith("onnx:")
    return {"fingerprint": model_fingerprint(embedder) if user_file else "",
            "preprocess": embedder.preprocess.to_json()}


def model_change(record: dict[str, Any] | None, embedder, since: str = "this catalog was built") -> str | None:
    """Why ``embedder`` is not the model a record names (``{"fingerprint", "preprocess"}``, as made by
    :func:`model_record` for catalogs and kept by classifiers), or None. A changed model file or
    preprocessing would embed new photos unlike the stored vectors, and results would go wrong
    silently. Empty entries are not checked (records older than them)."""
    if not record:
        return None
    from productlens.models.embedders.base import Preprocess

    fingerprint = record.get("fingerprint")
    if fingerprint and model_fingerprint(embedder) != fingerprint:
        return f"the model file of {embedder.name} changed since {since}"
    recorded = record.get("preprocess")
    if recorded and Preprocess.from_json(recorded) != embedder.preprocess:
        return f"the preprocessing of {embedder.name} changed since {since}; it was {json.dumps(recorded)}"
    return None

#: sha1 of each image file read so far, keyed by its path, size and modification time.
_CONTENT: dict[tuple, str] = {}
_CONTENT_MAX = 500_000


def _memo_digest(memo: dict, path: Path, digest) -> str:
    """``digest(path)``, computed once per (resolved path, size, mtime) in this process."""
    path = path.resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in memo:
        if len(memo) >= _CONTENT_MAX:
            memo.clear()
        memo[key] = digest(path)
    return memo[key]


def source_key(source: Any) -> str | None:
    """The cache key of a local image file (path or :class:`Item`), or None (URL, bytes, missing).

    It is the sha1 of the file's bytes and the crop box: the same photo gets the same key
    wherever it lies. Each file is read once per process (memoised by path, size and
    modification time); reading is a small cost beside decoding it for the model.
    """
    box = None
    if isinstance(source, Item):
        source, box = source.image, source.box
    if not isinstance(source, (str, os.PathLike)) or "://" in str(source):
        return None
    try:
        digest = _memo_digest(_CONTENT, Path(source), file_hash)
    except OSError:
        return None
    text = f"{digest}|{box.as_tuple() if box else ''}"
    return hashlib.sha1(text.encode()).hexdigest()


class FeatureCache:
    """Cached vectors of one embedder, looked up by :func:`source_key` and view key."""

    def __init__(self, embedder, root: str | os.PathLike | None = None) -> None:
        root = root if root is not None else feature_root()
        ident = model_identity(embedder)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(embedder.name).split("/")[-1])[:40]
        self.dir = Path(root) / f"{slug}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"
        self.dim = int(embedder.dim)
        self._index: dict[str, dict[str, tuple[int, int]]] = {}
        self._shards: dict[str, list[np.ndarray]] = {}
        self._touched = False

    def _view_dir(self, view_key: str) -> Path:
        return self.dir / hashlib.sha1(view_key.encode()).hexdigest()[:16]

    def _touch(self) -> None:
        """Mark the folder used now (once per instance), so that ``productlens cache`` can tell
        folders in use from those of models nobody runs any more."""
        if self._touched or not self.dir.is_dir():
            return
        try:
            (self.dir / USED_FILE).touch()
        except OSError:  # a read-only cache still serves its vectors
            pass
        self._touched = True

    def _load(self, view_key: str) -> None:
        if view_key in self._index:
            return
        self._touch()
        index: dict[str, tuple[int, int]] = {}
        shards: list[np.ndarray] = []
        folder = self._view_dir(view_key)
        for file in sorted(folder.glob(SHARDS)) if folder.is_dir() else []:
            try:
                with np.load(file) as data:
                    keys, vecs = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError) as exc:  # merged away meanwhile, or damaged
                log.debug("feature cache: skipping %s (%s)", file, exc)
                continue
            if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(keys) != len(vecs):
                continue
            for row, key in enumerate(keys.tolist()):
                index[key.decode() if isinstance(key, bytes) else str(key)] = (len(shards), row)
            shards.append(vecs)
        self._index[view_key], self._shards[view_key] = index, shards

    def get(self, view_key: str, keys: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(found, vectors)``: a boolean mask over ``keys`` and the found rows (float32)."""
        self._load(view_key)
        index, shards = self._index[view_key], self._shards[view_key]
        found = np.array([k is not None and k in index for k in keys], bool)
        out = np.zeros((int(found.sum()), self.dim), np.float32)
        for j, k in enumerate(k for k, f in zip(keys, found) if f):
            s, r = index[k]
            out[j] = shards[s][r]
        return found, out

    def put(self, view_key: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` (one row per key) as a new shard, atomically."""
        if len(keys) == 0:
            return
        folder = self._view_dir(view_key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / VIEW_FILE).write_text(view_key)
        vecs = np.asarray(vectors, np.float16)
        name = f"shard-{hashlib.sha1(''.join(keys).encode()).hexdigest()[:16]}-{os.getpid()}.npz"
        _write_npz(folder / name, np.array(list(keys), dtype="S40"), vecs)
        self._touch()
        self._load(view_key)
        index, shards = self._index[view_key], self._shards[view_key]
        for row, key in enumerate(keys):
            index[key] = (len(shards), row)
        shards.append(vecs)
        if len(list(folder.glob(SHARDS))) > MAX_SHARDS:
            self._merge(view_key)

    def _merge(self, view_key: str) -> None:
        """Rewrite a view folder's shards as one (readers meanwhile still see whole files)."""
        folder = self._view_dir(view_key)
        old = sorted(folder.glob(SHARDS))
        self._index.pop(view_key, None)
        self._load(view_key)
        index, shards = self._index[view_key], self._shards[view_key]
        keys = list(index)
        vecs = np.stack([shards[s][r] for s, r in index.values()]) if keys else np.zeros((0, self.dim), np.float16)
        merged = folder / f"shard-merged-{os.getpid()}-{len(keys)}.npz"
        _write_npz(merged, np.array(keys, dtype="S40"), vecs)
        for f in old:
            if f != merged:
                f.unlink(missing_ok=True)
        self._index.pop(view_key, None)


def _write_npz(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=keys, vectors=vectors)


@dataclass
class ViewFeatures:
    """``vectors[v, j]`` is the feature of ``sources[ok[j]]`` under ``views[v]`` (float16 values).

    ``errors`` holds ``(index, source, message)`` for the images that could not be read.
    """

    vectors: np.ndarray
    ok: np.ndarray
    errors: list = field(default_factory=list)
    views: list = field(default_factory=list)


#: the most groups of images (by the views they miss) that :func:`embed_views` embeds apart; past it,
#: every image that misses a view is embedded under all of them, in one pass
MAX_VIEW_GROUPS = 4


def _missing_groups(have: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
    """``(views, images)`` to embed, from ``have`` (views x images: cached or not): the images that miss
    views grouped by which, largest group first; one group under every view when there are more than
    :data:`MAX_VIEW_GROUPS`."""
    todo = np.flatnonzero(~have.all(axis=0))
    if not len(todo):
        return []
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in todo:
        groups.setdefault(tuple(np.flatnonzero(~have[:, i]).tolist()), []).append(int(i))
    if len(groups) > MAX_VIEW_GROUPS:
        return [(list(range(have.shape[0])), todo)]
    return [(list(v), np.array(m, np.int64)) for v, m in sorted(groups.items(), key=lambda g: -len(g[1]))]


def embed_views(embedder, sources: Sequence, views: Sequence, *, cache: bool | FeatureCache = True,
                progress: bool = True, chunk: int = 1024, batch_size: int = 32,
                workers: int | None = None) -> ViewFeatures:
    """Embed every source (path, :class:`Item`, URL or bytes) under every view.

    Local files are looked up in (and added to) the feature cache, chunk by chunk,
    so an interrupted run resumes where it stopped. An image missing under some views
    is decoded once and embedded under those views only: images are grouped by the
    views they miss (a photo cached under ``regions`` and asked for ``shelf`` runs
    the mosaic views alone), or, past :data:`MAX_VIEW_GROUPS` such groups, embedded
    under every view (the cached views keep their cached vectors). An image that
    cannot be read is reported once and skipped in all views. A batch holds
    ``batch_size // len(views)`` images (at least one): the model sees about
    ``batch_size`` inputs a call. ``workers``: decode threads, as for
    :func:`~productlens.pipeline.embed.embed_items`.
    """
    from productlens.data.augment import StackedViewEmbedder
    from productlens.pipeline.embed import embed_items

    n, dim, nv = len(sources), int(embedder.dim), len(views)
    store = cache if isinstance(cache, FeatureCache) else (FeatureCache(embedder) if cache else None)
    keys = [source_key(s) for s in sources] if store else [None] * n
    out = np.zeros((nv, n, dim), np.float16)
    have = np.zeros((nv, n), bool)
    if store is not None:
        for v, view in enumerate(views):
            have[v], vecs = store.get(view.key, keys)
            out[v, have[v]] = vecs
    failed: dict[int, tuple] = {}
    for missing, todo in _missing_groups(have):
        stacked = StackedViewEmbedder(embedder, [views[v] for v in missing])
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            res = embed_items(stacked, [sources[i] for i in part], batch_size=batch_size, workers=workers,
                              progress=progress, desc=f"{len(missing)} view{'s' if len(missing) > 1 else ''}"
                              + (f" ({len(todo)} of {n} images not cached)" if len(todo) < n else ""))
            for j, _, msg in res.errors:
                failed.setdefault(int(part[j]), (int(part[j]), sources[part[j]], msg))
            rows = part[res.ok]
            vecs = res.vectors.reshape(len(rows), len(missing), dim)
            for j, v in enumerate(missing):
                new = ~have[v, rows]
                out[v, rows[new]] = vecs[new, j]
                if store is not None:
                    keep = [int(r) for r in rows[new] if keys[r] is not None]
                    if keep:
                        store.put(views[v].key, [keys[r] for r in keep], out[v, keep])
    ok = np.array([i for i in range(n) if i not in failed], np.int64)
    errors = [failed[i] for i in sorted(failed)]
    return ViewFeatures(np.ascontiguousarray(out[:, ok]), ok, errors, list(views))


__all__ = ["FeatureCache", "ViewFeatures", "cache_folders", "embed_views", "feature_root", "last_used",
           "model_change", "model_fingerprint", "model_identity",
           "model_record", "source_key"]

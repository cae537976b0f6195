"""What productlens keeps in its cache directory: sizes, and clearing parts of it.

The cache (:func:`productlens.config.cache_dir`, ``$PRODUCTLENS_CACHE``) holds:

``features``
    image features per backbone, photo and view (``$PRODUCTLENS_FEATURE_CACHE``
    moves them); the largest part, and recomputed when next needed. Each backbone's
    folder records when it was last used, so the folders of models nobody runs any
    more can be cleared alone (``unused_days``).
``models``
    ONNX exports of the bundled backbones (``onnx/``), exported again on first use.
``text``
    text embeddings of class names for zero-shot categories, recomputed on first use.
``downloads``
    files fetched by ``productlens data fetch``; fetching again needs the network.
``detectors``
    the default product detector, ``detectors/default`` (``productlens detector train ... --out`` that
    folder puts one there; ``make run`` keeps its own in ``runs/detector``); training it again takes minutes.

Clearing removes only what productlens itself names that way (shards and view
files, ``*.onnx``, ``*.npy``, url-hash folders, a detector folder), never other
files someone keeps in the same folders, and leaves temporaries that a running
writer still holds. Without names, :func:`clear_cache` clears the parts that
come back by themselves (features, models, text).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from productlens.config import cache_dir
from productlens.fileio import sweep_stale
from productlens.pipeline.features_cache import SHARDS, USED_FILE, VIEW_FILE, cache_folders, feature_root, last_used
from productlens.types import ProductLensError

_URL_DIR = re.compile(r"^[0-9a-f]{16}$")  # data.download's folder per url


@dataclass(frozen=True)
class CachePart:
    """One part of the cache: where it lies, what it holds and how it comes back once cleared."""

    name: str
    path: Path
    holds: str
    comes_back: str
    rebuilt: bool  # cleared by default: it comes back by itself when needed


@dataclass(frozen=True)
class Usage:
    part: CachePart
    files: int
    bytes: int


def cache_parts() -> list[CachePart]:
    """The parts of the cache, in the order ``productlens cache info`` lists them."""
    root = cache_dir()
    return [
        CachePart("features", feature_root(), "image features per backbone, photo and view",
                  "recomputed when next needed (minutes per thousand photos)", True),
        CachePart("models", root / "onnx", "ONNX exports of the bundled backbones", "exported again on first use",
                  True),
        CachePart("text", root / "text", "text embeddings of class names (zero-shot)", "recomputed on first use", True),
        CachePart("downloads", root / "downloads", "files fetched by `productlens data fetch`",
                  "fetched again (needs the network)", False),
        CachePart("detectors", root / "detectors", "the default product detector, detectors/default (one "
                  "you train there)",
                  "trained again (minutes)", False),
    ]


def _part(name: str) -> CachePart:
    parts = {p.name: p for p in cache_parts()}
    if name not in parts:
        raise ProductLensError(f"no cache part {name!r}; the parts are {', '.join(parts)}")
    return parts[name]


def _ours(part: CachePart, unused_days: float | None = None) -> Iterator[Path]:
    """The files and folders of ``part`` that productlens wrote (known by their names); of the
    features, with ``unused_days``, only the backbone folders not used for that many days."""
    path = part.path
    if not path.is_dir():
        return
    if part.name == "features":
        cutoff = None if unused_days is None else time.time() - unused_days * 86400
        for emb, views in cache_folders(path):
            if cutoff is not None and last_used(emb) >= cutoff:
                continue
            for view in views:
                yield from sorted(view.glob(SHARDS))
                if (view / VIEW_FILE).is_file():
                    yield view / VIEW_FILE
            if (emb / USED_FILE).is_file():
                yield emb / USED_FILE
    elif part.name in ("models", "text"):
        yield from sorted(path.glob("*.onnx" if part.name == "models" else "*.npy"))
    elif part.name == "downloads":
        yield from sorted(p for p in path.iterdir() if p.is_dir() and _URL_DIR.match(p.name))
    elif part.name == "detectors":
        default = path / "default"
        if (default / "detector.json").is_file():
            yield default


def _size(path: Path) -> tuple[int, int]:
    if path.is_file():
        return 1, path.stat().st_size
    files = [f for f in path.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def cache_usage(names: Sequence[str] = ()) -> list[Usage]:
    """Files and bytes that productlens wrote in each part (all parts without ``names``)."""
    out = []
    for part in [_part(n) for n in names] or cache_parts():
        files = size = 0
        for path in _ours(part):
            n, b = _size(path)
            files, size = files + n, size + b
        out.append(Usage(part, files, size))
    return out


def feature_folders() -> list[tuple[str, int, int, int, float]]:
    """Per backbone in the feature cache: (folder name, views, files, bytes, last used: seconds since
    the epoch), the most recently used first."""
    rows = []
    for emb, views in cache_folders():
        shards = [s for v in views for s in v.glob(SHARDS)]
        rows.append((emb.name, len(views), len(shards), sum(s.stat().st_size for s in shards), last_used(emb)))
    return sorted(rows, key=lambda r: -r[4])


def clear_cache(names: Sequence[str] = (), unused_days: float | None = None) -> list[Usage]:
    """Remove what productlens wrote in the named parts (without names: the parts that come back by
    themselves); returns what was removed from each. Folders left empty are removed too.

    ``unused_days``: of the features, clear only the backbone folders nobody used for that many
    days (models no longer run, a preprocessing since changed); without names, only the features."""
    if unused_days is not None and unused_days < 0:
        raise ProductLensError(f"unused days must be 0 or more, not {unused_days}")
    default = [p for p in cache_parts() if p.rebuilt and (unused_days is None or p.name == "features")]
    parts = [_part(n) for n in names] or default
    removed = []
    for part in parts:
        files = size = 0
        touched: set[Path] = set()
        for path in list(_ours(part, unused_days)):
            n, b = _size(path)
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:  # another process removed (or merged) it meanwhile
                continue
            files, size = files + n, size + b
            touched.add(path.parent)
        for folder in sorted(touched, key=lambda p: -len(p.parts)):
            _prune(folder, stop=part.path)
        removed.append(Usage(part, files, size))
    return removed


def _prune(folder: Path, stop: Path) -> None:
    """Sweep stale temporaries from ``folder``; remove it and its parents up to ``stop`` once empty."""
    while folder != stop and stop in folder.parents:
        sweep_stale(folder)
        try:
            folder.rmdir()
        except OSError:  # not empty: something else lives there, or a writer is at work
            return
        folder = folder.parent


def human(n: int) -> str:
    """Bytes as a short human-readable size: ``512 B``, ``3.4 MB``, ``1.2 GB``."""
    if n < 1024:
        return f"{n} B"
    size, unit = float(n) / 1024, "KB"
    for bigger in ("MB", "GB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


__all__ = ["CachePart", "Usage", "cache_parts", "cache_usage", "clear_cache", "feature_folders", "human"]

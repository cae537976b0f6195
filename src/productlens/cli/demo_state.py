"""What the demo's catalog was built from, so that a second `make run` on unchanged photos reuses it.

The demo rebuilt its catalog on every run: on the grocery data about 8 minutes of embedding on 2 cores
(the catalog build does not read the feature cache), and the page's history, kept in the catalog
folder, went with it. A small record beside the catalog names what went in: the photos and manifests
(path, size, modification time), the options, and the productlens code itself, so an edit to any of
them builds anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import productlens


def _stat(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
        return path, st.st_size, st.st_mtime_ns
    except OSError:  # a missing photo is part of what was built from: it is skipped the same way
        return path, -1, -1


def _code_digest() -> str:
    """The package's own source files: an upgrade or an edit rebuilds."""
    root = Path(productlens.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def build_key(files: Iterable[str], options: dict[str, Any]) -> str:
    """A digest of ``files`` (photos, manifests; URLs by name) and ``options``."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for f in sorted(set(files)):
        h.update(json.dumps(_stat(f) if "://" not in f else (f,)).encode())
    h.update(_code_digest().encode())
    return h.hexdigest()


def record_path(out: Path) -> Path:
    return out.parent / f".{out.name}.demo.json"


def reusable(out: Path, key: str) -> bool:
    """Whether ``out`` holds a catalog built from ``key``'s inputs (its record says so)."""
    try:
        record = json.loads(record_path(out).read_text())
    except (OSError, ValueError):
        return False
    return record.get("key") == key and (out / "store").is_dir()


def remember(out: Path, key: str) -> None:
    """Record ``key`` for the catalog just written at ``out`` (atomically)."""
    from productlens.fileio import atomic_path

    with atomic_path(record_path(out)) as tmp:
        tmp.write_text(json.dumps({"key": key}) + "\n")


def forget(out: Path) -> None:
    """Drop the record before ``out`` is rebuilt: a build that stops half way leaves no stale claim."""
    record_path(out).unlink(missing_ok=True)

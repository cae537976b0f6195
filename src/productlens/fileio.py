"""Atomic file writes: write to a temporary name beside the target, fsync, rename.

What is written gets the permissions of an ordinary file or folder under the
process's umask (``tempfile`` alone would leave it private to its owner), and a
folder that :func:`atomic_dir` would replace must be one productlens wrote: a
user's folder given by mistake as ``--out`` is refused, not wiped.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from productlens.types import ProductLensError

#: written into every folder :func:`atomic_dir` creates; such a folder may be replaced whole
MARKER = ".productlens"
#: what folders written before the marker existed hold: they may be replaced too
_LEGACY_FILES = frozenset({"config.json", "metrics.json", "head.npz", "labels.json", "detector.json", "model.onnx",
                           "adapter.npz", "adapter.json", "weights.npz", "backbone"})
_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def share(path: str | os.PathLike) -> None:
    """Give ``path`` (from ``tempfile``, private to its owner) an ordinary file's or folder's permissions."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def check_replaceable(target: str | os.PathLike) -> None:
    """Raise ProductLensError unless :func:`atomic_dir` may replace ``target``: it does not
    exist, is an empty folder, or is a folder productlens wrote (its marker file, or only
    the files productlens writes). Call it before long work that ends in such a write."""
    target = Path(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise ProductLensError(f"{target} exists and is not a folder; choose another output folder")
    names = {p.name for p in target.iterdir()}
    if not names or MARKER in names or names <= _LEGACY_FILES:
        return
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    raise ProductLensError(f"{target} already holds files productlens did not write ({shown}); it would be "
                           "replaced whole: choose another output folder, or empty or remove this one")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsync'ed and
    renamed onto ``target``, on failure removed. Readers never see a partial file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        share(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success its files are fsync'ed and it
    replaces ``target`` (an existing folder stays whole until the new one is in place), on
    failure it is removed. Readers see the old folder or the new one, never a partial one.
    ``target`` must pass :func:`check_replaceable` (checked before anything is written)."""
    import shutil

    target = Path(os.path.abspath(target))  # '.' and '..' have no name to put beside
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    share(tmp)
    try:
        yield tmp
        (tmp / MARKER).write_text("written by productlens: this folder is replaced whole when written again\n")
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the folder ``new`` at ``target`` (a folder, or nothing), removing the old folder.

    On Linux the two are swapped in one step (``renameat2`` with ``RENAME_EXCHANGE``)
    and the old folder is removed afterwards: a kill at any moment leaves the old
    folder or the new one at ``target``. Where that call is missing, the old folder
    is first renamed to ``<target>.old``; a kill between the two renames leaves it there.
    """
    import shutil

    new, target = Path(new), Path(target)
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # it now holds the old folder
        return
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0

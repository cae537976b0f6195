"""Atomic file writes: write to a temporary name beside the target, fsync, rename.

What is written gets the permissions of an ordinary file or folder under the
process's umask (``tempfile`` alone would leave it private to its owner), and a
folder that :func:`atomic_dir` would replace must be one productlens wrote: a
user's folder given by mistake as ``--out`` is refused, not wiped.

Every temporary file or folder written beside a target is named
``<target>.<random>.pltmp`` and locked (``flock``) by its writer for as long as
it lives. A writer killed with SIGKILL leaves its temporary behind, unlocked;
a later write into the same folder removes it (:func:`sweep_stale`, at most once
every ``SWEEP_EVERY`` seconds a folder in one process, so that writing many files
into one folder does not list it again for each).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from productlens.types import ProductLensError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: temporaries are not locked, and never swept
    fcntl = None

#: written into every folder :func:`atomic_dir` creates; such a folder may be replaced whole
MARKER = ".productlens"
#: what folders written before the marker existed hold: they may be replaced too
_LEGACY_FILES = frozenset({"config.json", "metrics.json", "head.npz", "labels.json", "detector.json", "model.onnx",
                           "adapter.npz", "adapter.json", "weights.npz", "backbone"})
#: ... when one of these is among them: config.json and model.onnx alone are any ONNX export's
_LEGACY_SIGNS = frozenset({"head.npz", "labels.json", "detector.json", "adapter.npz", "adapter.json", "weights.npz"})
_UMASK: int | None = None
#: what the name of every temporary written beside a target ends with
TMP_SUFFIX = ".pltmp"
#: a temporary younger than this (seconds) is never swept: its writer may not have locked it yet
SWEEP_MIN_AGE = 60.0
#: a process sweeps a folder again only after this many seconds (see :func:`temporary_beside`)
SWEEP_EVERY = 600.0
_SWEPT: dict[str, float] = {}  # folder -> when this process last swept it (time.monotonic)

log = logging.getLogger(__name__)


class Locked(ProductLensError):
    """Another process held a lock longer than this one would wait (:func:`file_lock`)."""


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
    the files productlens writes, one of them its own kind: a user's ``config.json`` and
    ``model.onnx`` are not enough). Call it before long work that ends in such a write."""
    target = Path(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise ProductLensError(f"{target} exists and is not a folder; choose another output folder")
    names = {p.name for p in target.iterdir()}
    if not names or MARKER in names or (names <= _LEGACY_FILES and names & _LEGACY_SIGNS):
        return
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    raise ProductLensError(f"{target} already holds files productlens did not write ({shown}); it would be "
                           "replaced whole: choose another output folder, or empty or remove this one")


def check_output_file(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Raise ProductLensError unless a file (or, with ``folder``, a folder) can be written at ``path``:
    it is not a folder (not a file), and its nearest existing parent is a folder this process may
    write in. Call it before long work whose result goes there; returns ``path`` as a Path."""
    path = Path(path)
    if not folder and path.is_dir():
        raise ProductLensError(f"{path} is a folder; give the name of a file to write")
    if folder and path.exists() and not path.is_dir():
        raise ProductLensError(f"{path} is a file; give the name of a folder to write into")
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ProductLensError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ProductLensError(f"cannot write {path}: no permission to write in {parent}")
    return path


def folder_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """The identity of the file or folder at ``path`` (device, inode), or None where there is none: a folder
    swapped in by a rebuild has another."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def file_key(path: str | os.PathLike) -> tuple | None:
    """A file's identity and version (device, inode, size, modification and change times), None if absent:
    a freed inode is handed out again at once, so :func:`folder_key` alone can take a new file for the old."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def check_outputs_apart(outputs: Mapping[str, str | os.PathLike | None], *, reads: Iterable = (),
                        folders: Iterable = ()) -> None:
    """Refuse, before any work, output files that would destroy what the command reads or another of its
    outputs: one that is a file ``reads`` names (its input csv), lies inside one of ``folders`` (the model
    folder it loads), or is another output's path. ``outputs``: option name -> path (None: not asked for).
    Raises ProductLensError naming the option and the path."""
    def real(p: str | os.PathLike) -> Path:
        return Path(os.path.realpath(p))

    taken: dict[Path, str] = {}
    for opt, path in outputs.items():
        if path is None:
            continue
        where = real(path)
        if where in taken:
            raise ProductLensError(f"{taken[where]} and {opt} both name {path}: one would replace the other; "
                                   "give them different files")
        taken[where] = opt
        if any(r is not None and real(r) == where for r in reads):
            raise ProductLensError(f"{opt} {path} is this command's input: writing there would replace it; "
                                   "name another file")
        inside = next((d for d in folders if d is not None and where.is_relative_to(real(d))), None)
        if inside is not None:
            raise ProductLensError(f"{opt} {path} is inside {inside}, which this command reads: name a file "
                                   "outside it")


def _lock(path: str | os.PathLike, wait: bool = True) -> int | None:
    """An open descriptor of ``path`` (a file or a folder) holding its ``flock``; None when another
    holds it and ``wait`` is False. Closing the descriptor (or the process ending) releases it.
    Where there is no ``flock`` (Windows) every lock looks held, so nothing is ever swept."""
    if fcntl is None:  # pragma: no cover
        return os.open(path, os.O_RDONLY) if wait else None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block, across
    processes; :class:`Locked` when another holder keeps it longer than ``timeout`` seconds."""
    path = Path(path)
    if not path.exists():
        path.touch(exist_ok=True)
    deadline = time.monotonic() + timeout
    try:
        while (fd := _lock(path, wait=False)) is None:
            if time.monotonic() > deadline:
                raise Locked(f"{path} stayed locked by another process for {timeout:g} s; try again later")
            time.sleep(0.05)
    except OSError as e:  # a file system without flock (some network mounts): go on unlocked
        log.warning("cannot lock %s (%s): writers of other processes are not kept apart", path, e)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` that no living writer holds (left by a kill).

    Only names ending ``.pltmp`` older than ``SWEEP_MIN_AGE`` are looked at; one that
    cannot be removed is left for a later sweep. Returns what was removed."""
    import shutil

    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if not e.name.endswith(TMP_SUFFIX):
            continue
        try:
            if e.is_symlink() or now - e.stat(follow_symlinks=False).st_mtime < SWEEP_MIN_AGE:
                continue
            fd = _lock(e.path, wait=False)
        except OSError:
            continue
        if fd is None:  # its writer is alive
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError as err:
            log.debug("cannot remove the stale temporary %s: %s", e.path, err)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d temporary file(s) left in %s by a writer that was killed", len(removed), folder)
    return removed


def _sweep_now_and_then(folder: Path) -> None:
    """:func:`sweep_stale` ``folder``, unless this process did within ``SWEEP_EVERY`` seconds."""
    key, now = os.path.abspath(folder), time.monotonic()
    if now - _SWEPT.get(key, -SWEEP_EVERY) < SWEEP_EVERY:
        return
    _SWEPT[key] = now
    sweep_stale(folder)


@contextlib.contextmanager
def temporary_beside(target: str | os.PathLike, *, folder: bool = False, tag: str = "") -> Iterator[Path]:
    """Create a temporary file (or ``folder``) named ``<target>.<tag><random>.pltmp`` beside ``target``
    and hold its lock until the block ends; the folder's stale temporaries are swept first (now and then).
    It gets an ordinary file's or folder's permissions. Removing it is the caller's business."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_now_and_then(target.parent)
    prefix = f"{target.name}.{tag}"
    if folder:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=TMP_SUFFIX, dir=target.parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TMP_SUFFIX, dir=target.parent)
        os.close(fd)
    share(tmp)
    try:
        lock = _lock(tmp)
    except OSError as e:  # a file system without flock: unlocked, and sweeps there never lock anything either
        log.debug("cannot lock %s: %s", tmp, e)
        lock = None
    try:
        yield Path(tmp)
    finally:
        if lock is not None:
            os.close(lock)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsync'ed and
    renamed onto ``target``, on failure removed. Readers never see a partial file."""
    target = check_output_file(target)
    with temporary_beside(target) as tmp, _removed(tmp):
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        share(tmp)
        os.replace(tmp, target)


@contextlib.contextmanager
def _removed(path: Path) -> Iterator[None]:
    """Remove the file ``path`` when the block ends, if it is still there."""
    try:
        yield
    finally:
        if os.path.lexists(path):
            os.unlink(path)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success its files are fsync'ed and it
    replaces ``target`` (an existing folder stays whole until the new one is in place), on
    failure it is removed. Readers see the old folder or the new one, never a partial one.
    ``target`` must pass :func:`check_replaceable` (checked before anything is written)."""
    import shutil

    target = Path(os.path.abspath(target))  # '.' and '..' have no name to put beside
    check_replaceable(target)
    with temporary_beside(target, folder=True) as tmp:
        try:
            yield tmp
            _finish_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _finish_dir(tmp: Path, target: Path) -> None:
    """Mark ``tmp`` as productlens's, fsync its files and put it at ``target``."""
    (tmp / MARKER).write_text("written by productlens: this folder is replaced whole when written again\n")
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    replace_dir(tmp, target)


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
    if not target.is_dir():  # a folder replaces a folder, never a user's file
        raise ProductLensError(f"{target} exists and is not a folder: it is not replaced")
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # it now holds the old folder
        return
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def place_new_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the folder ``new`` to ``target``, which must not exist: ProductLensError if it does
    (another process wrote it since it was checked). Linux's ``renameat2`` with ``RENAME_NOREPLACE``
    checks and renames in one step; elsewhere a rename onto a folder with files in it fails too."""
    import errno

    new, target = Path(new), Path(target)
    taken = ProductLensError(f"{target} exists (written while this one was built); replace it with --overwrite "
                             "(overwrite=True), or write elsewhere")
    done = _renameat2(new, target, 1)  # RENAME_NOREPLACE
    if done:
        return
    if done is False and _ctypes_errno() == errno.EEXIST:
        raise taken
    # no renameat2, or a file system (EINVAL) or sandbox (EPERM) that refuses it: a plain rename, which fails
    # onto a folder with files in it; any other fault it meets it reports itself
    if os.path.lexists(target) and not (target.is_dir() and not any(target.iterdir())):
        raise taken
    try:
        os.rename(new, target)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise taken from None
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    return bool(_renameat2(a, b, 2))


def _renameat2(a: Path, b: Path, flags: int) -> bool | None:
    """Linux ``renameat2(a, b, flags)``: True when done, False when it failed (:func:`_ctypes_errno` says
    why), None where the C library has no such call."""
    import ctypes

    if not sys.platform.startswith("linux"):  # elsewhere CDLL(None) is no C library (a TypeError on Windows)
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags) == 0


def _ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno()


def file_hash(path: str | os.PathLike, algorithm: str = "sha1", chunk: int = 1 << 20) -> str:
    """The hex digest of a file's bytes (read in chunks)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_npz(path: str | os.PathLike) -> dict:
    """Every array of an ``.npz`` file, read now. A damaged file (cut short, not a zip, a bad member)
    raises ValueError naming it, which the loaders' ``except (OSError, ValueError)`` already report:
    numpy lets zipfile's own errors through."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{path}: damaged ({type(exc).__name__}: {exc})") from None

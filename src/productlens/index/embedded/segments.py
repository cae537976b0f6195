"""Files of a store directory: immutable vector segments, temporary files, orphan clean-up.

A segment ``seg-<n>.npy`` is a plain (rows, dim) little-endian ``.npy`` file of
the store's vector dtype (float32, or float16 for a compact store). It is
written once under a temporary name, fsynced and renamed into place (then the
directory is fsynced), and only ever read through a memory map afterwards.
Which segments are live is recorded in SQLite, not here: see the package
docstring for how the two are kept consistent.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ...types import ProductLensError

SEG_RE = re.compile(r"^seg-(\d+)\.npy$")
ANN_RE = re.compile(r"^ann-(\d+)\.faiss$")
TMP_RE = re.compile(r"^\.tmp-(\d+)-")

BLOCK_ROWS = 65536  # rows of a segment read (scored, copied, indexed) at once


class SegmentMissing(Exception):
    """A file of the snapshot vanished (a concurrent compaction): read again."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


@dataclass
class Segment:
    no: int
    vecs: np.ndarray  # memory-mapped (rows, dim) float32 or float16: read through f32()
    row_ids: np.ndarray  # (rows,) int64: id of each row, -1 when dead


def f32(x: np.ndarray) -> np.ndarray:
    """Rows of a segment as float32 (no copy when they already are)."""
    return np.asarray(x, dtype=np.float32)


#: How segment maps are read: ``auto`` (random once the live segments are larger than
#: half the memory, see :func:`memory_bytes`), ``random`` or ``normal`` (the kernel's read-ahead); from
#: ``$PRODUCTLENS_SEGMENT_ACCESS``. See :func:`random_access`.
ACCESS_ENV = "PRODUCTLENS_SEGMENT_ACCESS"


def random_access(total_bytes: int) -> bool:
    """Whether segment maps totalling ``total_bytes`` should be read at random (``MADV_RANDOM``).

    The kernel's read-ahead turns each scattered row read (re-scoring, gathers) into up
    to ``read_ahead_kb`` of disk reads (8 MB on this project's machine). While the
    segments fit in the page cache that only warms it faster; once they outgrow it,
    every query reads hundreds of MB and evicts what the next one needs (a 10M-vector
    store read 1,841 MB to gather 2,000 rows; 11 MB with ``MADV_RANDOM``). So ``auto``
    asks for random access once the segments exceed half of :func:`memory_bytes`.
    """
    mode = os.environ.get(ACCESS_ENV, "auto").strip().lower()
    if mode not in ("auto", "random", "normal"):
        raise ProductLensError(f"${ACCESS_ENV} must be auto, random or normal, not {mode!r}")
    if mode != "auto":
        return mode == "random"
    memory = memory_bytes()
    return memory is not None and total_bytes > memory // 2


@functools.lru_cache(maxsize=1)
def memory_bytes() -> int | None:
    """The memory this process may use: physical memory, or its cgroup's limit if smaller
    (a container's page cache is capped by the limit). None where it cannot be read.
    Read once per process: snapshots ask on every refresh."""
    try:
        sizes = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None
    with contextlib.suppress(OSError):
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":  # cgroup v2
                    limit = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"
                elif "memory" in controllers.split(","):  # cgroup v1
                    limit = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
                else:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    sizes.append(int(limit.read_text().strip()))  # "max" (no limit) is skipped
    return min(sizes)


def advise(arr: np.ndarray, random: bool) -> None:
    """``MADV_RANDOM`` (no read-ahead) or ``MADV_NORMAL`` on a segment's map; sequential scans of maps
    advised random (and an index build's adding of vectors, and compaction, always) read their blocks with
    :func:`read_rows`; the exact scans that tune an index's nprobe follow
    :func:`~productlens.index.embedded.search.exact_segments`' rule.
    A no-op without ``madvise``."""
    mm = getattr(arr, "_mmap", None)
    flag = getattr(mmap, "MADV_RANDOM" if random else "MADV_NORMAL", None)
    if mm is not None and flag is not None and hasattr(mm, "madvise"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(flag)


def read_rows(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a memory-mapped segment, for sequential scans (index build, compaction, and
    exact search of maps advised random): read from the file with one ``read`` rather than through
    the map. Faulting a map in costs a page fault per 4 KB once it is advised random
    (:func:`advise`; no fault-around then); one read of a block gets the file's own read-ahead. Measured
    on this machine: 256 MB of float16 rows in 0.08 s by ``read``, 2.1 s through a random map. A normal
    map (segments that fit in memory) is faster to scan in place, since it stays faulted in between
    queries (:func:`~productlens.index.embedded.search.exact_segments`). The segment files never change
    once written, so both give the same rows; if the file is gone (a concurrent compaction) the map is
    read instead.
    """
    stop = min(stop, arr.shape[0])
    name = getattr(arr, "filename", None)
    if not isinstance(arr, np.memmap) or name is None or stop <= start or not arr.flags.c_contiguous:
        return arr[start:stop]
    out = np.empty((stop - start, *arr.shape[1:]), dtype=arr.dtype)
    buf = memoryview(out).cast("B")
    try:
        with open(name, "rb", buffering=0) as f:
            f.seek(int(arr.offset) + start * arr.strides[0])
            done = 0
            while done < len(buf):
                n = f.readinto(buf[done:])
                if not n:
                    break
                done += n
    except OSError:
        return arr[start:stop]
    return out if done == len(buf) else arr[start:stop]


def seg_path(directory: Path, no: int) -> Path:
    return directory / f"seg-{no}.npy"


def tmp_path(directory: Path, token: str, name: str) -> Path:
    """A fresh temporary name for ``name`` in ``directory``, tagged with this process's pid."""
    return directory / f".tmp-{os.getpid()}-{token}{secrets.token_hex(2)}-{name}"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_npy(
    final: Path, tmp: Path, chunks: Iterator[np.ndarray], rows: int, dim: int, dtype: str = "float32"
) -> None:
    """Write a (rows, dim) .npy of ``dtype`` atomically: ``tmp``, fsync, rename to ``final``, fsync dir."""
    le = np.dtype(dtype).newbyteorder("<")
    try:
        with open(tmp, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(le), "fortran_order": False,
                      "shape": (int(rows), int(dim))}
            np.lib.format.write_array_header_1_0(f, header)
            written = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=le)
                f.write(memoryview(chunk).cast("B"))
                written += chunk.shape[0]
            if written != rows:
                raise AssertionError(f"wrote {written} rows, expected {rows}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def open_segment(directory: Path, no: int, rows: int, dim: int, dtype: str = "float32") -> np.ndarray:
    """Memory-map segment ``no``; SegmentMissing if it is gone, ProductLensError if it is bad."""
    path = seg_path(directory, no)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise SegmentMissing(path) from None
    except (ValueError, OSError) as e:
        raise ProductLensError(f"store at {directory}: segment {no} is unreadable: {e}") from e
    if arr.dtype != np.dtype(dtype) or arr.shape != (rows, dim):
        raise ProductLensError(
            f"store at {directory}: segment {no} has {arr.dtype} {arr.shape}, expected {dtype} ({rows}, {dim})"
        )
    return arr


def delete_segments(directory: Path, nos: Iterable[int]) -> None:
    for no in nos:
        with contextlib.suppress(OSError):
            seg_path(directory, no).unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(directory: Path, live_segs: set[int], vgen: int) -> None:
    """Delete files no committed state references (call with the write lock held).

    That is: segments not in ``live_segs``, temporary files of processes that
    are gone, and every approximate index except the newest (which goes too
    when it is newer than the committed vector generation ``vgen``).
    """
    anns = []
    for entry in os.scandir(directory):
        name = entry.name
        if m := SEG_RE.match(name):
            if int(m.group(1)) not in live_segs:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        elif m := TMP_RE.match(name):
            if not _pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        elif m := ANN_RE.match(name):
            anns.append((int(m.group(1)), entry.path))
    anns.sort()
    for _, p in anns[:-1] + [a for a in anns[-1:] if a[0] > vgen]:
        with contextlib.suppress(OSError):
            os.unlink(p)

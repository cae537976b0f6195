"""Dataset download into a local cache, with checksum and safe archive extraction.

Files land in ``productlens.config.cache_dir() / "downloads" / <url hash> / <name>``
through a temporary file and an atomic rename, so the cache never holds a
half-written file; a second call returns the cached path without any network.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from productlens.config import cache_dir
from productlens.fileio import atomic_path, file_hash, temporary_beside
from productlens.progress import bar_disable
from productlens.types import ProductLensError

TIMEOUT = 60.0  # seconds without data before a download fails
PROGRESS_MIN_BYTES = 8 * 1024 * 1024  # show a progress bar from this size on
_CHUNK = 1024 * 1024
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")
#: the openers of compressed tars, by the first bytes of the file
_DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}
#: what a damaged archive raises while it is read (no file is written then, so OSError is damage too)
_DAMAGE = (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)
#: what tarfile's extraction filter raises for a member it refuses
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())


def fetch(
    url: str,
    *,
    sha256: str | None = None,
    cache: Path | None = None,
    extract: bool = False,
) -> Path:
    """Download ``url`` (``http(s)://`` or ``file://``) once and return its cached path.

    ``sha256`` is checked on download (a mismatch raises and caches nothing) and
    against the recorded hash of a cached file. ``cache`` overrides the downloads
    folder. With ``extract=True`` a zip or tar(.gz/.bz2/.xz) is unpacked into a
    sibling folder, which is returned; members with absolute paths or ``..`` are
    refused. The archive is checked whole first (its compression's checksum, each
    zip member's CRC): a damaged one raises ProductLensError naming it, extracts
    nothing and is removed from the cache, so that the next call downloads it anew.
    """
    expected = sha256.strip().lower() if sha256 else None
    folder = Path(cache) if cache is not None else cache_dir() / "downloads"
    target = folder / hashlib.sha256(url.encode()).hexdigest()[:16] / _file_name(url)
    if not (target.is_file() and _cached_hash_ok(target, expected)):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(url, target, expected)
        except BaseException:
            with contextlib.suppress(OSError):  # a failed first fetch leaves no empty folder behind
                target.parent.rmdir()
            raise
    return _extract(target) if extract else target


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    return file_hash(path, "sha256", _CHUNK)


def _file_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return name if name not in ("", ".", "..") else "download"


def _hash_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _cached_hash_ok(target: Path, expected: str | None) -> bool:
    """True when a cached file may be used (always, unless its hash differs). The hash recorded at download
    is trusted only while the file keeps the size and modification time recorded with it; a file changed
    since is hashed again."""
    if expected is None:
        return True
    record = _hash_file(target)
    fields = record.read_text().split() if record.is_file() else []
    st = target.stat()
    if len(fields) == 3 and fields[1:] == [str(st.st_size), str(st.st_mtime_ns)]:
        return fields[0] == expected
    actual = sha256_of(target)
    _record_hash(target, actual)  # an older record, or a copied file: hashed once, not on every fetch
    return actual == expected


def _record_hash(target: Path, digest: str) -> None:
    st = target.stat()
    _write_atomic(_hash_file(target), f"{digest} {st.st_size} {st.st_mtime_ns}\n")


def _download(url: str, target: Path, expected: str | None) -> None:
    """Stream ``url`` to a temp file next to ``target``, verify, then rename into place."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ProductLensError(f"{url}: only http(s):// and file:// URLs can be fetched")
    with temporary_beside(target) as tmp:  # a kill leaves it behind, and the next download sweeps it
        _stream(url, tmp, target, expected)


def _stream(url: str, tmp: Path, target: Path, expected: str | None) -> None:
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=target.name, disable=bar_disable(total is not None and total >= PROGRESS_MIN_BYTES),
            ) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise ProductLensError(
                f"{url}: sha256 mismatch: expected {expected}, got {actual}; nothing cached"
            )
        os.replace(tmp, target)
        _record_hash(target, actual)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise ProductLensError(f"{url}: download failed ({exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _extract(archive: Path) -> Path:
    """Unpack ``archive`` into a sibling folder (once, atomically) and return it."""
    name = archive.name
    stem = next((name[: -len(s)] for s in _ARCHIVE_SUFFIXES if name.lower().endswith(s)), "")
    dest = archive.with_name((stem or name) + ("" if stem else ".d"))
    if dest.is_dir():
        return dest
    with temporary_beside(dest, folder=True) as tmp:
        _extract_into(archive, tmp, dest)
    return dest


def _extract_into(archive: Path, tmp: Path, dest: Path) -> None:
    try:
        _unpack(archive, tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # another process may have finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unpack(archive: Path, tmp: Path) -> None:
    """Check ``archive`` whole (checksums, member paths), then unpack it into ``tmp``.

    A damaged archive raises ProductLensError naming it and is removed from the cache,
    so that the next fetch downloads it anew."""
    try:
        _check_archive(archive)
    except _DAMAGE as exc:
        raise _damaged(archive, exc) from exc
    try:
        _extract_checked(archive, tmp)
    except _FILTER_ERRORS as exc:
        raise ProductLensError(f"{archive}: refusing member: {exc}") from exc
    except (EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise _damaged(archive, exc) from exc
    except OSError as exc:
        raise ProductLensError(f"{archive}: cannot extract into {tmp.parent} ({exc})") from exc


def _check_archive(archive: Path) -> None:
    """Raise one of ``_DAMAGE`` when ``archive`` fails its checksums or cannot be listed, and
    ProductLensError for a member that would land outside the folder or for no archive at all.

    A compressed tar is read to its end through its decompressor (the gzip, bz2 and xz
    checksums are only checked there); a zip's members are all read (``testzip``)."""
    opener = _DECOMPRESSORS.get(_magic(archive))
    if opener is not None:
        with opener(archive, "rb") as stream:
            while stream.read(_CHUNK):
                pass
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                _check_member(member, archive)
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"bad CRC-32 for {bad!r}")
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                _check_member(member.name, archive)
                if member.issym() or member.islnk():
                    _check_member(member.linkname, archive, link=True)
    else:
        suffix = next((s for s in _ARCHIVE_SUFFIXES if archive.name.lower().endswith(s)), None)
        if suffix is None:
            raise ProductLensError(f"{archive}: not a zip or tar archive, cannot extract")
        raise tarfile.ReadError(f"not readable as a {suffix} archive")


def _extract_checked(archive: Path, tmp: Path) -> None:
    """Unpack ``archive``, already checked by :func:`_check_archive`, into ``tmp``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        return
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(tmp, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tf.extractall(tmp)


def _magic(path: Path) -> bytes:
    """The first bytes of ``path`` that tell its compression, as keys of ``_DECOMPRESSORS``."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((m for m in _DECOMPRESSORS if head.startswith(m)), b"")


def _damaged(archive: Path, exc: BaseException) -> ProductLensError:
    """The error for a damaged ``archive``, which is removed from the cache (with its hash record)."""
    archive.unlink(missing_ok=True)
    _hash_file(archive).unlink(missing_ok=True)
    why = str(exc) or type(exc).__name__
    return ProductLensError(f"{archive}: the archive is damaged ({why}); it was removed from the cache, "
                            "fetch it again to download it anew")


def _check_member(name: str, archive: Path, *, link: bool = False) -> None:
    """Refuse absolute paths and ``..`` components (path traversal)."""
    norm = name.replace("\\", "/")
    what = "link target" if link else "member"
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise ProductLensError(f"{archive}: refusing {what} with an absolute path: {name!r}")
    if ".." in norm.split("/"):
        raise ProductLensError(f"{archive}: refusing {what} with '..' in its path: {name!r}")

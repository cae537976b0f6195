"""Tests for productlens.data.download (offline, through file:// URLs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from productlens.data.download import fetch
from productlens.types import ProductLensError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("PRODUCTLENS_CACHE", str(folder))
    return folder


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    return folder


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _targz(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".pltmp")]


def test_fetch_caches_and_works_offline(cache: Path, src: Path) -> None:
    source = src / "data.bin"
    source.write_bytes(b"hello" * 100)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    path = fetch(source.as_uri(), sha256=digest)
    assert path.read_bytes() == source.read_bytes()
    assert path.name == "data.bin" and (cache / "downloads") in path.parents
    source.unlink()  # a second call must not need the source
    assert fetch(source.as_uri(), sha256=digest) == path
    assert fetch(source.as_uri()) == path
    assert not _leftovers(cache)


def test_sha256_mismatch_caches_nothing(cache: Path, src: Path) -> None:
    source = src / "data.bin"
    source.write_bytes(b"payload")
    with pytest.raises(ProductLensError, match="sha256 mismatch"):
        fetch(source.as_uri(), sha256="0" * 64)
    assert [p for p in (cache / "downloads").rglob("*") if p.is_file()] == []
    assert list((cache / "downloads").iterdir()) == []  # nor an empty folder per failed fetch
    good = hashlib.sha256(b"payload").hexdigest()
    path = fetch(source.as_uri(), sha256=good)
    assert path.read_bytes() == b"payload"
    path.write_bytes(b"tampered")  # changed in the cache since: its recorded hash no longer stands for it
    assert fetch(source.as_uri(), sha256=good).read_bytes() == b"payload"  # fetched again
    record = path.with_name(path.name + ".sha256")
    record.write_text(good + "\n")  # an older version's record (the hash alone): hashed once, then recorded
    assert fetch(source.as_uri(), sha256=good) == path and record.read_text().split()[0] == good
    assert len(record.read_text().split()) == 3


def test_cached_file_with_other_hash_is_downloaded_again(tmp_path: Path, src: Path, monkeypatch) -> None:
    from productlens import fileio

    monkeypatch.setattr(fileio, "SWEEP_EVERY", 0.0)  # the folder was swept by the first download
    source = src / "v.txt"
    source.write_bytes(b"v1")
    first = fetch(source.as_uri(), cache=tmp_path / "c")
    source.write_bytes(b"v2")
    assert fetch(source.as_uri(), cache=tmp_path / "c").read_bytes() == b"v1"  # cache hit
    killed = first.with_name(first.name + ".k1ll3d.pltmp")  # the partial a killed download leaves
    killed.write_bytes(b"v")
    os.utime(killed, (0, 0))
    again = fetch(source.as_uri(), cache=tmp_path / "c", sha256=hashlib.sha256(b"v2").hexdigest())
    assert again == first and again.read_bytes() == b"v2"
    assert not killed.exists()  # the next download beside it swept it


def test_missing_source(cache: Path, src: Path) -> None:
    with pytest.raises(ProductLensError, match="download failed"):
        fetch((src / "nope.zip").as_uri())
    assert list((cache / "downloads").iterdir()) == []
    with pytest.raises(ProductLensError, match="only http"):
        fetch("ftp://example.com/x.zip")


@pytest.mark.parametrize("maker,name", [(_zip, "set.zip"), (_targz, "set.tar.gz")])
def test_extract_archives(cache: Path, src: Path, maker, name: str) -> None:
    archive = maker(src / name, {"set/a.txt": b"A", "set/sub/b.txt": b"B"})
    out = fetch(archive.as_uri(), extract=True)
    assert out.is_dir() and out.name == "set"
    assert (out / "set" / "a.txt").read_bytes() == b"A"
    assert (out / "set" / "sub" / "b.txt").read_bytes() == b"B"
    archive.unlink()
    assert fetch(archive.as_uri(), extract=True) == out
    assert not _leftovers(cache)


@pytest.mark.parametrize("maker,name", [(_zip, "evil.zip"), (_targz, "evil.tar.gz")])
@pytest.mark.parametrize("member", ["../escape.txt", "ok/../../escape.txt", "/etc/escape.txt"])
def test_extract_refuses_path_traversal(cache: Path, src: Path, maker, name: str, member: str) -> None:
    archive = maker(src / name, {"fine.txt": b"x", member: b"bad"})
    with pytest.raises(ProductLensError, match="refusing member"):
        fetch(archive.as_uri(), extract=True)
    downloads = cache / "downloads"
    assert not [p for p in downloads.rglob("*") if p.is_dir() and p.name.startswith("evil")]
    assert not (cache / "escape.txt").exists() and not (downloads / "escape.txt").exists()


def test_extract_refuses_escaping_symlink(cache: Path, src: Path) -> None:
    archive = src / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("evil")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../outside"
        tf.addfile(info)
    with pytest.raises(ProductLensError, match="link target"):
        fetch(archive.as_uri(), extract=True)


def test_extract_non_archive(cache: Path, src: Path) -> None:
    plain = src / "plain.txt"
    plain.write_text("not an archive")
    with pytest.raises(ProductLensError, match="not a zip or tar"):
        fetch(plain.as_uri(), extract=True)


def _payload() -> dict[str, bytes]:
    """Members big enough that damage in the middle lands in compressed data (fixed bytes: reproducible)."""
    rng = random.Random(0)
    return {"set/a.bin": rng.randbytes(40_000), "set/b.txt": b"B" * 60_000}


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    return _targz(path, members, mode="w")


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _flip(path: Path, offset: int | None = None) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _assert_damaged(cache: Path, archive: Path) -> None:
    """Fetching ``archive`` fails cleanly, naming it, and leaves no folder, temporary or cached copy."""
    with pytest.raises(ProductLensError, match="damaged") as info:
        fetch(archive.as_uri(), extract=True)
    assert archive.name in str(info.value)
    downloads = cache / "downloads"
    assert not [p for p in downloads.rglob("*") if p.is_dir() and p.name.startswith("set")]
    assert not _leftovers(cache)
    assert not [p for p in downloads.rglob("*") if p.is_file()]  # a retry downloads it anew


@pytest.mark.parametrize("maker,name", [(_targz, "set.tar.gz"), (_tar, "set.tar"), (_zip, "set.zip")])
def test_extract_truncated_archive_is_damaged(cache: Path, src: Path, maker, name: str) -> None:
    _assert_damaged(cache, _truncate(maker(src / name, _payload())))


def test_extract_zip_with_bad_crc_is_damaged(cache: Path, src: Path) -> None:
    members = _payload()
    archive = _zip(src / "set.zip", members)
    _assert_damaged(cache, _flip(archive, archive.read_bytes().index(members["set/a.bin"]) + 1000))


@pytest.mark.parametrize("mode,name", [("w:gz", "set.tgz"), ("w:gz", "set.tar.gz"), ("w:bz2", "set.tar.bz2"),
                                       ("w:xz", "set.tar.xz")])
def test_extract_corrupted_compressed_tar_is_damaged(cache: Path, src: Path, mode: str, name: str) -> None:
    _assert_damaged(cache, _flip(_targz(src / name, _payload(), mode=mode)))


def test_extract_gzip_that_is_no_tar_is_not_called_damaged(cache: Path, src: Path) -> None:
    plain = src / "table.csv.gz"
    plain.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    with pytest.raises(ProductLensError, match="not a zip or tar"):
        fetch(plain.as_uri(), extract=True)


def test_cli_reports_a_damaged_archive_in_one_line(cache: Path, src: Path) -> None:
    from typer.testing import CliRunner

    from productlens.cli.main import app

    archive = _truncate(_targz(src / "set.tar.gz", _payload()))
    res = CliRunner().invoke(app, ["data", "fetch", archive.as_uri(), "--extract"])
    assert res.exit_code == 1 and "Aborted" not in res.output
    assert "error: " in res.output and "set.tar.gz: the archive is damaged" in res.output

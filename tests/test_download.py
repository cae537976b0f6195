"""Tests for productlens.data.download (offline, through file:// URLs)."""

from __future__ import annotations

import hashlib
import io
import os
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


def _targz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
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
    good = hashlib.sha256(b"payload").hexdigest()
    assert fetch(source.as_uri(), sha256=good).read_bytes() == b"payload"


def test_cached_file_with_other_hash_is_downloaded_again(tmp_path: Path, src: Path) -> None:
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

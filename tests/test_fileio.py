"""Atomic writes: permissions, folders that may be replaced, and the one-step folder swap."""

from __future__ import annotations

import os
import stat

import pytest

from productlens.fileio import MARKER, atomic_dir, atomic_path, check_replaceable, replace_dir
from productlens.types import ProductLensError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.csv") == 0o644  # tempfile alone would leave 0o600
    assert _mode(tmp_path / "model") == 0o755 and (tmp_path / "model" / MARKER).is_file()


def test_a_users_folder_is_refused_not_wiped(tmp_path) -> None:
    user = tmp_path / "photos"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(ProductLensError, match="notes.txt"):
        check_replaceable(user)
    with pytest.raises(ProductLensError, match="did not write"):
        with atomic_dir(user) as tmp:
            (tmp / "config.json").write_text("{}")
    assert (user / "notes.txt").read_text() == "precious" and not (user / "config.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProductLensError, match="not a folder"):
        check_replaceable(tmp_path / "file")


def test_folders_productlens_wrote_are_replaced_whole(tmp_path) -> None:
    target = tmp_path / "model"
    for content in ("one", "two"):
        with atomic_dir(target) as tmp:
            (tmp / "head.npz").write_text(content)
    assert (target / "head.npz").read_text() == "two"
    legacy = tmp_path / "legacy"  # written before the marker existed: only productlens's own file names
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    (legacy / "metrics.json").write_text("{}")
    check_replaceable(legacy)
    check_replaceable(tmp_path / "empty-or-missing")
    assert sorted(os.listdir(tmp_path)) == ["legacy", "model"]  # no temporary or .old folders left


def test_replace_dir_swaps_in_one_step(tmp_path) -> None:
    new, target = tmp_path / "new", tmp_path / "target"
    new.mkdir()
    (new / "v").write_text("new")
    replace_dir(new, target)  # nothing there yet
    assert (target / "v").read_text() == "new" and not new.exists()
    new.mkdir()
    (new / "v").write_text("newer")
    replace_dir(new, target)
    assert (target / "v").read_text() == "newer" and sorted(os.listdir(tmp_path)) == ["target"]


def test_atomic_dir_accepts_dot(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    monkeypatch.chdir(folder)
    with atomic_dir(".") as tmp:
        (tmp / "config.json").write_text("{}")
    assert (folder / "config.json").is_file()

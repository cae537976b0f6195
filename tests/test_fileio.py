"""Atomic writes: permissions, folders that may be replaced, and the one-step folder swap."""

from __future__ import annotations

import os
import shutil
import stat
import time

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
    with pytest.raises(ProductLensError, match="did not write"):  # as any export's files may be named
        check_replaceable(legacy)
    (legacy / "labels.json").write_text("[]")  # a classifier folder from before the marker
    check_replaceable(legacy)
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(ProductLensError, match="did not write"):  # a user's ONNX export is not wiped
        check_replaceable(export)
    check_replaceable(tmp_path / "empty-or-missing")
    assert sorted(os.listdir(tmp_path)) == ["export", "legacy", "model"]  # no temporary or .old folders left


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


_HOLD = """
import sys, time
from productlens.fileio import atomic_dir, atomic_path
target = sys.argv[1]
if sys.argv[2] == "dir":
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        print(tmp, flush=True)
        time.sleep(60)
else:
    with atomic_path(target) as tmp:
        tmp.write_text("partial")
        print(tmp, flush=True)
        time.sleep(60)
"""


def _killed_mid_write(target, kind: str):
    """Start a writer that stops inside its atomic block; return (process, its temporary)."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(target), kind], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists() and tmp.name.startswith(target.name + ".") and tmp.name.endswith(".pltmp")
    return proc, tmp


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_killed_writers_temporary_is_swept_and_a_live_ones_kept(tmp_path, monkeypatch, kind) -> None:
    import signal

    from productlens import fileio

    monkeypatch.setattr(fileio, "SWEEP_MIN_AGE", 0.0)
    target = tmp_path / ("model" if kind == "dir" else "a.csv")
    proc, tmp = _killed_mid_write(target, kind)
    try:
        assert fileio.sweep_stale(tmp_path) == [] and tmp.exists()  # its writer is alive: kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert tmp.exists() and not target.exists()  # what a kill -9 leaves
    other = tmp_path / f"{target.name}.pltmp.txt"  # not a temporary's name: never swept
    other.write_text("x")
    os.utime(other, (0, 0))
    if kind == "dir":
        with atomic_dir(target) as new:
            (new / "config.json").write_text("{}")
    else:
        with atomic_path(target) as new:
            new.write_text("whole")
    assert not tmp.exists() and target.exists()  # the next write beside the target swept it
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, other.name])


def test_young_temporaries_are_not_swept(tmp_path) -> None:
    from productlens import fileio

    young = tmp_path / "m.abc.pltmp"
    young.mkdir()  # unlocked, but its writer may be about to lock it
    assert fileio.sweep_stale(tmp_path) == [] and young.exists()
    old = time.time() - 2 * fileio.SWEEP_MIN_AGE
    os.utime(young, (old, old))
    assert fileio.sweep_stale(tmp_path) == [young] and not young.exists()


def test_file_lock_excludes_other_holders_and_times_out(tmp_path) -> None:
    from productlens.fileio import Locked, file_lock

    lock = tmp_path / "w.lock"
    with file_lock(lock):
        t0 = time.monotonic()
        with pytest.raises(Locked, match="stayed locked"):
            with file_lock(lock, timeout=0.2):  # a second open file: excluded even in one process
                pass
        assert time.monotonic() - t0 >= 0.2
    with file_lock(lock, timeout=0.2):  # released
        pass


def test_a_file_system_without_flock_still_gets_its_writes(tmp_path, monkeypatch) -> None:
    import errno

    from productlens import fileio
    from productlens.fileio import file_lock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fileio.fcntl, "flock", no_flock)
    monkeypatch.setattr(fileio, "SWEEP_MIN_AGE", 0.0)
    with atomic_path(tmp_path / "a.csv") as tmp:
        tmp.write_text("x")
        assert fileio.sweep_stale(tmp_path) == [] and tmp.exists()  # cannot tell: never swept
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    with file_lock(tmp_path / "w.lock"):
        pass
    assert (tmp_path / "a.csv").read_text() == "x" and (tmp_path / "model" / "config.json").is_file()


def test_a_folder_is_swept_now_and_then_not_on_every_write(tmp_path, monkeypatch) -> None:
    """Writing many files into one folder must not list it again for each of them."""
    from productlens import fileio

    monkeypatch.setattr(fileio, "SWEEP_MIN_AGE", 0.0)
    swept = []
    real = fileio.sweep_stale
    monkeypatch.setattr(fileio, "sweep_stale", lambda folder: swept.append(folder) or real(folder))
    for i in range(5):
        with atomic_path(tmp_path / f"f{i}.json") as tmp:
            tmp.write_text("{}")
    assert swept == [tmp_path]
    monkeypatch.setattr(fileio, "SWEEP_EVERY", 0.0)
    with atomic_path(tmp_path / "g.json") as tmp:
        tmp.write_text("{}")
    assert swept == [tmp_path, tmp_path]



def test_place_new_dir_never_replaces_and_falls_back_without_renameat2(tmp_path, monkeypatch) -> None:
    from productlens import fileio

    import errno

    refused = lambda a, b, flags: False  # noqa: E731 - the call is there but refuses (errno below)
    for renameat2, err in ((fileio._renameat2, None), (lambda a, b, flags: None, None),  # Linux, no such call,
                           (refused, errno.EINVAL), (refused, errno.EPERM)):  # a file system, a sandbox
        monkeypatch.setattr(fileio, "_renameat2", renameat2)
        if err is not None:
            monkeypatch.setattr(fileio, "_ctypes_errno", lambda: err)
        new, target = tmp_path / "new", tmp_path / "target"
        new.mkdir()
        (new / "a").write_text("new")
        fileio.place_new_dir(new, target)
        assert (target / "a").read_text() == "new" and not new.exists()
        new.mkdir()
        with pytest.raises(ProductLensError, match="exists \\(written while this one was built\\)"):
            fileio.place_new_dir(new, target)
        assert (target / "a").read_text() == "new" and new.is_dir()
        shutil.rmtree(target)
        new.rmdir()

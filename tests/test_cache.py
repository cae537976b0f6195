"""``productlens cache info`` / ``clear``: sizes per part, and clearing only what productlens wrote."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from productlens.cache import cache_usage, clear_cache, human
from productlens.cli.main import app
from productlens.pipeline.features_cache import FeatureCache
from productlens.types import ProductLensError
from test_classify import FakeEmbedder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache with something in every part, and a user's own files beside them."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PRODUCTLENS_CACHE", str(root))
    monkeypatch.delenv("PRODUCTLENS_FEATURE_CACHE", raising=False)
    store = FeatureCache(FakeEmbedder())
    store.put("whole", [f"{i:040x}" for i in range(4)], np.ones((4, 48), np.float32))
    store.put("flip", [f"{i:040x}" for i in range(3)], np.ones((3, 48), np.float32))
    (root / "onnx").mkdir()
    (root / "onnx" / "efficientnet-lite0-0123456789abcdef-gem3-v2.onnx").write_bytes(b"x" * 1000)
    (root / "onnx" / "my-notes.txt").write_text("mine")  # not productlens's: never removed
    (root / "text").mkdir()
    (root / "text" / "imagenet-classes-minilm-0123456789ab.npy").write_bytes(b"y" * 100)
    (root / "downloads" / "0123456789abcdef").mkdir(parents=True)
    (root / "downloads" / "0123456789abcdef" / "data.zip").write_bytes(b"z" * 50)
    (root / "detectors" / "default").mkdir(parents=True)
    (root / "detectors" / "default" / "detector.json").write_text("{}")
    return root, store


def test_info_lists_every_part_with_its_size(cache) -> None:
    root, store = cache
    r = CliRunner().invoke(app, ["cache", "info", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output.strip().splitlines()[-1])
    parts = {p["name"]: p for p in info["parts"]}
    assert list(parts) == ["features", "models", "text", "downloads", "detectors"]
    # 2 shards, 2 view files, the folder's last-used mark
    assert parts["features"]["files"] == 5 and parts["features"]["path"] == str(root / "features")
    assert parts["models"]["files"] == 1 and parts["models"]["bytes"] == 1000  # the notes are not counted
    assert parts["downloads"]["bytes"] == 50 and not parts["downloads"]["cleared_by_default"]
    (folder,) = info["features"]
    assert folder == {"folder": store.dir.name, "views": 2, "shards": 2, "last_used": folder["last_used"],
                      "bytes": sum(f.stat().st_size for f in store.dir.rglob("shard-*.npz"))}
    assert folder["last_used"][:10] == time.strftime("%Y-%m-%d")
    text = CliRunner().invoke(app, ["cache", "info"]).output
    assert "features" in text and store.dir.name in text and "cleared only when named" in text


def test_clear_removes_what_comes_back_by_itself_and_keeps_the_rest(cache) -> None:
    root, store = cache
    r = CliRunner().invoke(app, ["cache", "clear"])
    assert r.exit_code == 0, r.output
    assert "features: removed 5 files" in r.output and "models: removed 1 files" in r.output
    assert not store.dir.exists() and (root / "features").is_dir()  # emptied folders go, the root stays
    assert (root / "onnx" / "my-notes.txt").read_text() == "mine"
    assert not list((root / "onnx").glob("*.onnx")) and not list((root / "text").glob("*.npy"))
    assert (root / "downloads" / "0123456789abcdef" / "data.zip").is_file()
    assert (root / "detectors" / "default" / "detector.json").is_file()
    found, _ = FeatureCache(FakeEmbedder()).get("whole", [f"{i:040x}" for i in range(4)])
    assert not found.any()  # a fresh cache misses, and fills again
    r = CliRunner().invoke(app, ["cache", "clear", "downloads", "detectors"])
    assert r.exit_code == 0 and "downloads: removed 1 files, 50 B" in r.output
    assert not (root / "downloads" / "0123456789abcdef").exists() and not (root / "detectors" / "default").exists()
    assert all(u.files == 0 for u in cache_usage())


def test_clear_touches_nothing_else_in_a_shared_feature_folder(tmp_path, monkeypatch) -> None:
    shared = tmp_path / "mine"
    (shared / "photos").mkdir(parents=True)
    (shared / "photos" / "a.jpg").write_bytes(b"jpeg")
    (shared / "notes-0123456789ab").mkdir()  # named like a backbone's folder, but holds no view folders
    (shared / "notes-0123456789ab" / "todo.txt").write_text("keep")
    monkeypatch.setenv("PRODUCTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRODUCTLENS_FEATURE_CACHE", str(shared))
    store = FeatureCache(FakeEmbedder())
    store.put("whole", ["a" * 40], np.ones((1, 48), np.float32))
    (removed,) = clear_cache(["features"])
    assert removed.files == 3 and not store.dir.exists()  # the shard, its view.txt, the last-used mark
    assert (shared / "photos" / "a.jpg").is_file() and (shared / "notes-0123456789ab" / "todo.txt").is_file()


def test_clear_unused_days_removes_only_folders_nobody_used_since(tmp_path, monkeypatch) -> None:
    from productlens.pipeline.features_cache import USED_FILE

    monkeypatch.setenv("PRODUCTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PRODUCTLENS_FEATURE_CACHE", raising=False)
    (tmp_path / "cache" / "onnx").mkdir(parents=True)
    (tmp_path / "cache" / "onnx" / "efficientnet-lite0-0123456789abcdef-gem3-v2.onnx").write_bytes(b"x")
    old, new = FeatureCache(FakeEmbedder()), FeatureCache(FakeEmbedder())
    old.dir = old.dir.with_name("fake-tiny-000000000000")  # another model's folder
    for store in (old, new):
        store.put("whole", ["a" * 40], np.ones((1, 48), np.float32))
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old.dir / USED_FILE, (ten_days_ago, ten_days_ago))
    r = CliRunner().invoke(app, ["cache", "info"])
    assert r.output.index(new.dir.name) < r.output.index(old.dir.name)  # most recently used first
    r = CliRunner().invoke(app, ["cache", "clear", "models", "--unused-days", "7"])  # had removed every model
    assert r.exit_code == 1 and "--unused-days applies to the features only; clear models" in r.output
    r = CliRunner().invoke(app, ["cache", "clear", "--unused-days", "7"])
    assert r.exit_code == 0 and "features: removed 3 files" in r.output and "models" not in r.output, r.output
    assert not old.dir.exists() and new.dir.is_dir()
    assert FeatureCache(FakeEmbedder()).get("whole", ["a" * 40])[0].all()  # still served
    assert (tmp_path / "cache" / "onnx").is_dir() and list((tmp_path / "cache" / "onnx").iterdir())
    with pytest.raises(ProductLensError, match="unused days"):
        clear_cache(unused_days=-1)


def test_unknown_part_is_a_clear_error(cache) -> None:
    with pytest.raises(ProductLensError, match="no cache part 'everything'; the parts are features, models"):
        clear_cache(["everything"])
    r = CliRunner().invoke(app, ["cache", "clear", "everything"])
    assert r.exit_code == 1 and "no cache part 'everything'" in r.output


def test_human_sizes() -> None:
    assert [human(n) for n in (0, 1023, 1024, 5 * 1024**2 + 1, 3 * 1024**3)] == ["0 B", "1023 B", "1.0 KB", "5.0 MB",
                                                                                  "3.0 GB"]

"""Scale-out end to end: catalogs built on Ray and/or kept in Milvus or Qdrant search like the local, embedded ones.

Markers: ``ray`` (a local Ray, 2 CPUs), ``milvus`` (the session's local
Milvus server, see conftest.py) and ``qdrant`` (qdrant-client's local mode, no
server). A tiny ONNX model keeps embedding cheap.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import drop_collections, local_ray, tiny_embedder, write_dataset
from productlens.cli.main import app
from productlens.data.readers import read_catalog, read_queries
from productlens.pipeline.bulk import RayOptions, build_catalog_sharded
from productlens.pipeline.catalog import Catalog
from productlens.pipeline.catalog_build import build_catalog
from productlens.pipeline.store_spec import StoreSpec
from productlens.types import ProductLensError

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_embedder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return write_dataset(tmp_path_factory.mktemp("data"), n_products=12, per_product=2)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'productlens[ray]')")
    if ray.is_initialized():
        yield
        return
    with local_ray():
        yield


@pytest.fixture
def collection(request):
    """A fresh collection name on the session's Milvus server; dropped afterwards."""
    uri = request.getfixturevalue("milvus_uri")
    prefix = "s" + str(abs(hash(request.node.name)) % 10**8)
    yield uri, prefix + "_cat"
    drop_collections(uri, prefix)


@pytest.fixture(scope="module")
def local(tmp_path_factory, data, tiny) -> Catalog:
    """The reference: the gallery embedded in this process into the embedded store."""
    cat, errors = build_catalog(read_catalog(data["gallery"]), tmp_path_factory.mktemp("c") / "local",
                                embedder=tiny, progress=False)
    assert not errors
    yield cat
    cat.close()


def rankings(cat: Catalog, data: dict, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    queries = [q.image for q in read_queries(data["queries"])]
    return cat.search_vectors(cat.embed_queries(queries).vectors, k, rerank=False)


def assert_same_catalog(cat: Catalog, ref: Catalog, data: dict) -> None:
    ids = ref.store.ids()
    np.testing.assert_array_equal(cat.store.ids(), ids)
    assert np.abs(cat.store.vectors(ids) - ref.store.vectors(ids)).max() < 1e-5
    assert cat.store.get(ids) == ref.store.get(ids)
    (s1, i1), (s2, i2) = rankings(cat, data), rankings(ref, data)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)


def assert_ray_build_equals_local(spec: StoreSpec, out, data: dict, tiny: str, local: Catalog) -> None:
    """A Ray build into ``spec``'s store completes and equals the locally embedded catalog."""
    cat, errors = build_catalog_sharded(read_catalog(data["gallery"]), out, embedder=tiny,
                                        store=spec, ray=RayOptions(shard_size=5), progress=False)
    with cat:
        assert not errors and cat.store.get_info("load_complete") is True
        assert_same_catalog(cat, local, data)


def assert_unreachable_is_clear(backend: str, **options) -> None:
    """Opening a store on a server that does not answer fails fast with a message naming it."""
    from productlens.index import open_store

    name = {"milvus": "Milvus", "qdrant": "Qdrant"}[backend]
    t0 = time.monotonic()
    with pytest.raises(ProductLensError, match=f"cannot reach {name} at http://127.0.0.1:9"):
        open_store("products", dim=8, backend=backend, timeout=3, **options)
    assert time.monotonic() - t0 < 20


# ======================================================================== Ray
@pytest.mark.ray
def test_cli_ray_build_equals_local(tmp_path, data, tiny, local, ray_local):
    out = tmp_path / "cat"
    args = ["index", "build", str(data["gallery"]), "--out", str(out), "--model", tiny,
            "--engine", "ray", "--shard-size", "5"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "indexed 12 items" in res.output
    assert len(list((out / "work" / "shards").glob("shard-*.parquet"))) == 3
    with Catalog.open(out) as cat:
        assert_same_catalog(cat, local, data)
    res = runner.invoke(app, args)  # a finished catalog is not rebuilt by accident
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(app, args[:-4] + ["--engine", "ray", "--ocr"])
    assert res.exit_code != 0 and "--engine local" in res.output
    for option in (["--companions"], ["--query-views", "regions"], ["--gallery-views", "shelf"]):
        res = runner.invoke(app, args[:-4] + ["--engine", "ray", "--overwrite", *option])  # refused, not ignored
        assert res.exit_code != 0 and "--engine local" in res.output, option


@pytest.mark.ray
def test_ray_build_resumes_after_the_store_fails(tmp_path, data, tiny, local, ray_local, monkeypatch):
    from productlens.index.embedded import EmbeddedStore

    items = read_catalog(data["gallery"])
    real, calls = EmbeddedStore.upsert, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EmbeddedStore, "upsert", flaky)
    out = tmp_path / "cat"
    with pytest.raises(ProductLensError, match="shard 1"):
        build_catalog_sharded(items, out, embedder=tiny, ray=RayOptions(shard_size=4), progress=False)
    with pytest.raises(ProductLensError, match="incomplete"):  # no silent partial index
        Catalog.open(out)
    monkeypatch.setattr(EmbeddedStore, "upsert", real)
    shards = {p: p.stat().st_mtime_ns for p in (out / "work" / "shards").glob("shard-*.parquet")}
    cat, errors = build_catalog_sharded(items, out, embedder=tiny, ray=RayOptions(shard_size=4), progress=False)
    with cat:
        assert not errors and cat.store.get_info("loaded_shards") == [0, 1, 2]
        assert_same_catalog(cat, local, data)
    assert {p: p.stat().st_mtime_ns for p in shards} == shards  # nothing embedded twice


@pytest.mark.ray
def test_ray_build_retries_the_images_a_failed_run_could_not_read(tmp_path, data, tiny, local, ray_local):
    """A build whose photos were all unreadable (a share not mounted) failed rightly, but its shards counted
    as done: the rerun, photos back, said "indexed 0 items; skipped 0" and marked the empty catalog built."""
    import shutil

    items = read_catalog(data["gallery"])
    folder = Path(items[0].image).parent
    shutil.move(folder, tmp_path / "away")
    out = tmp_path / "cat"
    try:
        with pytest.raises(ProductLensError, match=f"no gallery image could be read \\({len(items)} skipped"):
            build_catalog_sharded(items, out, embedder=tiny, ray=RayOptions(shard_size=5), progress=False)
        with pytest.raises(ProductLensError, match="no gallery image could be read"):  # every shard's errors
            build_catalog_sharded(items, out, embedder=tiny, ray=RayOptions(shard_size=5), progress=False)
    finally:
        shutil.move(tmp_path / "away", folder)
    cat, errors = build_catalog_sharded(items, out, embedder=tiny, ray=RayOptions(shard_size=5), progress=False)
    with cat:
        assert not errors
        assert_same_catalog(cat, local, data)


# ===================================================================== Milvus
@pytest.mark.milvus
def test_cli_build_into_milvus(tmp_path, data, tiny, local, collection):
    uri, name = collection
    out = tmp_path / "cat"
    args = ["index", "build", str(data["gallery"]), "--out", str(out), "--model", tiny, "--store", "milvus",
            "--milvus-uri", uri, "--collection", name, "--milvus-index", "flat"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    spec = json.loads((out / "store.json").read_text())
    assert spec == {"backend": "milvus", "path": name, "options": {"uri": uri, "index": "flat"}}
    assert not (out / "store").exists()
    with Catalog.open(out) as cat:
        assert_same_catalog(cat, local, data)
        hits = cat.search(read_queries(data["queries"])[0].image, k=3)
        assert hits[0].product_id == 0
    res = runner.invoke(app, args[:2] + [str(data["gallery"]), "--out", str(tmp_path / "other")] + args[5:])
    assert res.exit_code != 0 and "exists" in res.output  # another catalog may not take the collection


@pytest.mark.ray
@pytest.mark.milvus
def test_ray_build_into_milvus(tmp_path, data, tiny, local, collection, ray_local):
    uri, name = collection
    assert_ray_build_equals_local(StoreSpec("milvus", name, {"uri": uri, "index": "hnsw"}), tmp_path / "cat",
                                  data, tiny, local)


@pytest.mark.milvus
def test_milvus_down_gives_a_clear_error():
    assert_unreachable_is_clear("milvus", uri="http://127.0.0.1:9")


@pytest.mark.ray
@pytest.mark.milvus
def test_milvus_failure_mid_load_leaves_an_incomplete_catalog_that_resumes(tmp_path, data, tiny, local, collection,
                                                                           ray_local, monkeypatch):
    """The connection fails on the second shard: incomplete (refused), then the rerun loads only the rest."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    uri, name = collection
    spec = StoreSpec("milvus", name, {"uri": uri, "index": "flat"})
    items, out = read_catalog(data["gallery"]), tmp_path / "cat"
    real, calls = MilvusClient.upsert, []

    def flaky(self, collection_name, rows, *args, **kwargs):
        if collection_name == name:
            calls.append(sorted(r["id"] for r in rows))
            if len(calls) == 2:
                raise MilvusException(message="fail connecting to server: connection reset")
        return real(self, collection_name, rows, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "upsert", flaky)
    with pytest.raises(ProductLensError, match=f"shard 1.*Milvus at {uri}.*connection reset"):
        build_catalog_sharded(items, out, embedder=tiny, store=spec, ray=RayOptions(shard_size=4), progress=False)
    with pytest.raises(ProductLensError, match="incomplete"):  # no silent partial index
        Catalog.open(out)
    cat, errors = build_catalog_sharded(items, out, embedder=tiny, store=spec, ray=RayOptions(shard_size=4),
                                        progress=False)
    with cat:
        assert not errors and cat.store.get_info("loaded_shards") == [0, 1, 2]
        assert_same_catalog(cat, local, data)
    assert calls[0] not in calls[2:]  # shard 0 was not loaded again


# ===================================================================== Qdrant
# No Qdrant server installs here: these run qdrant-client's local mode (a folder), through the same
# store interface and catalog code a server would use.
@pytest.mark.qdrant
def test_cli_build_into_qdrant_local(tmp_path, data, tiny, local):
    out, folder = tmp_path / "cat", tmp_path / "qdrant"
    args = ["index", "build", str(data["gallery"]), "--out", str(out), "--model", tiny, "--store", "qdrant",
            "--qdrant-path", str(folder), "--collection", "products"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    spec = json.loads((out / "store.json").read_text())
    assert spec == {"backend": "qdrant", "path": "products", "options": {"location": str(folder.resolve())}}
    assert not (out / "store").exists()
    with Catalog.open(out) as cat:
        assert_same_catalog(cat, local, data)
        hits = cat.search(read_queries(data["queries"])[0].image, k=3)
        assert hits[0].product_id == 0
    res = runner.invoke(app, args[:2] + [str(data["gallery"]), "--out", str(tmp_path / "other")] + args[5:])
    assert res.exit_code != 0 and "exists" in res.output  # another catalog may not take the collection


@pytest.mark.qdrant
def test_a_server_store_is_checked_before_the_embedding(tmp_path, data, tiny, monkeypatch):
    """A bad collection name, an unreachable server or a taken collection failed only after every photo
    was embedded (and the adapter trained), and the work was thrown away."""
    import productlens.pipeline.catalog_build as catalog_build

    def embedded(*args, **kwargs):
        raise AssertionError("embedded before the store was checked")

    monkeypatch.setattr(catalog_build, "embed_items", embedded)
    items = read_catalog(data["gallery"])
    for spec, message in ((StoreSpec("qdrant", "my products", {"location": str(tmp_path / "q")}), "letters, digits"),
                          (StoreSpec("qdrant", "taken", {"location": str(tmp_path / "q")}), "exists")):
        if message == "exists":
            spec.create(tmp_path / "elsewhere", 8).close()
        with pytest.raises(ProductLensError, match=message):
            build_catalog(items, tmp_path / "cat", embedder=tiny, store=spec, progress=False)
        with pytest.raises(ProductLensError, match=message):
            build_catalog_sharded(items, tmp_path / "cat2", embedder=tiny, store=spec, progress=False)
        assert not (tmp_path / "cat").exists() and not (tmp_path / "cat2").exists()
    res = runner.invoke(app, ["index", "build", str(data["gallery"]), "--out", str(tmp_path / "c"), "--model", tiny,
                              "--store", "milvus", "--collection", "c" * 201])
    assert res.exit_code == 1 and "at most 200 characters" in res.output


@pytest.mark.qdrant
def test_server_store_options_are_checked_before_embedding(tmp_path, data, tiny):
    """A --qdrant-path inside --out was deleted by the build's folder swap; credentials in an address went
    into store.json and every message; a folder named "2024-café" gave an invalid Milvus collection
    name after the embedding; a catalog whose collection was dropped said "pass dim to create one"."""
    base = ["index", "build", str(data["gallery"]), "--model", tiny]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "c"), "--store", "qdrant",
                                     "--qdrant-path", str(tmp_path / "c" / "q")])
    assert res.exit_code == 1 and "is inside --out" in res.output
    res = runner.invoke(app, base + ["--out", str(tmp_path / "m"), "--store", "milvus",
                                     "--milvus-uri", "http://root:secret@127.0.0.1:19530"])
    assert res.exit_code == 1 and "$PRODUCTLENS_MILVUS_TOKEN" in res.output and "secret" not in res.output
    res = runner.invoke(app, base + ["--out", str(tmp_path / "m"), "--store", "milvus", "--collection", "2x-y"])
    assert res.exit_code == 1 and "a Milvus collection name takes letters" in res.output
    out = tmp_path / "2024-café"
    res = runner.invoke(app, base + ["--out", str(out), "--store", "qdrant", "--qdrant-path", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    spec = json.loads((out / "store.json").read_text())
    assert spec["path"] == "c_2024_caf_"
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(tmp_path / "q"))
    client.delete_collection("c_2024_caf_")
    client.close()
    res = runner.invoke(app, ["index", "info", str(out)])
    assert res.exit_code == 1 and "collection 'c_2024_caf_' is gone" in res.output and "pass dim" not in res.output


@pytest.mark.ray
@pytest.mark.qdrant
def test_ray_build_into_qdrant_local(tmp_path, data, tiny, local, ray_local):
    assert_ray_build_equals_local(StoreSpec("qdrant", "products", {"location": str(tmp_path / "qdrant")}),
                                  tmp_path / "cat", data, tiny, local)


@pytest.mark.qdrant
def test_qdrant_down_gives_a_clear_error():
    assert_unreachable_is_clear("qdrant", url="http://127.0.0.1:9")


@pytest.mark.qdrant
def test_qdrant_local_folder_held_by_another_process(tmp_path):
    """qdrant-client locks a local folder: a second process gets a clear error, not a corrupt store."""
    import subprocess
    import sys
    import textwrap

    from productlens.index import open_store

    folder = tmp_path / "qdrant"
    with open_store("products", dim=4, backend="qdrant", location=folder) as s:
        s.upsert([1], np.ones((1, 4), np.float32), [{"title": "kept"}])
        code = textwrap.dedent(f"""
            from productlens.index import open_store
            from productlens.types import ProductLensError
            try:
                open_store("products", backend="qdrant", location={str(folder)!r})
            except ProductLensError as e:
                print("refused:", e)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert "refused: cannot open Qdrant's local folder" in out.stdout, out.stdout + out.stderr
        assert s.get([1]) == [{"id": 1, "title": "kept"}]


@pytest.mark.qdrant
def test_qdrant_refuses_string_ranges(tmp_path):
    from productlens.index import open_store

    with open_store("products", dim=4, backend="qdrant", location=tmp_path / "q") as s:
        s.upsert([1], np.ones((1, 4), np.float32), [{"brand": "acme"}])
        with pytest.raises(ProductLensError, match="only numbers by range"):
            s.search(np.ones(4, np.float32), 1, where={"brand": {"gte": "a"}})
        assert s.search(np.ones(4, np.float32), 1, where={"brand": "acme"})[1].tolist() == [[1]]

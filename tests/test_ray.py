"""Ray Data batch embedding: parquet shards equal the single-process path, resume, load into a store.

Run with ``pytest -m ray tests/test_ray.py``; skipped when Ray is not installed.
A tiny ONNX model (test_embedders._tiny_onnx) keeps every embedding cheap, so
most of the time goes to starting Ray's worker processes.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from helpers import local_ray, product_photo, tiny_embedder
from productlens.types import Box, Item, ProductLensError

pytestmark = pytest.mark.ray

try:
    import ray
except ImportError as exc:  # pragma: no cover - the ray extra is not installed
    pytest.skip(f"Ray is not installed (pip install 'productlens[ray]'): {exc}", allow_module_level=True)

from productlens.index import open_store
from productlens.pipeline.catalog import item_metadata
from productlens.pipeline.embed import embed_items
from productlens.pipeline.ray_embed import (embed_shards, iter_shards, load_shards, read_manifest, shard_path,
                                            write_manifest)

N_GOOD = 36
SHARD = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """``onnx:PATH`` of a tiny 8-d model (16 px input)."""
    return tiny_embedder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[Item]:
    """36 photos (some with a box, all with metadata), a corrupt file and a missing one."""
    d = tmp_path_factory.mktemp("photos")
    out = []
    for i in range(N_GOOD):
        path = d / f"p{i:02d}.jpg"
        product_photo(i % 12, i // 12, shop=i % 2 == 0).save(path)
        out.append(Item(id=100 + i, image=str(path), product_id=i % 12, title=f"product {i % 12}",
                        category="round" if i % 12 >= 6 else "square",
                        box=Box(10, 8, 60, 70) if i % 5 == 3 else None, extra={"price": i * 1.5, "sku": f"s{i}"}))
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 10)
    out.insert(5, Item(id=7, image=str(d / "corrupt.jpg"), title="bad"))
    out.insert(20, Item(id=8, image=str(d / "missing.jpg"), title="gone"))
    return out


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module; embed_shards uses it and leaves it running."""
    with local_ray():
        yield


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, ray_local, tiny, items):
    """A work dir embedded by Ray: 38 items in 3 shards, 2 workers."""
    work = tmp_path_factory.mktemp("work")
    write_manifest(items, work)
    report = embed_shards(work, embedder=tiny, shard_size=SHARD, workers=2, batch_size=4, progress=False)
    return work, report


def _by_id(work) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    ids, vecs, mds = [], [], []
    for _, i, v, m in iter_shards(work):
        ids.append(i)
        vecs.append(v)
        mds += m
    return np.concatenate(ids), np.concatenate(vecs), mds


def test_unreachable_address_fails_fast(tmp_path, tiny, items) -> None:
    if ray.is_initialized():  # pragma: no cover - a running Ray would be used instead of the address
        pytest.skip("Ray is already running in this process")
    t = time.perf_counter()
    with pytest.raises(ProductLensError, match="127.0.0.1:1"):
        embed_shards(tmp_path, embedder=tiny, manifest=items[:3], address="ray://127.0.0.1:1", progress=False)
    assert time.perf_counter() - t < 20 and not ray.is_initialized()


def test_ray_equals_single_process(embedded, tiny, items) -> None:
    from productlens.models.embedders import get_embedder

    work, report = embedded
    assert (report.shards_total, report.shards_done_before, report.shards_written) == (3, 0, 3)
    assert report.complete and report.images_embedded == N_GOOD and report.ray_start_seconds == 0
    ids, vecs, mds = _by_id(work)
    ref = embed_items(get_embedder(tiny), items, batch_size=32, progress=False)
    ref_ids = np.array([items[i].id for i in ref.ok])
    assert np.array_equal(ids, ref_ids)  # manifest order, bad ones dropped
    assert vecs.dtype == np.float32 and vecs.shape == (N_GOOD, 8)
    assert np.abs(vecs - ref.vectors).max() < 1e-5
    assert mds == [item_metadata(items[i]) for i in ref.ok]
    queries = ref.vectors[[0, 7, 19, 30]] + 0.05 * np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    assert np.array_equal(np.argsort(-queries @ vecs.T, axis=1, kind="stable")[:, :10],
                          np.argsort(-queries @ ref.vectors.T, axis=1, kind="stable")[:, :10])


def test_bad_images_are_reported_and_skipped(embedded, items) -> None:
    work, report = embedded
    assert report.images_skipped == 2
    assert [(i, msg.split(":")[0]) for i, _, msg in report.errors] == [(5, items[5].image), (20, items[20].image)]
    assert "missing.jpg" in report.errors[1][1]
    on_disk = json.loads(shard_path(work, 0).with_suffix(".errors.json").read_text())
    assert [(e["index"], e["id"]) for e in on_disk] == [(5, 7)]
    assert json.loads(shard_path(work, 2).with_suffix(".errors.json").read_text()) == []
    ids = _by_id(work)[0]
    assert 7 not in ids and 8 not in ids and len(ids) == N_GOOD


def test_resume_embeds_only_missing_shards(embedded, tmp_path, tiny, items) -> None:
    work, _ = embedded
    again = tmp_path / "work"
    shutil.copytree(work, again)
    shard_path(again, 1).unlink()  # as if the run was killed before shard 1 was renamed into place
    (again / "shards" / "shard-000001.parquet.x1y2.tmp").write_bytes(b"partial")
    write_manifest(items, again)  # the same items: the manifest is kept
    report = embed_shards(again, embedder=tiny, shard_size=SHARD, workers=2, batch_size=4, progress=False)
    assert (report.shards_done_before, report.shards_written, report.images_embedded) == (2, 1, SHARD - 1)
    assert [i for i, _, _ in report.errors] == [20]
    assert not list((again / "shards").glob("*.tmp"))
    full, resumed = _by_id(work), _by_id(again)
    assert np.array_equal(full[0], resumed[0]) and np.abs(full[1] - resumed[1]).max() < 1e-6
    assert full[2] == resumed[2]
    done = embed_shards(again, embedder=tiny, shard_size=SHARD, progress=False)  # nothing left: no Ray work
    assert (done.shards_done_before, done.shards_written) == (3, 0)
    with pytest.raises(ProductLensError, match="embedder"):
        embed_shards(again, embedder="efficientnet-lite0", shard_size=SHARD, progress=False)
    with pytest.raises(ProductLensError, match="shard_size"):
        embed_shards(again, embedder=tiny, shard_size=8, progress=False)
    with pytest.raises(ProductLensError, match="another catalog"):
        write_manifest(items[:-1], again)


def test_retry_embeds_again_only_the_shards_that_missed_files(embedded, tmp_path, tiny, items) -> None:
    """A rerun that tries skipped photos again runs the shard of the missing photo (a share not mounted
    yet), not the shard of the corrupt one: 0.1% corrupt files had made most shards run again."""
    work, _ = embedded
    again = tmp_path / "work"
    shutil.copytree(work, again)
    stamps = {s: shard_path(again, s).stat().st_mtime_ns for s in range(3)}
    report = embed_shards(again, embedder=tiny, shard_size=SHARD, workers=2, batch_size=4, progress=False,
                          retry_errors=True)
    assert (report.shards_done_before, report.shards_written) == (2, 1)  # shard 1: the missing photo, row 20
    assert [s for s in range(3) if shard_path(again, s).stat().st_mtime_ns != stamps[s]] == [1]


def test_manifest_round_trip(tmp_path, items) -> None:
    path = write_manifest(items, tmp_path)
    back = read_manifest(path)
    assert [item_metadata(it) for it in back] == [item_metadata(it) for it in items]
    assert [(it.id, it.box) for it in back] == [(it.id, it.box) for it in items]
    with pytest.raises(ProductLensError, match="no manifest"):
        embed_shards(tmp_path / "empty", embedder="x", progress=False)
    with pytest.raises(ProductLensError, match="repeat"):
        write_manifest(items + items[:1], tmp_path / "dup")


def test_load_shards_into_store(embedded, tmp_path, items) -> None:
    work, _ = embedded
    ids, vecs, mds = _by_id(work)
    with open_store(tmp_path / "store", dim=8) as store:
        assert load_shards(work, store, progress=False) == N_GOOD
        assert np.array_equal(store.ids(), np.sort(ids))
        assert np.abs(store.vectors(ids) - vecs).max() < 1e-6
        assert [{k: v for k, v in md.items() if k != "id"} for md in store.get(ids)] == mds
        assert store.get_info("load_complete") is True and store.get_info("loaded_shards") == [0, 1, 2]
        assert load_shards(work, store, progress=False) == 0  # everything is loaded already
    with open_store(tmp_path / "other", dim=16) as store:
        with pytest.raises(ProductLensError, match="16-d"):
            load_shards(work, store, progress=False)


def test_load_shards_store_failure_then_rerun(embedded, tmp_path) -> None:
    work, _ = embedded
    with open_store(tmp_path / "store", dim=8) as store:
        real, calls = store.upsert, []

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise ConnectionError("server went away")
            return real(*args, **kwargs)

        store.upsert = flaky
        with pytest.raises(ProductLensError, match="shard 1.*server went away"):
            load_shards(work, store, progress=False)
        assert store.get_info("load_complete") is False and store.get_info("loaded_shards") == [0]
        store.upsert = real
        assert load_shards(work, store, progress=False) == N_GOOD - SHARD + 1  # shards 1 and 2
        assert store.get_info("load_complete") is True and len(store) == N_GOOD


def test_user_csv_manifest(ray_local, tmp_path, tiny) -> None:
    (tmp_path / "img").mkdir()
    lines = ["id,image,product_id,title,category,price,box"]
    for i in range(5):
        product_photo(i, 0, shop=True).save(tmp_path / "img" / f"{i}.jpg")
        lines.append(f'{10 + i},img/{i}.jpg,{i},thing {i},cat{i % 2},{i}.5,"{"5,5,50,50" if i == 2 else ""}"')
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    items = read_manifest(tmp_path / "m.csv")
    assert items[2].box == Box(5, 5, 50, 50) and items[0].extra == {"price": "0.5"}
    report = embed_shards(tmp_path / "work", embedder=tiny, manifest=tmp_path / "m.csv", shard_size=2,
                          workers=2, progress=False)
    assert (report.shards_total, report.images_embedded, report.images_skipped) == (3, 5, 0)
    ids, vecs, mds = _by_id(tmp_path / "work")
    assert ids.tolist() == [10, 11, 12, 13, 14] and vecs.shape == (5, 8)
    assert mds[1] == {"image": str(tmp_path / "img" / "1.jpg"), "title": "thing 1", "category": "cat1",
                      "product_id": 1, "price": "1.5"}


def test_workers_read_only_their_row_groups(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from productlens.pipeline.ray_embed import _read_rows

    pq.write_table(pa.table({"id": pa.array(np.arange(103), pa.int64())}), tmp_path / "m.parquet", row_group_size=10)
    f = pq.ParquetFile(tmp_path / "m.parquet")
    for start, stop in [(0, 10), (0, 7), (5, 25), (9, 11), (10, 20), (96, 103), (102, 103), (0, 103)]:
        assert _read_rows(f, start, stop).column("id").to_pylist() == list(range(start, stop))

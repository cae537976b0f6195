"""Catalog build, search, incremental changes, reopen, batch ranking, bad input."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from helpers import product_photo, write_dataset
from productlens.data.images import load_image
from productlens.data.readers import read_gallery, read_labelled_csv, read_queries
from productlens.pipeline.catalog import Catalog
from productlens.pipeline.catalog_build import build_catalog
from productlens.pipeline.rank import rank_queries, save_rankings
from productlens.types import BoxError, InvalidBox, Item, ProductLensError

MODEL = "efficientnet-lite0"  # the smallest bundled backbone keeps tests fast


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ds"))


@pytest.mark.parametrize("adapted", [False, True])
def test_build_search_reopen(dataset, tmp_path, adapted: bool) -> None:
    gallery = read_gallery(dataset["gallery"])
    train = read_labelled_csv(dataset["train"]) if adapted else None
    cat, errors = build_catalog(gallery, tmp_path / "cat", embedder=MODEL, train=train, progress=False)
    assert errors == [] and len(cat) == 4 and (cat.adapter is not None) == adapted
    query = read_queries(dataset["queries"])[0]
    hits = cat.search(query.image, k=3)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    # the shop photo of the same product is found first (a clean synthetic case)
    assert hits[0].product_id == query.product_id
    cat.close()
    with Catalog.open(tmp_path / "cat") as again:
        assert [(h.id, round(h.score, 5)) for h in again.search(query.image, k=3)] == \
               [(h.id, round(h.score, 5)) for h in hits]
        assert (again.adapter is not None) == adapted


def test_a_smaller_k_gives_the_first_k_of_the_same_ranking(dataset, tmp_path) -> None:
    """alpha-QE, text fusion, verification and grouping work on the same candidates whatever k is asked:
    with k = 1 the query was expanded with one neighbour instead of two, and k < 10 verified fewer results,
    so the top hit could change with k."""
    gallery = read_gallery(dataset["gallery"])
    cat, _ = build_catalog(gallery, tmp_path / "cat", embedder=MODEL, progress=False)
    vecs = cat.embed_queries(read_queries(dataset["queries"])).vectors
    full_s, full_i = cat.search_vectors(vecs, 4)
    for k in (1, 2, 3):
        s, i = cat.search_vectors(vecs, k)
        assert i.shape == (len(vecs), k) and (i == full_i[:, :k]).all()
        np.testing.assert_allclose(s, full_s[:, :k], rtol=1e-6)
    photo = read_queries(dataset["queries"])[0].image
    for k in (0, -1, 2.5, True):  # -1 had returned all but the last hit
        with pytest.raises(ProductLensError, match="k must be a whole number of at least 1"):
            cat.search(photo, k=k)
    with pytest.raises(ProductLensError, match=r"box must be a productlens.types.Box"):  # had blamed the photo
        cat.search(photo, box=(10, 10, 50, 50))
    cat.close()


def test_build_catalog_names_what_it_takes(tmp_path) -> None:
    """A csv path given as the items had been taken a character at a time ("'str' object has no attribute 'id'")."""
    with pytest.raises(ProductLensError, match="got the path 'gallery.csv': read it first with .*read_catalog"):
        build_catalog("gallery.csv", tmp_path / "cat")
    with pytest.raises(ProductLensError, match="takes productlens.types.Item objects, got str"):
        build_catalog(["a.jpg"], tmp_path / "cat")
    assert not (tmp_path / "cat").exists()
    for pid in ("abc", 2.5, True):  # refused by name before any photo is embedded (a raw ValueError; 2.5 was 2)
        with pytest.raises(ProductLensError, match=f"item 7: product_id must be a whole number, got {pid!r}"):
            build_catalog([Item(7, "a.jpg", product_id=pid)], tmp_path / "cat")


def test_an_open_catalog_sees_another_handles_writes(dataset, tmp_path) -> None:
    """A running server kept its product map and text matcher while `index add` or `update_metadata` ran
    beside it: a title changed elsewhere was never matched, a new photo never grouped with its product."""
    from helpers import tiny_embedder

    name = tiny_embedder(tmp_path)
    gallery = read_gallery(dataset["gallery"])
    build_catalog(gallery, tmp_path / "cat", embedder=name, progress=False)[0].close()
    with Catalog.open(tmp_path / "cat") as a, Catalog.open(tmp_path / "cat") as b:
        first, product = gallery[0].id, gallery[0].product_id
        before = a.items_of(product)
        a.matcher.scores(["zucchini premium"])  # made and cached
        b.update_metadata([first], [{"title": "Zucchini Premium Brand"}])
        assert a.matcher.scores(["zucchini premium"])[0].max() > 0.3
        b.add([Item(10_000, gallery[0].image, product_id=product)], progress=False)
        assert sorted(a.items_of(product)) == sorted(before + [10_000])
        version = a.store.version()
        a.update_metadata([first], [{"title": "own write"}])  # its own writes: forgotten by _changed, as before
        assert a.store.version() == version


def test_relative_user_onnx_model_is_found_from_where_it_was_named(dataset, tmp_path, monkeypatch) -> None:
    """``--model onnx:tower.onnx`` names a file beside the user, not inside the catalog folder."""
    import json

    from test_embedders import _tiny_onnx

    models = tmp_path / "models"
    models.mkdir()
    _tiny_onnx(models / "tower.onnx")
    (models / "tower.json").write_text(json.dumps({"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}))
    monkeypatch.chdir(models)
    cat, _ = build_catalog(read_gallery(dataset["gallery"]), tmp_path / "cat", embedder="onnx:tower.onnx",
                           progress=False)
    cat.close()
    monkeypatch.chdir(tmp_path)
    with Catalog.open(tmp_path / "cat") as again:
        assert len(again.search(read_queries(dataset["queries"])[0].image, k=2)) == 2


def test_reopen_refuses_a_user_model_whose_file_or_preprocessing_changed(dataset, tmp_path) -> None:
    """Queries embedded by another model or preprocessing than the gallery would rank silently wrong.
    (In one process, as in a server: the process-wide embedder is loaded again when its files change.)"""
    import json

    from helpers import tiny_embedder
    from test_embedders import _tiny_onnx

    name = tiny_embedder(tmp_path)
    build_catalog(read_gallery(dataset["gallery"]), tmp_path / "cat", embedder=name, progress=False)[0].close()
    Catalog.open(tmp_path / "cat").close()
    preprocessing = (tmp_path / "tiny.json").read_text()
    (tmp_path / "tiny.json").write_text(json.dumps({"size": 16, "resize": "crop"}))
    with pytest.raises(ProductLensError, match="preprocessing of .*tiny.onnx changed"):
        Catalog.open(tmp_path / "cat")
    with Catalog.open(tmp_path / "cat", check=False) as described:  # index info still describes it
        assert len(described) == 4 and '"resize": "squash"' in described.model_changed
    (tmp_path / "tiny.json").write_text(preprocessing)
    _tiny_onnx(tmp_path / "tiny.onnx", out_map=True)  # another 8-d model in the same file
    with pytest.raises(ProductLensError, match="model file of .*tiny.onnx changed"):
        Catalog.open(tmp_path / "cat")


def test_reopen_refuses_a_catalog_of_a_newer_format(dataset, tmp_path) -> None:
    from productlens.pipeline.catalog import CATALOG_FORMAT

    cat, _ = build_catalog(read_gallery(dataset["gallery"]), tmp_path / "cat", embedder=MODEL, progress=False)
    assert cat.store.get_info("catalog_format") == 1  # whole photos: the format every version reads
    cat.store.set_info("catalog_format", CATALOG_FORMAT)
    cat.close()
    Catalog.open(tmp_path / "cat").close()  # this version's newest format opens
    cat = Catalog.open(tmp_path / "cat")
    cat.store.set_info("catalog_format", CATALOG_FORMAT + 1)
    cat.close()
    with pytest.raises(ProductLensError, match="newer productlens"):
        Catalog.open(tmp_path / "cat")


def test_companions_recorded_and_used_on_reopen(dataset, tmp_path) -> None:
    """Companion backbones (off by default) are joined to gallery and query vectors and recorded in the
    store, so that a reopened catalog embeds queries the same way."""
    from productlens.models.embedders.joined import JoinedEmbedder

    gallery, train = read_gallery(dataset["gallery"]), read_labelled_csv(dataset["train"])
    query = read_queries(dataset["queries"])[0]
    cat, _ = build_catalog(gallery, tmp_path / "plain", embedder=MODEL, train=train, progress=False)
    with cat:
        assert cat.embedder.dim == 1280 and cat.store.get_info("companions") == "" and cat.vector_name == MODEL
    cat, _ = build_catalog(gallery, tmp_path / "cat", embedder=MODEL, train=train, progress=False,
                           companions=["efficientnet-lite2", "mobilenetv2"])
    with cat:
        assert isinstance(cat.embedder, JoinedEmbedder) and cat.embedder.dim == 3840
        assert cat.vector_name == f"{MODEL}+efficientnet-lite2+mobilenetv2"
        hits = [(h.id, round(h.score, 5)) for h in cat.search(query.image, k=3)]
        assert cat.search(query.image, k=1)[0].product_id == query.product_id
    with Catalog.open(tmp_path / "cat") as again:
        assert again.store.get_info("companions") == "efficientnet-lite2+mobilenetv2"
        assert [(h.id, round(h.score, 5)) for h in again.search(query.image, k=3)] == hits
    with pytest.raises(ProductLensError, match="companions"):
        build_catalog(gallery, tmp_path / "bad", embedder=MODEL, train=train, progress=False, companions=["resnet50"])
    assert not (tmp_path / "bad").exists()


def test_query_views_recorded_and_used(dataset, tmp_path) -> None:
    """An adapted catalog pools each query with its crops by default ("regions"), recorded in the store so
    that a reopened catalog (and every query path: files, a single image) embeds queries the same way."""
    from productlens.data.augment import PooledViewEmbedder

    gallery, train = read_gallery(dataset["gallery"]), read_labelled_csv(dataset["train"])
    query = read_queries(dataset["queries"])[0]
    cat, _ = build_catalog(gallery, tmp_path / "a", embedder=MODEL, train=train, progress=False)
    with cat:
        assert cat.store.get_info("query_views") == "regions" and isinstance(cat.query_embedder, PooledViewEmbedder)
        hits = cat.search(query.image, k=2)
        vec = cat.embed_queries([query.image]).vectors
        np.testing.assert_allclose(cat.search_vectors(vec, 2, rerank=True)[0][0], [h.score for h in hits], atol=1e-5)
    with Catalog.open(tmp_path / "a") as again:
        assert isinstance(again.query_embedder, PooledViewEmbedder)
        # the gallery is embedded with the queries' views and those of a 2 x 2 mosaic, also what is added later
        assert again.store.get_info("gallery_views") == "shelf"
        assert isinstance(again.gallery_embedder, PooledViewEmbedder) and len(again.gallery_embedder.views) == 14
        assert again.gallery_embedder.groups == [7, 7]
        assert again.store.get_info("catalog_format") == 2  # a shelf: older versions say to upgrade
        pooled = again.to_index_space(again.gallery_embedder.embed_images([load_image(gallery[1].image)]), "gallery")
        np.testing.assert_allclose(again.store.vectors([1]), pooled, atol=2e-3)
        as_query = again.to_index_space(again.query_embedder.embed_images([load_image(gallery[1].image)]), "gallery")
        assert not np.allclose(again.store.vectors([1]), as_query, atol=2e-3)
        again.add([dataclasses.replace(gallery[1], id=50)], progress=False)
        np.testing.assert_allclose(again.store.vectors([50]), again.store.vectors([1]), atol=1e-5)
    cat, _ = build_catalog(gallery, tmp_path / "b", embedder=MODEL, train=train, progress=False, query_views="none")
    with cat:
        assert cat.query_embedder is cat.embedder and cat.store.get_info("query_views") == "none"
        assert cat.gallery_embedder is cat.embedder and cat.store.get_info("gallery_views") == "none"
    cat, _ = build_catalog(gallery, tmp_path / "c", embedder=MODEL, progress=False)  # no adapter: whole photos
    with cat:
        assert cat.query_embedder is cat.embedder and cat.gallery_embedder is cat.embedder
    cat, _ = build_catalog(gallery, tmp_path / "e", embedder=MODEL, train=train, progress=False, gallery_views="none")
    with cat:
        assert isinstance(cat.query_embedder, PooledViewEmbedder) and cat.gallery_embedder is cat.embedder
    cat, _ = build_catalog(gallery, tmp_path / "f", embedder=MODEL, train=train, progress=False,
                           gallery_views="regions")
    with cat:
        assert cat.store.get_info("gallery_views") == "regions" and len(cat.gallery_embedder.views) == 7
        assert cat.store.get_info("catalog_format") == 1  # what every version reads
    for views in ({"query_views": "lots"}, {"gallery_views": "lots"}):
        with pytest.raises(ProductLensError, match="unknown view set"):
            build_catalog(gallery, tmp_path / "d", embedder=MODEL, train=train, progress=False, **views)
        assert not (tmp_path / "d").exists()


def test_gallery_photos_that_are_training_photos_reuse_their_vectors(dataset, tmp_path) -> None:
    """A gallery that holds the training photos (the vpr set) takes their vectors instead of embedding
    them again: the same vectors as embedding them would give, and bad photos still reported by index."""
    from productlens.data.augment import PooledViewEmbedder, view_set
    from productlens.models.embedders import get_embedder
    from productlens.pipeline.catalog_models import query_embedder
    from productlens.pipeline.catalog_build import _further_groups, embed_gallery
    from productlens.pipeline.embed import embed_items

    train = read_labelled_csv(dataset["train"])
    emb = PooledViewEmbedder(get_embedder(MODEL), view_set("regions"))
    known = embed_items(emb, train[:6], progress=False)
    gallery = [Item(id=i, image=t.image) for i, t in enumerate(train[3:9])]  # three known, three not
    gallery.insert(2, Item(id=99, image=str(tmp_path / "missing.jpg")))
    got = embed_gallery(emb, gallery, progress=False, known=known, known_items=train[:6])
    fresh = embed_items(emb, gallery, progress=False)
    assert got.ok.tolist() == fresh.ok.tolist() == [0, 1, 3, 4, 5, 6]
    np.testing.assert_allclose(got.vectors, fresh.vectors, atol=1e-6)
    assert [e[0] for e in got.errors] == [2] and "missing.jpg" in got.errors[0][2]
    # a shelf gallery: a known photo takes its regions vector and is embedded under the mosaic's views only
    shelf = query_embedder(get_embedder(MODEL), "shelf")
    extra = _further_groups(get_embedder(MODEL), "regions", "shelf", ())
    assert len(extra) == 1 and extra[0].views == shelf.views[7:]
    got = embed_gallery(shelf, gallery, progress=False, known=known, known_items=train[:6], extra=extra)
    fresh = embed_items(shelf, gallery, progress=False)
    assert got.ok.tolist() == fresh.ok.tolist() == [0, 1, 3, 4, 5, 6]
    np.testing.assert_allclose(got.vectors, fresh.vectors, atol=1e-5)
    assert [e[0] for e in got.errors] == [2]
    # no reuse where the first group differs, or with companions (they see the whole photo only)
    assert _further_groups(get_embedder(MODEL), "none", "shelf", ()) is None
    assert _further_groups(get_embedder(MODEL), "regions", "shelf", ("mobilenetv2",)) is None
    assert _further_groups(get_embedder(MODEL), "regions", "regions", ()) == []


def test_incremental_add_update_remove(dataset, tmp_path) -> None:
    gallery = read_gallery(dataset["gallery"])
    cat, _ = build_catalog(gallery[:2], tmp_path / "cat", embedder=MODEL, progress=False)
    with cat:
        assert cat.add(gallery[2:], progress=False) == [] and len(cat) == 4
        q = product_photo(3, 50, shop=True)  # a clean photo of product 3
        path = tmp_path / "q.jpg"
        q.save(path)
        assert cat.search(path, k=1)[0].id == 3
        assert cat.remove([3]) == 1 and len(cat) == 3
        assert all(h.id != 3 for h in cat.search(path, k=3))
        # same id replaces: item 0 now shows product 3
        cat.add([dataclasses.replace(gallery[3], id=0)], progress=False)
        assert len(cat) == 3 and cat.search(path, k=1)[0].id == 0


def test_bad_items_are_skipped_and_reported(dataset, tmp_path) -> None:
    gallery = read_gallery(dataset["gallery"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    items = gallery + [Item(id=90, image=str(broken)), Item(id=91, image=str(tmp_path / "missing.jpg"))]
    cat, errors = build_catalog(items, tmp_path / "cat", embedder=MODEL, progress=False)
    with cat:
        assert len(cat) == 4 and len(errors) == 2
        assert "broken.jpg" in errors[0][2] and "missing.jpg" in errors[1][2]
        with pytest.raises(BoxError):
            from productlens.types import Box
            cat.search(gallery[0].image, box=Box(500, 500, 10, 10))


def test_build_refuses_to_overwrite_and_leaves_no_partial(dataset, tmp_path, monkeypatch) -> None:
    from productlens import fileio

    monkeypatch.setattr(fileio, "SWEEP_EVERY", 0.0)  # each build sweeps, not only the first in this process
    gallery = read_gallery(dataset["gallery"])
    build_catalog(gallery, tmp_path / "cat", embedder=MODEL, progress=False)[0].close()
    with pytest.raises(ProductLensError, match="exists"):
        build_catalog(gallery, tmp_path / "cat", embedder=MODEL, progress=False)
    with pytest.raises(ProductLensError, match="no gallery image"):
        build_catalog([Item(id=1, image=str(tmp_path / "nope.jpg"))], tmp_path / "empty", embedder=MODEL,
                      progress=False)
    assert not (tmp_path / "empty").exists()
    with pytest.raises(ProductLensError, match=r"unique; repeated: \[1\]"):
        build_catalog([Item(id=1, image=gallery[0].image), Item(id=1, image=gallery[1].image)], tmp_path / "dup",
                      embedder=MODEL, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]  # no temp folders left behind
    with pytest.raises(ProductLensError, match="not a productlens catalog"):
        Catalog.open(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ProductLensError, match="holds files but no productlens catalog: it is never replaced"):
        build_catalog(gallery, mine, embedder=MODEL, overwrite=True, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    note = tmp_path / "note.txt"  # a user's file where the catalog would go: replaced by a folder before
    note.write_text("precious")
    with pytest.raises(ProductLensError, match="is a file, not a catalog folder: it is never replaced"):
        build_catalog(gallery, note, embedder=MODEL, overwrite=True, progress=False)
    assert note.read_text() == "precious"
    from productlens.fileio import replace_dir

    (tmp_path / "new").mkdir()
    with pytest.raises(ProductLensError, match="is not a folder: it is not replaced"):
        replace_dir(tmp_path / "new", note)
    (tmp_path / "new").rmdir()
    note.unlink()
    killed = tmp_path / "cat.building.k1ll3d.pltmp"  # what a build killed with -9 leaves: unlocked, old
    (killed / "embedded").mkdir(parents=True)
    os.utime(killed, (0, 0))
    again, _ = build_catalog(gallery, tmp_path / "cat", embedder=MODEL, overwrite=True, progress=False)
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat", "mine"]  # the next build swept it


def test_a_search_that_meets_another_processes_remove_is_made_again(dataset, tmp_path) -> None:
    """Another handle removes a photo between the search and query expansion's read of its vector (as an
    `index remove` beside a server can): that search had raised "ids not in the store", and one that met it
    between the ranking and the metadata came back short. Now the reads are made again on the new state."""
    from productlens.index import open_store

    cat, _ = build_catalog(read_gallery(dataset["gallery"]), tmp_path / "cat", embedder=MODEL, progress=False)
    photo = read_queries(dataset["queries"])[0].image
    first = cat.search(photo, k=4)
    other = open_store(tmp_path / "cat" / "store")
    search, calls = cat.store.search, []

    def search_then_remove(*args, **kwargs):  # the first ranking of the first search, then the other's remove
        out = search(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            other.remove([first[0].id])
        return out

    cat.store.search = search_then_remove
    hits = cat.search(photo, k=4)
    assert len(calls) > 2  # made again: one ranking with expansion is two searches
    assert [h.id for h in hits] == [h.id for h in first if h.id != first[0].id]
    del cat.store.search
    calls.clear()
    as_hits = cat.store.as_hits

    def remove_then_read(*args):  # the other's remove between the ranking and the metadata
        if not calls:
            calls.append(1)
            other.remove([hits[0].id])
        return as_hits(*args)

    cat.store.as_hits = remove_then_read
    again = cat.search(photo, k=1)  # without the new reads: no hit at all (the one found was removed)
    assert [h.id for h in again] == [hits[1].id]
    del cat.store.as_hits
    calls.clear()

    def search_then_remove_one(*args, **kwargs):  # a batch ranking that meets a removal: had raised ValueError
        out = search(*args, **kwargs)
        if not calls:
            calls.append(1)
            other.remove([hits[2].id])
        return out

    cat.store.search = search_then_remove_one
    ranks, _ = rank_queries(cat, [Item(id=0, image=photo)], k=4, progress=False, verify=False)
    assert ranks.tolist() == [[hits[1].id, -1, -1, -1]]  # the one photo left, padded to k
    other.close()
    cat.close()


def test_own_writes_update_the_product_map_item_by_item(dataset, tmp_path, monkeypatch) -> None:
    """After an add, a product change, a removal and a new title, the product map is the one a fresh open
    reads, without reading every item again (0.7 s a write at 200k items); another process's write makes
    it read again."""
    cat, _ = build_catalog(read_gallery(dataset["gallery"]), tmp_path / "cat", embedder=MODEL, progress=False)
    photo = read_queries(dataset["queries"])[0].image
    assert cat.items_of(1) == [1]  # the map is read once here
    reads = []
    ids = cat.store.ids
    monkeypatch.setattr(cat.store, "ids", lambda: reads.append(1) or ids())
    cat.add([Item(id=10, image=photo, product_id=1), Item(id=11, image=photo, product_id=5),
             Item(id=12, image=photo)], progress=False)
    assert cat.items_of(1) == [1, 10] and cat.items_of(5) == [11]
    cat.update_metadata([10, 11], [{"product_id": 2}, {"title": "renamed"}])
    assert cat.items_of(1) == [1] and cat.items_of(2) == [2, 10] and cat.items_of(5) == [11]
    cat.remove([2, 11])
    assert cat.items_of(2) == [10] and cat.items_of(5) == [] and reads == []
    with Catalog.open(tmp_path / "cat") as fresh:
        assert fresh._products() == cat._products()
        fresh.remove([10])  # another handle: this one reads the map again
    assert cat.items_of(2) == [] and reads == [1]
    cat.close()


def test_rank_queries_aicrowd_array(dataset, tmp_path) -> None:
    gallery = read_gallery(dataset["gallery"])
    good = read_queries(dataset["queries"])
    queries = list(good)  # unreadable queries in the middle: every row after them stays its own query's
    queries.insert(1, Item(id=998, image=good[0].image, box=InvalidBox.because("q.csv, line 9: bad box")))
    queries.insert(3, Item(id=999, image=str(tmp_path / "missing.jpg")))
    bad = [1, 3]
    cat, _ = build_catalog(gallery, tmp_path / "cat", embedder=MODEL,
                           train=read_labelled_csv(dataset["train"]), progress=False)
    with cat:
        ranks, errors = rank_queries(cat, queries, k=1000, progress=False)
        alone, _ = rank_queries(cat, good, k=1000, progress=False)
        small_batches, _ = rank_queries(cat, queries, k=1000, progress=False, batch=2)  # past batch boundaries
    assert ranks.shape == (len(queries), 1000)
    kept = np.ones(len(queries), bool)
    kept[bad] = False
    assert (ranks[kept, :4] >= 0).all() and (ranks[:, 4:] == -1).all() and (ranks[bad] == -1).all()
    assert np.array_equal(ranks[kept], alone) and np.array_equal(small_batches, ranks)
    assert len(errors) == 2 and any("line 9: bad box" in str(e) for e in errors)
    assert sorted(ranks[0, :4].tolist()) == [0, 1, 2, 3]
    top1 = np.mean([r[0] == q.product_id for r, q in zip(alone, good)])
    assert top1 >= 0.75
    out = save_rankings(ranks, tmp_path / "sub" / "rankings.npy")
    assert np.array_equal(np.load(out), ranks) and np.load(out).dtype == np.int32  # the challenge's array
    big = ranks.copy()
    big[0, 0] = 3_000_000_000  # was written wrapped around to a negative id, and scored so
    with pytest.raises(ProductLensError, match="3000000000 does not fit the AIcrowd rankings array"):
        save_rankings(big, tmp_path / "big.npy")
    assert not (tmp_path / "big.npy").exists()


def test_group_by_product_orders_by_best_score_of_each_product() -> None:
    from types import SimpleNamespace

    from productlens.pipeline.catalog import Catalog

    products = {10: 1, 11: 2, 12: 1, 13: None, 14: -1, 15: 2}
    store = SimpleNamespace(get=lambda ids: [{"product_id": products[int(i)]} for i in ids])
    cat = Catalog.__new__(Catalog)
    cat.store = store
    ids = np.array([[11, 13, 10, 12, 15, 14, -1],
                    [14, 10, 11, 15, 12, 13, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, -np.inf],
                       [0.95, 0.9, 0.5, 0.4, 0.3, 0.2, -np.inf]], np.float32)
    s, i = cat._group(scores, ids)
    # row 0: product 2 (0.9: ids 11, 15), item 13 alone (0.8), product 1 (0.7: ids 10, 12), item 14
    assert i[0].tolist() == [11, 15, 13, 10, 12, 14, -1]
    np.testing.assert_allclose(s[0, :6], [0.9, 0.9, 0.8, 0.7, 0.7, 0.4])
    # row 1: unlabelled 14 first, then product 1 (10, 12), product 2 (11, 15), 13
    assert i[1].tolist() == [14, 10, 12, 11, 15, 13, -1]
    assert np.isneginf(s[:, -1]).all()


def test_alpha_qe_and_dba_by_hand() -> None:
    from productlens.models.embedders.base import l2_normalize
    from productlens.pipeline.rerank import alpha_qe, dba

    q = np.array([[1.0, 0, 0]], np.float32)
    n = np.array([[[0, 1.0, 0], [0, 0, 1.0]]], np.float32)
    got = alpha_qe(q, np.array([[0.9, 0.5]]), n, 3.0)  # weights 0.9**3 and 0.5**3
    np.testing.assert_allclose(got, l2_normalize(np.array([[1, 0.729, 0.125]], np.float32)), rtol=1e-6)
    # padding (-inf) and a negative similarity weigh nothing
    np.testing.assert_allclose(alpha_qe(q, np.array([[-np.inf, -0.5]]), n, 3.0), q)
    g = l2_normalize(np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], np.float32))
    # each photo: itself (sim 1) plus its nearest other photo at sim**3; the third's nearest other is at 0
    want = l2_normalize(np.array([g[0] + 0.8 ** 3 * g[1], g[1] + 0.8 ** 3 * g[0], g[2]], np.float32))
    np.testing.assert_allclose(dba(g, k=2, alpha=3.0, block=2), want, rtol=1e-5, atol=1e-6)


def test_search_vectors_applies_query_expansion_and_grouping(dataset, tmp_path) -> None:
    """rerank=True is the search of the expanded query; group_by_product=True is the plain ranking grouped
    (a catalog of two photos a product, so that both change something)."""
    from productlens.pipeline.rerank import alpha_qe, group_by_product

    gallery = read_gallery(dataset["gallery"])
    train = read_labelled_csv(dataset["train"])
    items = gallery + [Item(id=100 + j, image=t.image, product_id=t.product_id) for j, t in enumerate(train[::4])]
    cat, _ = build_catalog(items, tmp_path / "cat", embedder=MODEL, progress=False)
    with cat:
        q = cat.embed_queries(read_queries(dataset["queries"])).vectors
        n = len(cat)
        plain_s, plain_i = cat.search_vectors(q, n, rerank=False)
        top_vectors = cat.store.vectors(plain_i[:, :2].ravel()).reshape(len(q), 2, -1)
        s, i = cat.store.search(alpha_qe(q, plain_s[:, :2], top_vectors, 3.0), n)
        qe_s, qe_i = cat.search_vectors(q, n, rerank=True)
        assert np.array_equal(qe_i, i) and not np.array_equal(qe_i, plain_i)
        valid = cat.store.ids()
        pids = np.array([md["product_id"] for md in cat.store.get(valid)])
        gs, gi = cat.search_vectors(q, n, rerank=False, group_by_product=True)
        want_s, want_i = group_by_product(plain_s, plain_i, valid, pids)
        assert np.array_equal(gi, want_i) and not np.array_equal(gi, plain_i)
        np.testing.assert_allclose(gs, want_s)
        for row in gi:  # each product's photos side by side: as many runs of one product as products
            seq = pids[np.searchsorted(valid, row)]
            assert 1 + np.count_nonzero(seq[1:] != seq[:-1]) == len(set(seq.tolist()))


def test_a_writer_of_a_rebuilt_catalog_is_refused_not_lost(dataset, tmp_path) -> None:
    """`index build --overwrite` swaps the folder: a catalog opened before wrote into the replaced folder,
    and its items were lost without a word. The build now waits for a writer's lock, and a writer opened
    before the swap is refused."""
    import threading
    import time

    gallery = read_gallery(dataset["gallery"])
    cat, _ = build_catalog(gallery[:2], tmp_path / "cat", embedder=MODEL, progress=False)
    done = {}
    with cat.writing():  # a long `index add` in progress
        builder = threading.Thread(target=lambda: done.update(cat=build_catalog(
            gallery, tmp_path / "cat", embedder=MODEL, overwrite=True, progress=False)[0]))
        builder.start()
        time.sleep(1.0)
        assert builder.is_alive()  # the swap waits for the writer
        cat.add(gallery[2:3], progress=False)
    builder.join()
    assert len(done["cat"]) == 4  # the new catalog, built from all four photos
    with pytest.raises(ProductLensError, match="was rebuilt .* open it again"):
        with cat.writing():
            pass
    cat.close()
    done["cat"].close()


def test_two_builds_to_one_new_folder_do_not_replace_each_other(dataset, tmp_path, monkeypatch) -> None:
    """Both had checked that the folder did not exist, and the second build swapped the first one's catalog out."""
    from productlens.pipeline import catalog_build

    gallery = read_gallery(dataset["gallery"])
    real = catalog_build.temporary_beside

    def other_build_meanwhile(path, **kw):  # the other process finishes while this one embeds
        monkeypatch.setattr(catalog_build, "temporary_beside", real)
        build_catalog(gallery[:2], path, embedder=MODEL, progress=False)[0].close()
        return real(path, **kw)

    monkeypatch.setattr(catalog_build, "temporary_beside", other_build_meanwhile)
    with pytest.raises(ProductLensError, match="exists \\(written while this one was built\\)"):
        build_catalog(gallery, tmp_path / "cat", embedder=MODEL, progress=False)
    monkeypatch.undo()
    with Catalog.open(tmp_path / "cat") as cat:
        assert len(cat.store) == 2  # the other build's catalog, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]


def test_a_catalog_swapped_by_a_rebuild_while_it_opens_is_read_whole(dataset, tmp_path, monkeypatch) -> None:
    """A search while `index build --overwrite` replaced the folder had read the old build's database and the
    new build's vectors ("segment 0 has float32 (5, 1280), expected (8, 1280)")."""
    import shutil

    from productlens.fileio import replace_dir
    from productlens.pipeline.store_spec import StoreSpec

    gallery = read_gallery(dataset["gallery"])
    build_catalog(gallery[:2], tmp_path / "cat", embedder=MODEL, progress=False)[0].close()
    build_catalog(gallery, tmp_path / "other", embedder=MODEL, progress=False)[0].close()
    real, swaps = StoreSpec.open, []

    def open_then_swap(self, folder):
        store = real(self, folder)
        if not swaps:  # the rebuild lands between the database and the vectors
            swaps.append(1)
            shutil.copytree(tmp_path / "other", tmp_path / "new")
            replace_dir(tmp_path / "new", tmp_path / "cat")
        return store

    monkeypatch.setattr(StoreSpec, "open", open_then_swap)
    with Catalog.open(tmp_path / "cat") as cat:
        assert swaps and len(cat) == len(gallery)
        hits = cat.search(read_queries(dataset["queries"])[0].image, k=len(gallery))
        assert len(hits) == len(gallery)


def test_write_arguments_are_checked_and_a_replaced_folder_refuses_writes(dataset, tmp_path) -> None:
    gallery = read_gallery(dataset["gallery"])
    cat, _ = build_catalog(gallery, tmp_path / "cat", embedder=MODEL, progress=False)
    n = len(cat)
    for bad, message in (("12", "ids must be a list"), (3, "ids must be a list"), ([1.9], "whole numbers"),
                         ([True], "whole numbers")):
        with pytest.raises(ProductLensError, match=message):  # "12" had removed items 1 and 2
            cat.remove(bad)
    with pytest.raises(ProductLensError, match="items must be a list"):
        cat.add(gallery[0].image)
    with pytest.raises(ProductLensError, match="items must be productlens.types.Item"):
        cat.add([gallery[0].image])
    assert len(cat) == n
    build_catalog(gallery[:2], tmp_path / "cat", embedder=MODEL, overwrite=True, progress=False)[0].close()
    with pytest.raises(ProductLensError, match="was rebuilt .* since it was opened here"):
        cat.add([dataclasses.replace(gallery[0], id=50)])  # had answered [] and written nowhere
    with pytest.raises(ProductLensError, match="was rebuilt"):
        cat.remove([gallery[0].id])
    cat.close()


def test_a_classifier_file_replaced_under_a_reused_inode_is_seen_as_new(tmp_path) -> None:
    """The classifier was reloaded when its config.json had another inode; a freed inode is handed out
    again at once (ext4), so a third attach could take the first one's and be missed."""
    from productlens.fileio import file_key as _file_key

    f = tmp_path / "config.json"
    assert _file_key(f) is None
    f.write_text('{"a": 1}')
    first = _file_key(f)
    os.utime(f, ns=(1, 1))
    assert _file_key(f) != first  # same inode, another modification time
    f.write_text('{"a": 12}')
    assert _file_key(f)[1] == first[1] and _file_key(f) != first  # same inode, another size

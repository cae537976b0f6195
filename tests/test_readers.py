"""Tests for productlens.data.readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from productlens.data.readers import (
    read_catalog,
    read_folder,
    read_gallery,
    read_labelled_csv,
    read_products_jsonl,
    read_queries,
)
from productlens.types import Box, BoxError, ProductLensError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A dataset folder with manifests in a sub-folder pointing to ../images."""
    _write(
        tmp_path / "retrieval" / "gallery.csv",
        "seller_img_id,img_path,product_id,source\n"
        "0,../images/a.jpg,7,shop\n"
        "1,../images/b.jpg,-1,web\n"
        "2,/abs/c.jpg,,shop\n",
    )
    _write(
        tmp_path / "retrieval" / "queries.csv",
        "user_img_id,img_path,bbox_x,bbox_y,bbox_w,bbox_h,product_id\n"
        "10,../images/q1.jpg,,,,,7\n"
        "11,../images/q2.jpg,1,2.5,30,40,\n",
    )
    return tmp_path


def test_read_gallery(manifests: Path) -> None:
    items = read_gallery(manifests / "retrieval" / "gallery.csv")
    assert [i.id for i in items] == [0, 1, 2]
    assert items[0].image == str((manifests / "images" / "a.jpg").resolve())
    assert [i.product_id for i in items] == [7, -1, None]
    assert items[2].image == str(Path("/abs/c.jpg").resolve())
    assert items[1].extra == {"source": "web"}


def test_read_gallery_without_product_id(tmp_path: Path) -> None:
    csv = _write(tmp_path / "g.csv", "seller_img_id,img_path\n5,x.png\n")
    (item,) = read_gallery(csv)
    assert item.id == 5 and item.product_id is None and item.image == str((tmp_path / "x.png").resolve())


def test_a_photo_reached_through_a_link_keeps_its_path(tmp_path: Path) -> None:
    """A linked photo was read as its target while the target existed and as the link while it was missing:
    a manifest changed when the photo came back, and a Ray build's rerun was refused as another catalog."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.jpg").symlink_to(tmp_path / "store" / "a.jpg")
    (tmp_path / "g.csv").write_text("seller_img_id,img_path\n1,sub/../a.jpg\n")
    there = read_gallery(tmp_path / "g.csv")[0].image
    (tmp_path / "store" / "a.jpg").rename(tmp_path / "store" / "away.jpg")
    assert there == read_gallery(tmp_path / "g.csv")[0].image == str(tmp_path / "a.jpg")


def test_read_queries(manifests: Path) -> None:
    q1, q2 = read_queries(manifests / "retrieval" / "queries.csv")
    assert q1.box is None and q1.product_id == 7 and q1.id == 10
    assert q2.box == Box(1, 2.5, 30, 40) and q2.product_id is None
    assert q2.image == str((manifests / "images" / "q2.jpg").resolve())


@pytest.mark.parametrize("sep", [";", "\t"])
def test_spreadsheet_separators_are_read_from_the_header(manifests: Path, sep: str) -> None:
    """Spreadsheets in many locales save csv with semicolons (or tabs): the header says which."""
    for name in ("gallery.csv", "queries.csv"):
        comma = (manifests / "retrieval" / name).read_text()
        (manifests / "retrieval" / f"sep_{name}").write_text(comma.replace(",", sep))
    assert read_gallery(manifests / "retrieval" / "sep_gallery.csv") == \
        read_gallery(manifests / "retrieval" / "gallery.csv")
    assert read_queries(manifests / "retrieval" / "sep_queries.csv") == \
        read_queries(manifests / "retrieval" / "queries.csv")
    labelled = _write(manifests / "l.csv", f"image{sep}product_id\na;b.jpg{sep}3\n" if sep == "\t"
                      else f"image{sep}product_id\n\"a;b.jpg\"{sep}3\n")
    assert [(it.image, it.product_id) for it in read_labelled_csv(labelled)] == \
        [(str((manifests / "a;b.jpg").resolve()), 3)]


def test_a_comma_csv_with_semicolons_in_its_values_stays_a_comma_csv(tmp_path: Path) -> None:
    csv = _write(tmp_path / "g.csv", "seller_img_id,img_path\n5,x;y.png\n")
    (item,) = read_gallery(csv)
    assert item.id == 5 and item.image == str((tmp_path / "x;y.png").resolve())


def test_missing_column_names_existing_columns(tmp_path: Path) -> None:
    csv = _write(tmp_path / "bad.csv", "id,path\n0,a.jpg\n")
    with pytest.raises(ProductLensError, match=r"seller_img_id.*id, path"):
        read_gallery(csv)
    with pytest.raises(ProductLensError, match=r"missing column\(s\) image, product_id"):
        read_labelled_csv(csv)


def test_a_row_without_image_is_skipped_and_named(tmp_path: Path, caplog) -> None:
    """A catalog row that names no photo is left out with one warning naming its line (a batch reports
    and goes on); a query keeps its row and is reported when embedded; training rows stay strict."""
    csv = _write(tmp_path / "g.csv", "seller_img_id,img_path\n0,a.jpg\n1,\n2, \n3,d.jpg\n")
    with caplog.at_level("WARNING"):
        assert [i.id for i in read_gallery(csv)] == [0, 3]
    assert "skipped 2 item(s)" in caplog.text and "g.csv, lines 3, 4: missing image path" in caplog.text
    with pytest.raises(ProductLensError, match=r"empty.csv, line 2: missing image path; no item of the catalog"):
        read_gallery(_write(tmp_path / "empty.csv", "seller_img_id,img_path\n0,\n"))

    labelled = _write(tmp_path / "l.csv", "image,product_id\na.jpg,4\n,5\nc.jpg,6\n")
    skipped: list[str] = []
    assert [(i.id, i.product_id) for i in read_catalog(labelled, skipped=skipped)] == [(0, 4), (2, 6)]  # row ids
    assert skipped == [f"{labelled}, line 3: missing image path"]
    odd = _write(tmp_path / "odd.csv", "image,product_id\na.jpg,4\n,abc\n")  # a row left out is not read further
    assert [i.id for i in read_catalog(odd)] == [0]

    from productlens.pipeline.manifest import read_manifest
    manifest = _write(tmp_path / "m.csv", "id,image,product_id\n10,a.jpg,1\n11,,2\n")
    skipped = []
    assert [i.id for i in read_manifest(manifest, skipped=skipped)] == [10]  # as the local engine reads it
    assert skipped == [f"{manifest}, line 3: missing image path"]
    with pytest.raises(ProductLensError, match=r"l.csv, line 3: missing image path"):
        read_labelled_csv(labelled)  # training photos

    q = _write(tmp_path / "q.csv", "user_img_id,img_path,bbox_x,bbox_y,bbox_w,bbox_h\n0,a.jpg,,,,\n1,,,,,\n")
    whole, blank = read_queries(q)
    assert whole.box is None and blank.id == 1
    from productlens.data.images import load_image
    from productlens.types import ImageError
    with pytest.raises(ImageError, match=r"q.csv, line 3: missing image path"):
        load_image(blank.image, box=blank.box)
    with pytest.raises(ImageError, match="empty path"):
        load_image("")


def test_products_without_shop_image_are_skipped(tmp_path: Path, caplog) -> None:
    lines = [{"product_id": 7, "title": "Apple", "shop_image": "img/7.jpg"}, {"product_id": 8, "title": "Milk"}]
    path = _write(tmp_path / "products.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n")
    with caplog.at_level("WARNING"):
        assert [i.id for i in read_catalog(path)] == [7]
    assert "products.jsonl, product 8: no 'shop_image'" in caplog.text
    assert set(read_products_jsonl(path)) == {7, 8}  # its title still serves text search


def test_bad_values(tmp_path: Path) -> None:
    csv = _write(tmp_path / "q.csv", "user_img_id,img_path,bbox_x,bbox_y,bbox_w,bbox_h\n0,a.jpg,1,2,,\n"
                 "1,b.jpg,nan,0,10,10\n2,c.jpg,,,,\n")
    bad, nan, whole = read_queries(csv)  # a bad box keeps its row: the batch reports that query and goes on
    for item, line in ((bad, 2), (nan, 3)):
        with pytest.raises(BoxError, match=f"q.csv, line {line}: bad box"):
            item.box.clip(100, 100)
    assert whole.box is None
    csv = _write(tmp_path / "g.csv", "seller_img_id,img_path\nfoo,a.jpg\n")
    with pytest.raises(ProductLensError, match="seller_img_id must be an integer"):
        read_gallery(csv)
    for value in ("1e3", "1_000", "\u0663", "1.5"):  # Python's int() or float() took the first three
        csv = _write(tmp_path / "g.csv", f"seller_img_id,img_path,product_id\n1,a.jpg,{value}\n")
        with pytest.raises(ProductLensError, match=f"line 2: product_id must be an integer, got '{value}'"):
            read_gallery(csv)
    csv = _write(tmp_path / "g.csv", "seller_img_id,img_path,product_id\n1,a.jpg,3.0\n2,b.jpg, 4 \n")
    assert [g.product_id for g in read_gallery(csv)] == [3, 4]  # as pandas and hand edits write them
    csv = _write(tmp_path / "g.csv", "seller_img_id,img_path,product_id\n1,a.jpg,3\n2,b,c.jpg,4\n3,d.jpg,5,\n")
    with pytest.raises(ProductLensError, match="g.csv, line 3: more values than the header's 3 columns"):
        read_gallery(csv)  # an unquoted comma: the values of line 3 are not under their columns


def test_products_jsonl_shop_image_is_one_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", '{"product_id": 1, "shop_image": ["a.jpg", "b.jpg"]}\n')
    with pytest.raises(ProductLensError, match="line 1: shop_image must be one path \\(a string\\), got list"):
        read_products_jsonl(path)


def test_read_labelled_csv(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "data" / "train.csv",
        "image,product_id,product_name,category_id,category_name\n"
        "img/1.jpg,3,Oat milk,2,Milk\n"
        "https://example.com/2.jpg,4.0,Juice,1,Juice\n",
    )
    a, b = read_labelled_csv(csv)
    assert (a.id, a.product_id, a.title, a.category) == (0, 3, "Oat milk", "Milk")
    assert a.image == str((tmp_path / "data" / "img" / "1.jpg").resolve())
    assert a.extra == {"category_id": "2"}
    assert (b.id, b.product_id, b.image) == (1, 4, "https://example.com/2.jpg")


def test_read_labelled_csv_text_labels_and_custom_columns(tmp_path: Path) -> None:
    csv = _write(tmp_path / "l.csv", "path,brand,title\na.jpg,zeta,\nb.jpg,alpha,Alpha can\nc.jpg,,\n")
    items = read_labelled_csv(csv, label="brand", image_column="path")
    assert [i.product_id for i in items] == [1, 0, None]
    assert [i.title for i in items] == ["zeta", "Alpha can", ""]
    assert items[0].extra == {"brand": "zeta"}
    unlabelled = read_labelled_csv(csv, label=None, image_column="path")
    assert all(i.product_id is None for i in unlabelled)


def test_read_folder(tmp_path: Path, caplog) -> None:
    for rel in ["b_cat/2.jpg", "b_cat/1.PNG", "a_cat/x.webp", "a_cat/notes.txt", "a_cat/.hidden.jpg"]:
        _write(tmp_path / "root" / rel, "")
    _write(tmp_path / "root" / "top.jpg", "")
    with caplog.at_level("WARNING"):
        items = read_folder(tmp_path / "root")
    assert [(Path(i.image).name, i.category, i.product_id) for i in items] == [
        ("x.webp", "a_cat", 0),
        ("1.PNG", "b_cat", 1),
        ("2.jpg", "b_cat", 1),
    ]
    assert [i.id for i in items] == [0, 1, 2]
    # a labelled set cannot train on a photo with no category folder: left out, and said so
    assert "1 photo(s)" in caplog.text and "top.jpg" in caplog.text and "no category folder" in caplog.text
    with pytest.raises(ProductLensError, match="no category folder"):
        read_folder(tmp_path / "root" / "a_cat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProductLensError, match="no images found in the layout root/<category>/<image>"):
        read_folder(tmp_path / "empty")


def test_read_folder_says_which_deeper_folders_it_does_not_read(tmp_path: Path, caplog) -> None:
    """A tree one level too deep (root/Fruit/Apple/x.jpg) is an error that names it, not 'no images';
    beside photos it reads, such folders are named in a warning rather than dropped silently."""
    for rel in ["Fruit/Apple/1.jpg", "Fruit/Pear/2.jpg", "Dairy/Milk/3.jpg"]:
        _write(tmp_path / "deep" / rel, "")
    with pytest.raises(ProductLensError, match=r"3 folder\(s\) inside the category folders .*first Dairy/Milk"):
        read_catalog(tmp_path / "deep")
    _write(tmp_path / "deep" / "Fruit" / "0.jpg", "")
    with caplog.at_level("WARNING"):
        items = read_folder(tmp_path / "deep")
    assert [Path(i.image).name for i in items] == ["0.jpg"] and "are not read" in caplog.text


def test_a_catalog_folder_takes_the_photos_at_its_top_as_items_of_their_own(tmp_path: Path) -> None:
    for rel in ["shelf/b.jpg", "shelf/a.jpg", "z.jpg", "m.png", "notes.txt", ".hidden.jpg"]:
        _write(tmp_path / "root" / rel, "")
    items = read_catalog(tmp_path / "root")
    assert [(Path(i.image).name, i.category, i.product_id) for i in items] == [
        ("m.png", "", None),  # no folder: no product, each photo its own item
        ("z.jpg", "", None),
        ("a.jpg", "shelf", 0),
        ("b.jpg", "shelf", 0),
    ]
    assert [i.id for i in items] == [0, 1, 2, 3]
    flat = read_catalog(tmp_path / "root" / "shelf")  # a flat folder of seller photos is a catalog
    assert [(Path(i.image).name, i.product_id) for i in flat] == [("a.jpg", None), ("b.jpg", None)]
    (tmp_path / "bare").mkdir()
    with pytest.raises(ProductLensError, match="no images found in photos at its top"):
        read_catalog(tmp_path / "bare")


def test_products_jsonl_and_catalog_detection(tmp_path: Path, manifests: Path) -> None:
    records = [
        {"product_id": 0, "name": "apple", "title": "Apple", "category_name": "Fruit", "shop_image": "img/0.jpg"},
        {"product_id": 1, "name": "milk", "title": "Milk", "category_name": "Dairy", "shop_image": "img/1.jpg"},
    ]
    path = _write(tmp_path / "shop" / "products.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    products = read_products_jsonl(path)
    assert sorted(products) == [0, 1]
    assert products[1]["shop_image"] == str((tmp_path / "shop" / "img" / "1.jpg").resolve())
    items = read_catalog(path)
    assert [(i.id, i.product_id, i.title, i.category) for i in items] == [
        (0, 0, "Apple", "Fruit"),
        (1, 1, "Milk", "Dairy"),
    ]
    assert items[0].extra == {"name": "apple"}

    assert len(read_catalog(manifests / "retrieval")) == 3  # a folder holding gallery.csv
    assert len(read_catalog(manifests / "retrieval" / "gallery.csv")) == 3
    labelled = _write(tmp_path / "l.csv", "image,title\na.jpg,A\n")
    (item,) = read_catalog(labelled)
    assert item.product_id is None and item.title == "A"
    _write(tmp_path / "tree" / "cat" / "a.jpg", "")
    assert read_catalog(tmp_path / "tree")[0].category == "cat"


def test_catalog_errors(tmp_path: Path, manifests: Path) -> None:
    with pytest.raises(ProductLensError, match="read_queries"):
        read_catalog(manifests / "retrieval" / "queries.csv")
    with pytest.raises(ProductLensError, match="unknown catalog format"):
        read_catalog(_write(tmp_path / "x.txt", "hi"))
    with pytest.raises(ProductLensError, match="no such catalog"):
        read_catalog(tmp_path / "missing.csv")
    with pytest.raises(ProductLensError, match="line 1: invalid JSON"):
        read_products_jsonl(_write(tmp_path / "bad.jsonl", "{nope\n"))


@pytest.mark.shared
def test_shared_grocery_retrieval_vpr(shared_data: Path) -> None:
    folder = shared_data / "grocery" / "retrieval-vpr"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    gallery = read_gallery(folder / "gallery.csv")
    queries = read_queries(folder / "queries.csv")
    assert len(gallery) == 2721 == 81 + 2640
    assert len(queries) == 296
    assert all(q.box is None for q in queries)
    missing = [i.image for i in gallery + queries if not Path(i.image).is_file()]
    assert not missing, missing[:5]


def test_product_ids_must_be_integers_and_bad_bytes_are_named(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("image,product_id\na.jpg,10\nb.jpg,20\nc.jpg,x1\n")
    with pytest.raises(ProductLensError, match=r"mixed.csv, line 4: product_id must be an integer, got 'x1'"):
        read_labelled_csv(mixed)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,product_id\ncaf\xe9.jpg,1\n".encode("latin-1"))
    with pytest.raises(ProductLensError, match="latin.csv: not UTF-8 text"):
        read_labelled_csv(latin)
    nul = tmp_path / "nul.csv"
    nul.write_text("image,product_id\na\x00b.jpg,1\n")
    with pytest.raises(ProductLensError, match="nul.csv"):
        read_labelled_csv(nul)
    long = tmp_path / "long.csv"
    long.write_text("image,product_id\n" + "a" * 200_000 + ".jpg,1\n")
    with pytest.raises(ProductLensError, match="long.csv, line 2: cannot read it as csv"):
        read_labelled_csv(long)
    with pytest.raises(ProductLensError, match="not UTF-8"):
        read_catalog(latin)



@pytest.mark.parametrize("rows, why", [
    ("5,a.jpg\n-5,b.jpg\n", "line 3: seller_img_id must be from 0 to 2..63 - 1, got -5"),
    ("5,a.jpg\n6,b.jpg\n5,c.jpg\n", "line 4: seller_img_id 5 is on line 2 too")])
def test_gallery_ids_are_checked_where_they_are_read(tmp_path, rows, why) -> None:
    """A negative or repeated id was refused only after every photo had been embedded, without its line."""
    (tmp_path / "g.csv").write_text("seller_img_id,img_path\n" + rows)
    with pytest.raises(ProductLensError, match=why):
        read_gallery(tmp_path / "g.csv")


def test_a_folder_given_for_a_csv_is_named_as_one(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(ProductLensError, match="train: a folder, where a csv file was expected"):
        read_gallery(tmp_path / "train")
    with pytest.raises(ProductLensError, match="nowhere.csv: csv file not found"):
        read_gallery(tmp_path / "nowhere.csv")


@pytest.mark.parametrize("pid", ["-1", str(2 ** 63)])
def test_products_jsonl_ids_out_of_range_are_named_at_their_line(tmp_path, pid) -> None:
    from productlens.data.readers import read_products_jsonl

    (tmp_path / "p.jsonl").write_text('{"product_id": 1, "title": "a"}\n{"product_id": ' + pid + ', "title": "b"}\n')
    with pytest.raises(ProductLensError, match="p.jsonl, line 2: product_id must be from 0 to 2\\*\\*63 - 1"):
        read_products_jsonl(tmp_path / "p.jsonl")


def test_read_folder_names_what_it_leaves_out(tmp_path: Path, caplog) -> None:
    """.jfif/.jpe are JPEGs (browser downloads); a folder with no photo and files that are not photos are
    said, not dropped unsaid (a whole category had vanished from training)."""
    for rel in ["a/1.jfif", "a/2.JPE", "b/1.jpg", "b/notes.txt", "c/readme.md"]:
        _write(tmp_path / "root" / rel, "")
    (tmp_path / "root" / "empty").mkdir()
    (tmp_path / "root" / "__MACOSX" / "a").mkdir(parents=True)  # a Mac zip's resource forks: not a category
    with caplog.at_level("WARNING"):
        items = read_folder(tmp_path / "root")
    assert [(Path(i.image).name, i.category) for i in items] == [("1.jfif", "a"), ("2.JPE", "a"), ("1.jpg", "b")]
    assert "2 file(s) in the category folders" in caplog.text and "first b/notes.txt" in caplog.text
    assert "2 category folder(s)" in caplog.text and "first c" in caplog.text and "__MACOSX" not in caplog.text


def test_image_files_follows_linked_folders_once(tmp_path: Path) -> None:
    from productlens.data.readers import image_files

    _write(tmp_path / "real" / "x.jpg", "")
    _write(tmp_path / "photos" / "a.jpg", "")
    (tmp_path / "photos" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "photos" / "loop").symlink_to(tmp_path / "photos", target_is_directory=True)
    got = [f.relative_to(tmp_path / "photos").as_posix() for f in image_files(tmp_path / "photos")]
    assert got == ["a.jpg", "linked/x.jpg"]


def test_training_rows_need_their_label_and_paths_from_windows_or_a_mac_are_found(tmp_path: Path) -> None:
    import unicodedata

    _write(tmp_path / "img" / "sub" / "a.jpg", "")
    _write(tmp_path / "img" / unicodedata.normalize("NFD", "crème.jpg"), "")
    csv = _write(tmp_path / "train.csv", "image,product_id\nimg\\sub\\a.jpg,1\nimg/crème.jpg,2\n")
    items = read_labelled_csv(csv, need_label=True)
    assert [Path(i.image).name for i in items] == ["a.jpg", unicodedata.normalize("NFD", "crème.jpg")]
    assert all(Path(i.image).is_file() for i in items)
    _write(csv, "image,product_id\nimg/sub/a.jpg,1\nimg/sub/a.jpg,\n")
    assert [i.product_id for i in read_labelled_csv(csv)] == [1, None]  # a catalog's unlabelled row
    with pytest.raises(ProductLensError, match="line 3: the product_id cell is empty"):
        read_labelled_csv(csv, need_label=True)

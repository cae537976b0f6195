"""Labelled-set readers: csv, folder per category, Shopee layout; inputs to predict; label checks."""

from __future__ import annotations

import pytest

from helpers import product_photo
from productlens.data.labelled import (LabelError, check_known, check_trainable, read_inputs,
                                       read_labelled)
from productlens.types import ProductLensError


def _photo(path, product=0, variant=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    product_photo(product, variant, shop=False, size=48).save(path)


def test_csv_with_label_and_parent_columns(tmp_path) -> None:
    _photo(tmp_path / "img" / "a.jpg")
    _photo(tmp_path / "img" / "b.jpg", 1)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.csv").write_text(
        "image,category,dept,note\n../img/a.jpg,07,food,x\n../img/b.jpg,12,home,y\n")
    ds = read_labelled(tmp_path / "sub" / "t.csv", label="category", parents=["dept"])
    assert ds.labels == ["07", "12"]  # text kept as written
    assert ds.parents == {"dept": ["food", "home"]}
    assert ds.items[0].image == str((tmp_path / "img" / "a.jpg").resolve())
    assert ds.items[1].extra == {"note": "y"}
    assert ds.subset([1]).labels == ["12"] and ds.subset([1]).parents["dept"] == ["home"]


def test_csv_errors_name_the_problem(tmp_path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("image,category\na.jpg,1\n")
    with pytest.raises(ProductLensError, match="missing column.*brand"):
        read_labelled(csv, label="brand")
    with pytest.raises(ProductLensError, match="missing column.*dept"):
        read_labelled(csv, label="category", parents=["dept"])
    with pytest.raises(LabelError, match="name the label column"):
        read_labelled(csv)
    csv.write_text("image,category\na.jpg,1\nb.jpg,\n")
    with pytest.raises(LabelError, match="line 3: empty 'category'"):
        read_labelled(csv, label="category")
    with pytest.raises(ProductLensError, match="no such file"):
        read_labelled(tmp_path / "nope.csv", label="x")


def test_folder_and_shopee_layouts(tmp_path) -> None:
    for cat in ("00", "01"):
        for v in range(2):
            _photo(tmp_path / "shopee" / "train" / cat / f"{cat}_{v}.jpg", int(cat), v)
    _photo(tmp_path / "shopee" / "test" / "t1.jpg")
    _photo(tmp_path / "shopee" / "test" / "t2.jpg", 1)
    (tmp_path / "shopee" / "test.csv").write_text("filename,category\nt2.jpg,43\nt1.jpg,43\n")
    ds = read_labelled(tmp_path / "shopee")
    assert ds.labels == ["00", "00", "01", "01"] and ds.label == "category"
    assert read_labelled(tmp_path / "shopee" / "train", label="cat").labels == ds.labels
    inputs = read_inputs(tmp_path / "shopee")
    assert inputs.shopee and inputs.names == ["t2.jpg", "t1.jpg"]
    assert inputs.items[0].image.endswith("test/t2.jpg")
    with pytest.raises(LabelError, match="parent columns need a csv"):
        read_labelled(tmp_path / "shopee", parents=["x"])


def test_read_inputs_folder_csv_and_single_image(tmp_path) -> None:
    _photo(tmp_path / "in" / "a.jpg")
    _photo(tmp_path / "in" / "deeper" / "b.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    inputs = read_inputs(tmp_path / "in")
    assert inputs.names == ["a.jpg", "deeper/b.png"] and not inputs.shopee
    (tmp_path / "q.csv").write_text("filename\nin/a.jpg\n")
    assert read_inputs(tmp_path / "q.csv").items[0].image == str((tmp_path / "in" / "a.jpg").resolve())
    (tmp_path / "bad.csv").write_text("title\nx\n")
    with pytest.raises(ProductLensError, match="no image column"):
        read_inputs(tmp_path / "bad.csv")
    assert read_inputs(tmp_path / "in" / "a.jpg").names == ["a.jpg"]
    with pytest.raises(ProductLensError, match="no such image"):
        read_inputs(tmp_path / "missing.jpg")


def test_read_inputs_reports_a_csv_row_without_image(tmp_path) -> None:
    _photo(tmp_path / "in" / "a.jpg")
    (tmp_path / "q.csv").write_text("image,note\nin/a.jpg,x\n  ,no photo\nin/b.jpg,y\n")
    inputs = read_inputs(tmp_path / "q.csv")
    assert inputs.names == ["in/a.jpg", "in/b.jpg"] and [it.id for it in inputs.items] == [0, 1]
    assert inputs.skipped == [f"{tmp_path / 'q.csv'}, line 3: missing image path"]
    with pytest.raises(ProductLensError, match="line 3: missing image path"):  # training stays strict
        read_labelled(tmp_path / "q.csv", label="note")


def test_label_checks(tmp_path) -> None:
    for name in ("a", "b", "c", "d", "e"):
        _photo(tmp_path / f"{name}.jpg")
    (tmp_path / "t.csv").write_text("image,c\na.jpg,x\nb.jpg,x\nc.jpg,y\nd.jpg,y\ne.jpg,z\n")
    ds = read_labelled(tmp_path / "t.csv", label="c")
    with pytest.raises(LabelError, match=r"1 class\(es\).*fewer than 2 images: 'z' \(1\)"):
        check_trainable(ds)
    check_trainable(ds.subset([0, 1, 2, 3]))
    with pytest.raises(LabelError, match="need at least 2 classes"):
        check_trainable(ds.subset([0, 1]))
    with pytest.raises(LabelError, match="never seen in training: 'z'"):
        check_known(ds, ["x", "y"])
    check_known(ds.subset([0, 2]), ["x", "y"])


def test_names_that_are_not_utf8_are_skipped_with_a_warning(tmp_path, caplog) -> None:
    """A category folder or a photo named in another encoding could not be stored as a label or
    written to a csv (every later prediction crashed on the label): it is left out, and named."""
    import os

    root = os.fsencode(str(tmp_path / "set"))
    for folder in (b"/apples", b"/caf\xe9"):
        os.makedirs(root + folder)
        for v in range(2):
            product_photo(v, v, shop=False).save(os.fsdecode(root + folder + b"/%d.jpg" % v))
    product_photo(0, 5, shop=False).save(os.fsdecode(root + b"/apples/\xff.jpg"))
    data = read_labelled(tmp_path / "set")
    assert sorted(set(data.labels)) == ["apples"] and len(data.items) == 2
    assert "caf\\xe9: the name is not valid UTF-8" in caplog.text and "\\xff.jpg" in caplog.text
    inputs = read_inputs(tmp_path / "set")
    assert len(inputs.items) == 2 and all("\\udc" not in n for n in inputs.names)


def test_repeated_rows_are_said_and_a_mac_zip_folder_keeps_the_shopee_layout(tmp_path, caplog) -> None:
    _photo(tmp_path / "a.jpg")
    _photo(tmp_path / "b.jpg", 1)
    (tmp_path / "t.csv").write_text("image,category\na.jpg,x\nb.jpg,y\n./a.jpg,x\n")
    with caplog.at_level("WARNING"):
        ds = read_labelled(tmp_path / "t.csv", label="category")
    assert len(ds.items) == 3 and "1 row(s) name a photo" in caplog.text and "line 4 repeats line 2" in caplog.text
    for cat in ("00", "01"):
        _photo(tmp_path / "shopee" / "train" / cat / "p.jpg", int(cat))
    (tmp_path / "shopee" / "__MACOSX" / "train").mkdir(parents=True)
    assert read_labelled(tmp_path / "shopee").labels == ["00", "01"]

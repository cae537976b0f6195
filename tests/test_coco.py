"""COCO reading: duplicate categories, bad numbers, shape errors, crowd regions, names outside the json's folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import write_coco
from productlens.data.coco import read_coco
from productlens.types import ProductLensError


def _variant(tmp_path: Path, change) -> Path:
    """The tiny set (4 images, categories 7 square and 9 disc) with one change made to its json."""
    path = write_coco(tmp_path, "set", 4)
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("categories, message", [
    ([{"id": 7, "name": "square"}, {"id": 9, "name": "disc"}, {"id": 7, "name": "other"}],
     "category id 7 is used by both 'square' and 'other'"),
    ([{"id": 7, "name": "thing"}, {"id": 9, "name": "thing"}],
     "category name 'thing' is used by both category ids 7 and 9"),
])
def test_duplicate_category_ids_and_names_are_errors(tmp_path, categories, message):
    path = _variant(tmp_path, lambda d: d.update(categories=categories))
    with pytest.raises(ProductLensError, match=message):
        read_coco(path)
    with pytest.raises(ProductLensError, match=message):  # a detector's category list is checked alike
        read_coco(write_coco(tmp_path, "other", 1), categories=categories)


@pytest.mark.parametrize("bbox, reason", [
    ([float("nan"), 10, 20, 20], "bbox with NaN or infinite values"),  # json.dumps writes NaN, json.loads reads it
    ([10, 10, float("inf"), 10], "bbox with NaN or infinite values"),
    (["nan", 10, 20, 20], "bbox is not a list of 4 numbers"),
    ("1299", "bbox is not a list of 4 numbers"),  # not [1, 2, 9, 9]
    ([1, 2, 3], "bbox is not a list of 4 numbers"),
    ([True, 2, 30, 30], "bbox is not a list of 4 numbers"),
])
def test_non_finite_and_non_numeric_boxes_are_skipped_and_reported(tmp_path, bbox, reason):
    path = _variant(tmp_path, lambda d: d["annotations"][0].update(bbox=bbox))
    data = read_coco(path)
    assert data.n_boxes == 5 and np.isfinite(np.concatenate([im.boxes for im in data.images])).all()
    assert f"1 annotation(s) skipped: {reason}" in "\n".join(data.problems)
    assert "(annotation 1)" in "\n".join(data.problems)


def test_non_numeric_image_size_is_reported_as_such(tmp_path):
    path = _variant(tmp_path, lambda d: d["images"][0].update(width="wide"))
    data = read_coco(path)
    text = "\n".join(data.problems)
    assert "1 image record(s) skipped: 'width' and 'height' must be whole numbers of pixels" in text
    assert 'image 1 photos/set_0.jpg: "wide" x 120' in text and "needs 'id'" not in text
    assert "its image record was skipped (annotation 1)" in text  # its boxes go with it, said so
    assert [im.id for im in data.images] == [2, 3, 4]


@pytest.mark.parametrize("key, value", [("images", 5), ("images", {"a": 1}), ("images", "photos"),
                                        ("annotations", 5), ("annotations", {"a": 1}), ("categories", "thing")])
def test_keys_that_are_not_lists_are_errors(tmp_path, key, value):
    path = _variant(tmp_path, lambda d: d.update({key: value}))
    with pytest.raises(ProductLensError, match=f"set.json: '{key}' must be a list of objects"):
        read_coco(path)


def test_duplicate_image_id_with_an_absolute_first_name(tmp_path):
    first = str((tmp_path / "photos" / "set_0.jpg").resolve())

    def change(d):
        d["images"][0]["file_name"] = first
        d["images"].append({"id": 1, "file_name": "photos/other.jpg"})
    path = _variant(tmp_path, change)
    with pytest.raises(ProductLensError, match=f"image id 1 is used by both {first} and photos/other.jpg"):
        read_coco(path)


def test_crowd_regions_are_reported_and_kept_apart(tmp_path):
    def change(d):
        for a in d["annotations"]:
            if a["image_id"] in (1, 2):  # image 1: only a crowd region; image 2: a crowd region beside a box
                a["iscrowd"] = int(a["image_id"] == 1 or a["id"] == 2)
    path = _variant(tmp_path, change)
    raw = json.loads(path.read_text())["annotations"]
    data = read_coco(path)
    text = "\n".join(data.problems)
    assert "2 annotation(s) skipped: crowd region (iscrowd=1)" in text and "(annotation 1, 2)" in text
    assert "1 image(s) with only crowd regions, not used as background in training: set_0.jpg" in text
    assert "kept as background" not in text
    im1, im2 = data.images[:2]
    assert len(im1.boxes) == 0 and len(im2.boxes) == 1 and len(im2.crowd) == 1
    x, y, w, h = raw[0]["bbox"]
    assert im1.crowd.tolist() == [[x, y, x + w, y + h]]
    assert im1.crowd_labels.tolist() == [[7, 9].index(raw[0]["category_id"])]  # an index, like labels
    assert data.n_boxes == 4 and all(len(im.crowd) == 0 for im in data.images[2:])


def test_a_detection_on_a_crowd_region_is_neither_right_nor_wrong(tmp_path):
    from productlens.eval.detection import coco_map
    from productlens.models.detectors.runtime import Detection
    from productlens.types import Box

    def change(d):
        for a in d["annotations"]:
            a["iscrowd"] = int(a["image_id"] == 2 and a["id"] != min(b["id"] for b in d["annotations"]
                                                                      if b["image_id"] == 2))
    data = read_coco(_variant(tmp_path, change))
    im = next(i for i in data.images if len(i.crowd))

    def det(box, label):
        x0, y0, x1, y1 = (float(v) for v in box)
        return Detection(Box(x0, y0, x1 - x0, y1 - y0), data.names[label], 0.9, int(label))

    right = {i.id: [det(b, lab) for b, lab in zip(i.boxes, i.labels)] for i in data.images}
    on_crowd = {**right, im.id: right[im.id] + [det(b, lab) for b, lab in zip(im.crowd, im.crowd_labels)]}
    assert coco_map(data, right)["map50"] == pytest.approx(1.0)
    assert coco_map(data, on_crowd)["map50"] == pytest.approx(1.0)  # no false positive on the ignored region
    from productlens.eval.detection import match_categories

    swapped, _ = match_categories(data, ["disc", "square"])  # a detector that knows the classes in another order
    im2 = next(i for i in swapped.images if i.id == im.id)
    assert [swapped.names[lab] for lab in im2.crowd_labels] == [data.names[lab] for lab in im.crowd_labels]


def test_map_averages_iou_thresholds_and_per_class_ap_is_at_half(tmp_path):
    """Every box found, each shifted sideways to IoU 0.62 with its truth: right at IoU 0.5, 0.55 and 0.6 and
    wrong at the seven thresholds above, so mAP@0.5 = 1, mAP@[.5:.95] = 3/10, and each class's AP (at 0.5) 1."""
    from productlens.eval.detection import coco_map
    from productlens.models.detectors.runtime import Detection
    from productlens.types import Box

    data = read_coco(_variant(tmp_path, lambda d: None))
    shift = (1 - 0.62) / (1 + 0.62)  # a sideways shift of dx: IoU (w - dx) / (w + dx)
    preds = {}
    for im in data.images:
        preds[im.id] = []
        for (x0, y0, x1, y1), lab in zip(im.boxes.tolist(), im.labels.tolist()):
            dx = shift * (x1 - x0)
            preds[im.id].append(Detection(Box(x0 + dx, y0, x1 - x0, y1 - y0), data.names[lab], 0.9, int(lab)))
    assert data.n_boxes >= 2
    m = coco_map(data, preds)
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(0.3)
    assert m["per_class"] and all(v == pytest.approx(1.0) for v in m["per_class"].values())


@pytest.mark.parametrize("name", ["ABS", "../elsewhere/set_0.jpg", "photos/../../set_0.jpg"])
def test_file_names_outside_the_json_folder_are_skipped_and_reported(tmp_path, name):
    name = str((tmp_path / "photos" / "set_0.jpg").resolve()) if name == "ABS" else name
    path = _variant(tmp_path, lambda d: d["images"][0].update(file_name=name))
    data = read_coco(path)
    assert [im.id for im in data.images] == [2, 3, 4]
    text = "\n".join(data.problems)
    assert "1 image record(s) skipped: 'file_name' must be relative to the json's folder" in text
    assert f"(image 1 {name})" in text and "its image record was skipped" in text


def test_relative_names_that_stay_inside_are_kept(tmp_path):
    path = _variant(tmp_path, lambda d: d["images"][0].update(file_name="./photos/../photos/set_0.jpg"))
    data = read_coco(path)
    assert len(data.images) == 4 and not data.problems


def test_classes_tested_but_never_trained_are_named(tmp_path):
    from productlens.eval.detection import _untrained

    test = read_coco(write_coco(tmp_path / "t", "test", 4, seed=2))
    train = read_coco(_variant(tmp_path, lambda d: d.update(annotations=[a for a in d["annotations"]
                                                                        if a["category_id"] == 7])))
    assert _untrained(train, test) == [f"{test.path}: 1 class(es) with test boxes but no training box, scored all "
                                       "the same: disc"]
    assert _untrained(test, test) == []



def test_a_json_with_a_bom_and_windows_paths_is_read(tmp_path):
    """Saved by a Windows tool: a UTF-8 byte-order mark, and file names with backslashes."""
    path = _variant(tmp_path, lambda d: d["images"][0].update(file_name=d["images"][0]["file_name"].replace("/", "\\")))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = read_coco(path)
    assert len(data.images) == 4 and not data.problems and all(im.path.is_file() for im in data.images)

"""Detection: NMS, targets, COCO reading and its bad input, the ONNX contract, training end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import DET_CLASSES, detection_photo, write_coco
from productlens.data.coco import read_coco
from productlens.data.images import load_image
from productlens.models.detectors import load_detector
from productlens.models.detectors.fcos import IGNORE, HeadConfig, assign, locations
from productlens.models.detectors.nms import batched_nms, iou_matrix, nms
from productlens.models.detectors.runtime import DetectorSpec, letterbox
from productlens.types import ProductLensError


def test_iou_and_nms():
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    iou = iou_matrix(a, a)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 2] == 0 and np.allclose(np.diag(iou), 1)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 1, 10, 11]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]
    # boxes of different classes never suppress each other
    assert sorted(batched_nms(boxes, scores, np.array([0, 1, 0, 0]), 0.5).tolist()) == [1, 2, 3]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).size == 0


def test_assign_levels_and_distances():
    cfg = HeadConfig()
    shapes = [(16, 16), (8, 8), (4, 4)]  # a 128 x 128 input
    small = np.array([[8, 8, 40, 40]], np.float32)
    big = np.array([[0, 0, 128, 128]], np.float32)
    cls_t, reg_t = assign(small, np.array([1]), shapes, cfg)
    n3 = 16 * 16
    assert (cls_t[:n3] == 1).any() and (cls_t[n3:] == -1).all()  # a small box lives on stride 8 only
    pts = np.concatenate([locations(h, w, s) for (h, w), s in zip(shapes, (8, 16, 32))])
    pos = np.nonzero(cls_t >= 0)[0]
    x, y = pts[pos, 0], pts[pos, 1]
    assert np.allclose(reg_t[pos], np.stack([x - 8, y - 8, 40 - x, 40 - y], 1))
    assert (np.abs(x - 24) < 12).all() and (np.abs(y - 24) < 12).all()  # centre sampling, radius 1.5 strides
    shapes = [(32, 32), (16, 16), (8, 8)]  # a 256 x 256 input
    cls_t, _ = assign(big * 2, np.array([0]), shapes, cfg)
    assert (cls_t[-64:] == 0).any() and (cls_t[:-64] == -1).all()  # a big box lives on stride 32
    cls_t, reg_t = assign(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), shapes, cfg)
    assert (cls_t == -1).all() and not reg_t.any()


def test_assign_ignores_the_background_inside_crowd_regions():
    shapes = [(16, 16), (8, 8), (4, 4)]  # a 128 x 128 input
    pts = np.concatenate([locations(h, w, s) for (h, w), s in zip(shapes, (8, 16, 32))])
    box, crowd = np.array([[8, 8, 40, 40]], np.float32), np.array([[0, 0, 64, 64]], np.float32)
    plain, reg_plain = assign(box, np.array([1]), shapes, HeadConfig())
    cls_t, reg_t = assign(box, np.array([1]), shapes, HeadConfig(), crowd=crowd)
    inside = (pts[:, 0] < 64) & (pts[:, 1] < 64)
    assert ((cls_t == 1) == (plain == 1)).all() and (cls_t == 1).any()  # positives inside the region stay
    assert np.array_equal(reg_t, reg_plain)
    assert (cls_t[inside & (plain == -1)] == IGNORE).all()
    assert (cls_t[~inside] == plain[~inside]).all() and (cls_t[~inside] == -1).any()
    no_boxes, _ = assign(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), shapes, HeadConfig(), crowd=crowd)
    assert np.array_equal(no_boxes == IGNORE, inside)


def test_loss_leaves_ignored_locations_out_of_the_class_loss():
    import torch

    from productlens.models.detectors.fcos import loss

    torch.manual_seed(0)
    outputs = [(torch.randn(1, 3, h, h, requires_grad=True), torch.rand(1, 4, h, h) * 8 + 1, torch.randn(1, 1, h, h))
               for h in (4, 2, 1)]
    n = 16 + 4 + 1
    reg_t = torch.zeros(1, n, 4)
    cls_t = torch.full((1, n), -1, dtype=torch.long)
    cls_t[0, :8] = IGNORE
    total, parts = loss(outputs, cls_t, reg_t)
    total.backward()
    grad = outputs[0][0].grad.flatten(2)[0].T  # 16 locations of the first level x 3 classes
    assert (grad[:8] == 0).all() and (grad[8:] != 0).all()
    everything = torch.full((1, n), IGNORE, dtype=torch.long)
    assert loss(outputs, everything, reg_t)[1]["cls"] == 0.0
    assert parts["cls"] > 0


def test_letterbox_keeps_aspect_and_pads():
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    px, f = letterbox(img, 128)
    assert f == pytest.approx(1.28) and px.shape == (64, 128, 3)
    assert (px[:64, :128, 0] == 255).all()
    px, _ = letterbox(Image.new("L", (30, 100)), 100)
    assert px.shape == (128, 32, 3) and (px[:, 30:] == 0).all()


def test_read_coco_reports_bad_annotations(tmp_path):
    path = write_coco(tmp_path, "set", 3, extra={"annotations": [
        {"id": 900, "image_id": 1, "category_id": 7, "bbox": [10, 10, 0, 5]},         # zero size
        {"id": 901, "image_id": 1, "category_id": 7, "bbox": [500, 500, 10, 10]},     # outside the image
        {"id": 902, "image_id": 1, "category_id": 99, "bbox": [1, 1, 10, 10]},        # unknown category
        {"id": 903, "image_id": 77, "category_id": 7, "bbox": [1, 1, 10, 10]},        # unknown image
        {"id": 904, "image_id": 1, "category_id": 7},                                 # no bbox
        {"id": 905, "image_id": 2, "category_id": 9, "bbox": [150, 100, 40, 40]},     # clipped to 160 x 120
        {"id": 906, "image_id": 1, "category_id": 7, "bbox": [100, 100, -40, 30]},    # negative width
    ], "images": [{"id": 50, "file_name": "photos/none.jpg", "width": 10, "height": 10}]})
    data = read_coco(path)
    assert data.names == ["square", "disc"]
    text = "\n".join(data.problems)
    for reason in ("zero-size", "outside", "category id 99", "image_id not in images", "malformed"):
        assert reason in text
    assert all(p.startswith(f"{path}: ") for p in data.problems)  # each names the file
    assert "zero-size box (annotation 900)" in text and "(annotation 904)" in text
    assert "negative box width or height (bbox is x, y, width, height) (annotation 906)" in text
    assert "1 image(s) with no boxes, kept as background: none.jpg" in text
    im2 = next(im for im in data.images if im.id == 2)
    assert im2.boxes.max(0)[2] <= 160 and im2.boxes.max(0)[3] <= 120
    empty = next(im for im in data.images if im.id == 50)
    assert len(empty.boxes) == 0  # an image with no boxes is kept as background
    assert data.images[0].path == tmp_path / "photos" / "set_0.jpg"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), ("{not json", "cannot read"), ("[]", "json object"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', "no 'images'"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}', "no 'categories'"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": []}', "'categories' list is empty"),
])
def test_read_coco_refuses_unusable_files(tmp_path, content, message):
    path = tmp_path / "a.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ProductLensError, match=message):
        read_coco(path)


def test_read_coco_refuses_duplicate_image_ids(tmp_path):
    path = write_coco(tmp_path, "set", 3, extra={"images": [{"id": 1, "file_name": "photos/other.jpg"}]})
    with pytest.raises(ProductLensError, match="image id 1 is used by both photos/set_0.jpg and photos/other.jpg"):
        read_coco(path)


def test_read_coco_with_a_detectors_categories(tmp_path):
    path = write_coco(tmp_path, "set", 4)
    data = read_coco(path, categories=[DET_CLASSES[1]])  # only discs known
    assert all((im.labels == 0).all() for im in data.images)
    assert any("category id 7" in p for p in data.problems)


def test_spec_validation():
    spec = DetectorSpec.from_json({"labels": ["a"], "size": 64})
    assert spec.resize == "long" and spec.nms_iou == 0.6
    assert DetectorSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ProductLensError, match="missing labels"):
        DetectorSpec.from_json({"size": 64})
    with pytest.raises(ProductLensError, match="resize"):
        DetectorSpec.from_json({"labels": ["a"], "size": 64, "resize": "crop"})


def _write_user_detector(path: Path, *, square: bool) -> Path:
    """A user's ONNX detector: two fixed candidate boxes in input pixels, scores from the mean red level."""
    import torch

    class Fixed(torch.nn.Module):
        def forward(self, x):  # float 1 x 3 x H x W, normalised
            h, w = x.shape[2], x.shape[3]
            red = x[:, 0].mean()
            boxes = torch.stack([torch.stack([w * 0.0 + 8, h * 0.0 + 8, w * 0.0 + 40, h * 0.0 + 40]),
                                 torch.stack([w * 0.0 + 10, h * 0.0 + 10, w * 0.0 + 42, h * 0.0 + 42])])[None]
            s = torch.sigmoid(red * 10)
            scores = torch.stack([torch.stack([s, 1 - s]), torch.stack([s * 0.9, 1 - s])])[None]
            return boxes.float(), scores.float()

    torch.onnx.export(Fixed(), (torch.zeros(1, 3, 64, 64),), str(path), input_names=["image"],
                      output_names=["boxes", "scores"], dynamic_axes={"image": {2: "h", 3: "w"}},
                      opset_version=17, dynamo=False)
    path.with_suffix(".json").write_text(json.dumps({
        "labels": ["red", "other"], "size": 64, "resize": "square" if square else "long", "input": "float",
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "nms_iou": 0.5}))
    return path


@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize("zoom", [1, 9])  # 9: a large photo, reduced before it is resized to the input
def test_user_onnx_detector_contract(tmp_path, square, zoom, monkeypatch):
    model = _write_user_detector(tmp_path / "mine.onnx", square=square)
    det = load_detector(f"onnx:{model}")
    monkeypatch.setenv("PRODUCTLENS_DETECTOR", f"onnx:{model}")  # the default detector, as --model names it
    assert load_detector().labels == det.labels
    assert det.labels == ("red", "other")
    img = Image.new("RGB", (128 * zoom, 256 * zoom), (255, 0, 0))
    dets = det.detect(img)
    assert [d.tag for d in dets] == ["red"]  # the overlapping second box is suppressed; 'other' scores ~0
    b = dets[0].box
    if square:  # 64 x 64 input: x scaled by 2, y by 4 (times the zoom)
        assert (b.x, b.y, b.w, b.h) == pytest.approx((16 * zoom, 32 * zoom, 64 * zoom, 128 * zoom))
    else:  # longer side 256 -> 64: factor 4
        assert (b.x, b.y, b.w, b.h) == pytest.approx((32 * zoom, 32 * zoom, 96 * zoom, 128 * zoom))  # clipped
    assert dets[0].as_json()["tag"] == "red"
    grey = Image.new("RGB", (128, 256), (128, 128, 128))  # red ~0.51, other ~0.49 on the same boxes
    assert [d.tag for d in det.detect(grey)] == ["red", "other"]
    (one,) = det.detect(grey, one_tag=True)
    assert one.tag == "red" and [t for t, _ in one.alternatives] == ["other"]


def test_load_detector_errors(tmp_path, monkeypatch):
    with pytest.raises(ProductLensError, match="not a detector folder"):
        load_detector(tmp_path)
    with pytest.raises(ProductLensError, match="does not exist"):
        load_detector(f"onnx:{tmp_path / 'none.onnx'}")
    (tmp_path / "x.onnx").write_bytes(b"junk")
    with pytest.raises(ProductLensError, match="spec"):
        load_detector(f"onnx:{tmp_path / 'x.onnx'}")
    (tmp_path / "x.json").write_text('{"labels": ["a"], "size": 64}')
    with pytest.raises(ProductLensError, match="cannot load"):
        load_detector(f"onnx:{tmp_path / 'x.onnx'}")
    monkeypatch.setenv("PRODUCTLENS_DETECTOR", str(tmp_path / "nothing"))
    with pytest.raises(ProductLensError, match="productlens detector train"):
        load_detector()
    monkeypatch.setenv("PRODUCTLENS_DETECTOR", f"onnx:{tmp_path / 'none.onnx'}")  # as --model takes it
    with pytest.raises(ProductLensError, match="none.onnx does not exist"):
        load_detector()


def _onnx_detector(path: Path, spec: object, *, dtype: str = "float", shape: list | None = None,
                   scores: tuple[float, float] = (0.9, 0.01)) -> Path:
    """A constant ONNX detector (one box, two classes scored ``scores``) with input ``dtype`` and ``shape``, and
    ``spec`` beside it (a dict as JSON, bytes as they are)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if dtype == "float" else TensorProto.UINT8
    image = helper.make_tensor_value_info("image", elem, shape or [1, 3, "h", "w"])
    consts = {"boxes": np.array([[[8, 8, 40, 40]]], np.float32), "scores": np.array([[scores]], np.float32)}
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v)) for k, v in consts.items()]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in consts.items()]
    model = helper.make_model(helper.make_graph(nodes, "det", [image], outs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    spec_path = path.with_suffix(".json")
    spec_path.write_bytes(spec if isinstance(spec, bytes) else json.dumps(spec).encode())
    return path


_SPEC = {"labels": ["red", "other"], "size": 64, "resize": "square", "input": "float"}


@pytest.mark.parametrize("spec, dtype, shape, message", [
    (_SPEC, "uint8", [1, 3, "h", "w"], "input 'image' is tensor\\(uint8\\), but its spec's \"input\": \"float\""),
    ({**_SPEC, "input": "uint8"}, "float", [1, "h", "w", 3],
     "is tensor\\(float\\), but its spec's \"input\": \"uint8\""),
    (_SPEC, "float", [1, 3, 128, 128], "fixed size \\[1, 3, 128, 128\\], but its spec says \"size\": 64"),
    ({**_SPEC, "resize": "long"}, "float", [1, 3, 96, 128], "a fixed input must be square"),
    ({**_SPEC, "resize": "long"}, "float", [1, 3, 96, 96], "set \"size\": 96"),
    (_SPEC, "float", [3, "h", "w"], "has rank 3"),
    (_SPEC, "float", [1, 1, "h", "w"], "the contract is 1 x 3 x H x W"),
    (_SPEC, "float", [2, 3, "h", "w"], "one RGB photo"),
    (_SPEC, "float", [1, "h", "w", 3], "channels last; a float detector takes 1 x 3 x H x W"),  # had been "square"
    ({**_SPEC, "size": "big"}, "float", None, "'size' must be an integer from 32 to 8192 \\(pixels\\), got 'big'"),
    ({**_SPEC, "size": 16}, "float", None, "'size' must be"),
    ({**_SPEC, "nms_iou": "x"}, "float", None, "'nms_iou' must be a number in \\(0, 1\\]"),
    ({**_SPEC, "nms_iou": 0}, "float", None, "'nms_iou' must be"),
    ({**_SPEC, "score_threshold": 1.5}, "float", None, "'score_threshold' must be a number in \\[0, 1\\)"),
    ({**_SPEC, "multiple": 0}, "float", None, "'multiple' must be an integer from 1"),
    ({**_SPEC, "max_detections": True}, "float", None, "'max_detections' must be an integer >= 1"),
    ({**_SPEC, "mean": [0.5, 0.5]}, "float", None, "'mean' must be 3 numbers"),
    ({**_SPEC, "std": [0.5, 0, 0.5]}, "float", None, "'std' must be 3 numbers > 0"),
    ({**_SPEC, "resize": "crop"}, "float", None, "'resize' must be \"long\" or \"square\""),
    ({**_SPEC, "input": "int8"}, "float", None, "'input' must be \"uint8\" or \"float\""),
    ({**_SPEC, "labels": [1, 2]}, "float", None, "'labels' must be a non-empty list of tag names"),
    ({**_SPEC, "labels": ["bag", "hat", "bag"]}, "float", None, "'labels' names 'bag' more than once"),
    ({**_SPEC, "labels": ["one"]}, "float", None, "output 'scores' has 2 classes but its spec lists 1 labels"),
    (5, "float", None, "a detector spec is a JSON object"),
    (b"\xff\xfe{}", "float", None, "not UTF-8"),
])
def test_user_onnx_detector_is_checked_when_loaded(tmp_path, spec, dtype, shape, message):
    model = _onnx_detector(tmp_path / "mine.onnx", spec, dtype=dtype, shape=shape)
    with pytest.raises(ProductLensError, match=message) as err:
        load_detector(f"onnx:{model}")
    assert str(tmp_path / "mine.") in str(err.value)  # names the model or its spec


def test_user_detector_scores_must_be_probabilities_and_its_spec_is_read_as_written(tmp_path, caplog):
    """Raw logits came out as "scores" of 6.0 and NaN scores as no detection; a spec with a BOM was refused
    and a misspelt key ("score_treshold") silently took its default."""
    for name, scores, shown in (("logits", (6.0, -2.0), "6.0"), ("nan", (float("nan"), 0.1), "nan")):
        det = load_detector(f"onnx:{_onnx_detector(tmp_path / f'{name}.onnx', _SPEC, scores=scores)}")
        with pytest.raises(ProductLensError, match=f"{name}.onnx: 'scores' must be probabilities in \\[0, 1\\], "
                                                   f"got {shown}"):
            det.detect(Image.new("RGB", (64, 64)))
    spec = b"\xef\xbb\xbf" + json.dumps({**_SPEC, "score_treshold": 0.8}).encode()
    with caplog.at_level("WARNING"):
        det = load_detector(f"onnx:{_onnx_detector(tmp_path / 'bom.onnx', spec)}")
    assert det.spec.score_threshold == 0.05 and "'score_treshold' unknown, ignored" in caplog.text


def test_a_detector_sees_16_bit_and_transparent_photos_as_the_embedders_do(tmp_path):
    """detect(PIL image) converted with convert("RGB"): a dark 16-bit photo reached the model white."""
    det = load_detector(f"onnx:{_write_user_detector(tmp_path / 'mine.onnx', square=True)}")
    dark = Image.fromarray(np.full((64, 64), 8000, np.uint16))  # about 31 of 255 once scaled
    assert [d.tag for d in det.detect(dark)] == ["other"]  # the model scores "red" by brightness
    assert [d.tag for d in det.detect(Image.new("RGB", (64, 64), (31, 31, 31)))] == ["other"]


def test_detect_takes_an_opened_photo_upright_as_search_does(tmp_path):
    """Image.open's photo with EXIF orientation 6 had been detected sideways: its box, given to search (which
    turns the photo upright), cropped the wrong region."""
    det = load_detector(f"onnx:{_onnx_detector(tmp_path / 'sq.onnx', _SPEC, shape=[1, 3, 64, 64])}")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 256 x 128, shown 128 x 256
    Image.new("RGB", (256, 128)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    (d,) = det.detect(Image.open(tmp_path / "turned.jpg"))
    (upright,) = det.detect(load_image(tmp_path / "turned.jpg"))
    assert d.box == upright.box and d.box.x + d.box.w <= 128 and d.box.y + d.box.h <= 256
    with pytest.raises(ProductLensError, match="detect takes a PIL image, got str"):
        det.detect(str(tmp_path / "turned.jpg"))
    with pytest.raises(ProductLensError, match="max_detections must be a whole number"):
        det.detect(load_image(tmp_path / "turned.jpg"), max_detections=-1)


def test_user_onnx_detector_with_a_fixed_input_size(tmp_path):
    square = load_detector(f"onnx:{_onnx_detector(tmp_path / 'sq.onnx', _SPEC, shape=[1, 3, 64, 64])}")
    (d,) = square.detect(Image.new("RGB", (128, 256)))
    assert (d.box.x, d.box.y, d.box.w, d.box.h) == pytest.approx((16, 32, 64, 128))
    spec = {**_SPEC, "resize": "long", "size": 60, "multiple": 32}  # letterboxed into 64 x 64
    long = load_detector(f"onnx:{_onnx_detector(tmp_path / 'long.onnx', spec, shape=[1, 3, 64, 64])}")
    x, factors = long.prepare(Image.new("RGB", (120, 60)))
    assert x.shape == (1, 3, 64, 64) and factors == (0.5, 0.5)
    (d,) = long.detect(Image.new("RGB", (120, 60)))
    assert (d.box.x, d.box.y, d.box.w, d.box.h) == pytest.approx((16, 16, 64, 44))  # clipped at the 60 px height
    uint8 = {**_SPEC, "input": "uint8"}
    assert load_detector(f"onnx:{_onnx_detector(tmp_path / 'u.onnx', uint8, dtype='uint8', shape=[1, 'h', 'w', 3])}"
                         ).detect(Image.new("RGB", (64, 64)))[0].tag == "red"


def test_draw_detections(tmp_path):
    from productlens.models.detectors.runtime import Detection
    from productlens.pipeline.detect import draw_detections
    from productlens.types import Box

    img = Image.new("RGB", (200, 100), (255, 255, 255))
    out = draw_detections(img, [Detection(Box(10, 20, 50, 40), "bag", 0.9, 0),
                                Detection(Box(100, 20, 50, 40), "hat", 0.1, 1)])
    a = np.asarray(out)
    assert out.size == img.size and (a[20:61, 10] != 255).any()
    assert (a[30:50, 100] == 255).all()  # below min_score: not drawn
    assert (np.asarray(img) == 255).all()  # the input is untouched


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small detector trained on generated photos (squares and discs)."""
    from productlens.pipeline.detect_train import DetectTrainOptions, train_detector

    root = tmp_path_factory.mktemp("coco")
    train = write_coco(root, "train", 40, seed=1)
    test = write_coco(root, "test", 12, seed=2)
    opts = DetectTrainOptions(size=160, scales=(1.0,), epochs=12, batch=8, lr=3e-3,
                              head=HeadConfig(width=32, convs=1))
    metrics = train_detector(read_coco(train), root / "detector", opts, progress=False)
    return root, train, test, opts, metrics


@pytest.mark.slow
def test_trained_detector_finds_objects(trained):
    from productlens.eval.detection import coco_map, predict_set

    root, _, test, _, metrics = trained
    assert metrics["views"] == 80 and metrics["loss"][-1] < metrics["loss"][0]
    det = load_detector(root / "detector")
    assert det.labels == ("square", "disc")
    data = read_coco(test)
    preds, errors = predict_set(det, data, progress=False)
    m = coco_map(data, preds)
    assert not errors and m["map50"] > 0.6, m
    assert set(m["per_class"]) == {"square", "disc"}
    cfg = json.loads((root / "detector" / "config.json").read_text())
    assert cfg["categories"] == DET_CLASSES and cfg["size"] == 160


@pytest.mark.slow
def test_detect_cli_writes_drawings_and_json(trained, tmp_path):
    from typer.testing import CliRunner

    from productlens.cli.main import app

    root = trained[0]
    img, _ = detection_photo(5)
    img.save(tmp_path / "a.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), str(tmp_path / "broken.jpg"),
                                   "--model", str(root / "detector"), "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    records = json.loads(res.output.strip().splitlines()[-1])
    assert len(records) == 1 and records[0]["width"] == 160
    assert "broken.jpg" in res.output  # reported, skipped
    rec = json.loads((tmp_path / "out" / "a.json").read_text())
    assert rec["detections"] and {"box", "tag", "score"} <= set(rec["detections"][0]) <= {"box", "tag", "score",
                                                                                       "alternatives"}
    assert Image.open(tmp_path / "out" / "a.jpg").size == (160, 120)
    assert not (tmp_path / "out" / "broken.json").exists()
    model = ["--model", str(root / "detector")]
    again = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), *model, "--out", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output  # its own earlier results are replaced
    before = (tmp_path / "a.jpg").read_bytes()
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), *model, "--out", str(tmp_path)])
    assert res.exit_code == 1 and "would replace the input photo" in res.output
    mine = tmp_path / "mine"
    mine.mkdir()
    img.save(mine / "b.png")
    (mine / "b.json").write_text("{}")  # a user's file where b.json would go
    res = CliRunner().invoke(app, ["detect", str(mine / "b.png"), *model, "--out", str(mine)])
    assert res.exit_code == 1 and "b.json, which detect did not write" in res.output
    res = CliRunner().invoke(app, ["detect", str(mine), *model, "--out", str(mine)])  # photos inside --out
    assert res.exit_code == 1 and "is inside --out" in res.output
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), *model, "--min-score", "1.5"])
    assert res.exit_code == 2 and "min-score" in res.output
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "broken.jpg"), *model])  # nothing could be read
    assert res.exit_code == 1 and "skipped: " in res.output and "broken.jpg" in res.output
    by_file = load_detector(f"onnx:{root / 'detector' / 'model.onnx'}")  # its folder's detector.json is the spec
    assert by_file.labels == load_detector(root / "detector").labels
    assert (tmp_path / "a.jpg").read_bytes() == before and (mine / "b.json").read_text() == "{}"


@pytest.mark.slow
def test_eval_detect_cli_json(tmp_path):
    from typer.testing import CliRunner

    from productlens.cli.main import app

    train = write_coco(tmp_path, "train", 16, seed=3)
    test = write_coco(tmp_path, "test", 6, seed=4)
    data = json.loads(test.read_text())  # a test image that fails to decode: skipped and reported
    (tmp_path / "photos" / "bad.jpg").write_bytes(b"")
    data["images"].append({"id": 99, "file_name": "photos/bad.jpg", "width": 160, "height": 120})
    data["images"][0]["width"] = 200  # and one whose size disagrees with the file: its boxes would not fit
    test.write_text(json.dumps(data))
    res = CliRunner().invoke(app, ["eval", "detect", "--train", str(train), "--test", str(test), "--epochs", "2",
                                   "--size", "128", "--json", "--out", str(tmp_path / "det"),
                                   "--plot", str(tmp_path / "ap.png")])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output.strip().splitlines()[-1])
    assert set(m) == {"map50", "map", "classes", "train", "test", "seconds", "per_class"}
    assert len(m["per_class"]) == m["classes"] and all(0 <= ap <= 1 for ap in m["per_class"].values())
    assert m["train"] == 16 and m["test"] == 5 and 0 <= m["map50"] <= 1
    assert "bad.jpg" in res.output and "annotation file says 200x120" in res.output and (tmp_path / "det" / "model.onnx").is_file()
    assert (tmp_path / "ap.png").is_file() and (tmp_path / "ap_examples.png").is_file()


def _perfect_detector(monkeypatch, truth: Path):
    """``evaluate_detection`` without training: its detector finds exactly ``truth``'s boxes
    (a COCO file with the training set's categories), image by image in order."""
    from productlens.models import detectors
    from productlens.models.detectors.runtime import Detection
    from productlens.pipeline import detect_train
    from productlens.types import Box

    data = read_coco(truth)
    answers = iter([[Detection(Box(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])),
                               data.names[lab], 1.0, int(lab)) for b, lab in zip(im.boxes, im.labels)]
                    for im in data.images])

    class Perfect:
        labels = tuple(data.names)

        def detect(self, img, **kwargs):
            return next(answers)

    monkeypatch.setattr(detect_train, "train_detector", lambda *a, **k: {"images": 4, "skipped": []})
    monkeypatch.setattr(detectors, "load_detector", lambda *a, **k: Perfect())


def _recoded(path: Path, name: str, categories: list[dict], ids: dict[int, int]) -> Path:
    """A copy of the COCO file ``path`` with other ``categories`` and its annotations' ids mapped by ``ids``."""
    data = json.loads(path.read_text())
    data["categories"] = categories
    for ann in data["annotations"]:
        ann["category_id"] = ids[ann["category_id"]]
    out = path.with_name(name)
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("categories, ids", [
    ([{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}], {7: 1, 9: 2}),  # the same names, renumbered
    ([{"id": 7, "name": "disc"}, {"id": 9, "name": "square"}], {7: 9, 9: 7}),  # the names swapped on the ids
    ([{"id": 9, "name": "disc"}, {"id": 7, "name": "square"}, {"id": 3, "name": "hat"}], {7: 7, 9: 9}),  # + one unused
])
def test_eval_detect_matches_test_categories_by_name(tmp_path, monkeypatch, categories, ids):
    from productlens.eval.detection import evaluate_detection

    train = write_coco(tmp_path, "train", 2, seed=1)
    test = write_coco(tmp_path, "test", 4, seed=2)
    _perfect_detector(monkeypatch, test)
    m = evaluate_detection(train, _recoded(test, "recoded.json", categories, ids), progress=False)
    assert m["map50"] == pytest.approx(1.0) and set(m["per_class"]) == {"square", "disc"}, m
    notes = "\n".join(m["problems"])
    assert ("matched by name" in notes) == (ids != {7: 7, 9: 9})
    assert ("does not know, ignored: 'hat'" in notes) == (len(categories) == 3)


def test_eval_detect_refuses_test_boxes_of_an_unknown_class(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from productlens.cli.main import app
    from productlens.pipeline import detect_train

    train = write_coco(tmp_path, "train", 2, seed=1)
    test = _recoded(write_coco(tmp_path, "test", 4, seed=2), "hats.json",
                    [{"id": 7, "name": "Square"}, {"id": 9, "name": "disc"}], {7: 7, 9: 9})
    monkeypatch.setattr(detect_train, "train_detector", lambda *a, **k: pytest.fail("trained first"))
    res = CliRunner().invoke(app, ["eval", "detect", "--train", str(train), "--test", str(test)])
    assert res.exit_code == 1 and "error: " in res.output and "Traceback" not in res.output
    assert "test categories the detector was not trained on: 'Square' (id 7, " in res.output
    assert "its classes: square, disc" in res.output


@pytest.mark.parametrize("annotations", [[], None])
def test_eval_detect_refuses_a_test_set_without_boxes(tmp_path, monkeypatch, annotations):
    from typer.testing import CliRunner

    from productlens.cli.main import app
    from productlens.eval.detection import coco_map
    from productlens.pipeline import detect_train

    train = write_coco(tmp_path, "train", 2, seed=1)
    test = write_coco(tmp_path, "test", 2, seed=2)
    data = json.loads(test.read_text())
    if annotations is None:
        del data["annotations"]
    else:
        data["annotations"] = annotations
    test.write_text(json.dumps(data))
    monkeypatch.setattr(detect_train, "train_detector", lambda *a, **k: pytest.fail("trained first"))
    res = CliRunner().invoke(app, ["eval", "detect", "--train", str(train), "--test", str(test), "--json"])
    assert res.exit_code == 1 and "the test set has no boxes to score" in res.output, res.output
    assert "map50" not in res.output
    with pytest.raises(ProductLensError, match="no boxes to score"):
        coco_map(read_coco(test), {})
    # boxes but no detections: AP 0 for each class with boxes, not an empty per-class table
    m = coco_map(read_coco(train), {})
    assert m["map50"] == 0 and m["per_class"] == {"square": 0.0, "disc": 0.0}


def test_training_refuses_data_without_boxes(tmp_path):
    from productlens.pipeline.detect_train import train_detector

    path = write_coco(tmp_path, "set", 2)
    data = json.loads(path.read_text())
    data["annotations"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(ProductLensError, match="no usable boxes"):
        train_detector(read_coco(path), tmp_path / "det", progress=False)
    assert not (tmp_path / "det").exists()


TINY = dict(backbone="efficientnet-lite0", size=128, scales=(1.0,), flip=False, epochs=1)


def _break(root: Path, data: dict, image_ids) -> None:
    """Point the given images at undecodable files."""
    (root / "photos" / "broken.jpg").write_bytes(b"broken")
    for im in data["images"]:
        if im["id"] in image_ids:
            im["file_name"] = "photos/broken.jpg"


def test_training_refuses_when_every_image_with_boxes_is_skipped(tmp_path):
    from typer.testing import CliRunner

    from productlens.cli.main import app

    path = write_coco(tmp_path, "set", 4)
    data = json.loads(path.read_text())
    _break(tmp_path, data, {1, 2, 3, 4})  # every image with boxes unreadable; only background images readable
    data["images"] += [{"id": 50 + i, "file_name": f"photos/set_{i}.jpg", "width": 160, "height": 120}
                       for i in range(2)]
    path.write_text(json.dumps(data))
    res = CliRunner().invoke(app, ["detector", "train", str(path), "--out", str(tmp_path / "det"),
                                   "--backbone", "efficientnet-lite0", "--size", "128", "--epochs", "1"])
    assert res.exit_code != 0
    assert "error: " in res.output and "no usable boxes to train on" in res.output, res.output
    assert "broken.jpg" in res.output and "only 2 background image(s)" in res.output
    assert "trained on" not in res.output and not (tmp_path / "det").exists()


def test_training_counts_the_images_and_boxes_it_used(tmp_path, monkeypatch):
    from productlens.pipeline import detect_train

    path = write_coco(tmp_path, "set", 4)  # boxes per image: 1, 2, 1, 2
    data = json.loads(path.read_text())
    data["images"] += [{"id": 50, "file_name": "photos/x.jpg"}, {"id": 51, "file_name": "photos/x.jpg"}]
    _break(tmp_path, data, {2, 50, 51})  # three skipped records, one path
    path.write_text(json.dumps(data))
    monkeypatch.setattr(detect_train, "train_head", lambda *a, **k: (None, [1.0]))
    monkeypatch.setattr(detect_train, "export_detector", lambda *a, **k: None)
    m = detect_train.train_detector(read_coco(path), tmp_path / "det", detect_train.DetectTrainOptions(**TINY),
                                    progress=False)
    assert (m["images"], m["boxes"], m["views"], len(m["skipped"])) == (3, 4, 3, 3)
    assert json.loads((tmp_path / "det" / "metrics.json").read_text())["boxes"] == 4


def test_detector_head_trains_on_every_core_and_restores_torch_threads_and_random_state(monkeypatch):
    import torch

    from productlens.pipeline import detect_train

    seen = []
    monkeypatch.setattr(detect_train, "_train_head",
                        lambda *a: seen.append((torch.get_num_threads(), torch.rand(1))) or (None, []))
    monkeypatch.setenv("PRODUCTLENS_THREADS", "2")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    state = torch.random.get_rng_state()
    try:
        detect_train.train_head(None, 2, detect_train.DetectTrainOptions(**TINY), progress=False)
        assert seen[0][0] == 2 and torch.get_num_threads() == 1
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    finally:
        torch.set_num_threads(before)


def test_images_with_only_crowd_regions_are_not_background(tmp_path):
    from productlens.pipeline.detect_train import DetectTrainOptions, extract_views

    path = write_coco(tmp_path, "set", 4)
    data = json.loads(path.read_text())
    for a in data["annotations"]:
        a["iscrowd"] = int(a["image_id"] == 1)
    path.write_text(json.dumps(data))
    coco = read_coco(path)
    views = extract_views(coco, DetectTrainOptions(**TINY), progress=False)
    assert (views.images, views.boxes, len(views)) == (3, 5, 3)
    assert len(views.skipped) == 1 and "set_0.jpg: only crowd regions (iscrowd=1)" in views.skipped[0][1]


def test_training_ignores_the_background_inside_crowd_regions(tmp_path):
    from productlens.pipeline.detect_train import DetectTrainOptions, extract_views

    crowd = {"id": 99, "image_id": 1, "category_id": 7, "bbox": [100, 0, 60, 120], "area": 7200, "iscrowd": 1}
    path = write_coco(tmp_path, "set", 2, extra={"annotations": [crowd]})  # the right of photo 1 (160 x 120)
    views = extract_views(read_coco(path), DetectTrainOptions(**dict(TINY, flip=True)), progress=False)
    assert len(views) == 4 and views.boxes == 3  # 2 views a photo; the crowd region is no box
    h, w = views.feats[0][0].shape[-2:]
    x = locations(h, w, 8)[:, 0]
    for view, (lo, hi) in ((0, (80, 128)), (1, (0, 48))):  # resized by 0.8; view 1 is the mirrored photo
        ignored = views.cls_t[view][:h * w] == IGNORE
        assert ignored.any() and ((x[ignored] > lo) & (x[ignored] < hi)).all()
    assert not any((c == IGNORE).any() for c in views.cls_t[2:])  # photo 2 has no crowd region


def test_training_never_wipes_a_users_folder(tmp_path, monkeypatch):
    from productlens.pipeline import detect_train

    user = tmp_path / "mine"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    monkeypatch.setattr(detect_train, "extract_views", lambda *a, **k: pytest.fail("trained first"))
    with pytest.raises(ProductLensError, match="did not write"):
        detect_train.train_detector(read_coco(write_coco(tmp_path, "set", 2)), user, progress=False)
    assert [p.name for p in user.iterdir()] == ["holiday.jpg"]


def _shop_and_backgrounds(tmp_path: Path) -> tuple[Path, Path]:
    """Two white-background products (and a blank and a broken photo), three background photos."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "bg").mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 160, 40)]):
        img = Image.new("RGB", (120, 100), (255, 255, 255))
        img.paste(colour, (30, 20, 90, 80))
        img.save(tmp_path / "shop" / f"p{i}.jpg", quality=95)
    Image.new("RGB", (120, 100), (255, 255, 255)).save(tmp_path / "shop" / "blank.jpg")  # nothing to cut out
    (tmp_path / "shop" / "broken.jpg").write_bytes(b"nope")
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(
            tmp_path / "bg" / f"b{i}.jpg")
    return tmp_path / "shop", tmp_path / "bg"


def _composites(*args: str | Path):
    from typer.testing import CliRunner

    from productlens.cli.main import app

    return CliRunner().invoke(app, ["data", "composites", *map(str, args)])


def test_composites_from_white_background_products(tmp_path):
    from productlens.data.synth import cutout

    shop, bg = _shop_and_backgrounds(tmp_path)
    cut = cutout(Image.open(shop / "p0.jpg"))
    assert cut.mode == "RGBA" and abs(cut.size[0] - 60) <= 2 and abs(cut.size[1] - 60) <= 2
    assert cutout(Image.open(shop / "blank.jpg")) is None
    res = _composites(shop, bg, "--out", tmp_path / "syn", "-n", "6")
    assert res.exit_code == 0, res.output
    assert "composites:" not in res.output  # stderr is no terminal: no progress bar in the log
    data = read_coco(tmp_path / "syn" / "annotations.json")
    assert len(data.images) == 6 and data.n_boxes >= 6 and data.names == ["product"] and not data.problems
    ids = [a["id"] for a in json.loads((tmp_path / "syn" / "annotations.json").read_text())["annotations"]]
    assert len(set(ids)) == len(ids)  # every box of an image had the same id: pycocotools kept one
    for im in data.images:
        assert Image.open(im.path).size == (im.width, im.height)
        assert (im.boxes[:, 2] <= im.width).all() and (im.boxes[:, 3] <= im.height).all()


def test_composites_do_not_read_their_own_output(tmp_path):
    shop, bg = _shop_and_backgrounds(tmp_path)
    assert _composites(shop, bg, "--out", shop / "syn", "-n", "5").exit_code == 0
    (shop / "syn" / "images" / "00000.jpg").write_bytes(b"cut short")  # a composite read as a product would say
    res = _composites(shop, bg, "--out", shop / "syn", "-n", "5")  # --out inside the products folder
    assert res.exit_code == 0, res.output
    assert len(read_coco(shop / "syn" / "annotations.json").images) == 5
    assert "00000.jpg" not in res.output and "skipped 2 input photo(s)" in res.output  # broken.jpg, blank.jpg
    res = _composites(shop, bg, "--out", tmp_path / "none", "-n", "0")
    assert res.exit_code == 2 and not (tmp_path / "none").exists()


def test_composites_report_each_skipped_photo_and_the_count(tmp_path):
    shop, bg = _shop_and_backgrounds(tmp_path)
    (bg / "b9.jpg").write_bytes(b"not a photo")  # drawn at some point among 4 backgrounds and 20 composites
    res = _composites(shop, bg, "--out", tmp_path / "syn", "-n", "20")
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 3, res.output
    assert any("broken.jpg: unreadable product photo" in w for w in warnings)
    assert any("blank.jpg: no product to cut out" in w for w in warnings)
    assert any("b9.jpg: unreadable background photo" in w for w in warnings)
    assert "wrote 20 of the 20 composites asked; skipped 3 input photo(s)" in res.output
    assert len(read_coco(tmp_path / "syn" / "annotations.json").images) == 20


def test_composites_fail_cleanly_when_no_background_can_be_read(tmp_path):
    shop, bg = _shop_and_backgrounds(tmp_path)
    for b in bg.iterdir():
        b.write_bytes(b"broken")
    res = _composites(shop, bg, "--out", tmp_path / "syn", "-n", "4")
    assert res.exit_code == 1 and "error: none of the 3 background photos could be read" in res.output
    assert res.output.count("unreadable background photo") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bg", "shop"]  # no folder, no temporary


def test_composites_replace_only_their_own_folder(tmp_path, monkeypatch):
    from productlens.data import synth

    shop, bg = _shop_and_backgrounds(tmp_path)
    assert _composites(shop, bg, "--out", tmp_path / "syn", "-n", "4").exit_code == 0
    (tmp_path / "syn" / "images" / "00003.jpg").unlink()
    res = _composites(shop, bg, "--out", tmp_path / "syn", "-n", "2")  # its own folder: replaced whole
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "syn" / "images").iterdir()) == ["00000.jpg", "00001.jpg"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    (tmp_path / "file.txt").write_text("a file")
    monkeypatch.setattr(synth, "cutout", lambda *a, **k: pytest.fail("worked before checking --out"))
    res = _composites(shop, bg, "--out", user, "-n", "2")
    assert res.exit_code == 1 and "error: " in res.output and "did not write" in res.output
    assert [p.name for p in user.iterdir()] == ["holiday.jpg"]
    res = _composites(shop, bg, "-o", tmp_path / "file.txt", "-n", "2")
    assert res.exit_code == 1 and "file.txt exists and is not a folder" in res.output
    assert (tmp_path / "file.txt").read_text() == "a file"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".pltmp")]


@pytest.mark.slow
def test_search_rank_and_classify_use_the_detected_box(tmp_path):
    import dataclasses

    from typer.testing import CliRunner

    from helpers import write_dataset
    from productlens.cli.main import app
    from productlens.data.readers import read_gallery, read_queries
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.pipeline.rank import rank_queries
    from productlens.types import Box

    ds = write_dataset(tmp_path / "ds")
    model = _write_user_detector(tmp_path / "det.onnx", square=True)
    det = load_detector(f"onnx:{model}")
    box = Box(12, 12, 48, 48)  # the detector's best box (8, 8, 40, 40 of its 64 px input) on a 96 px photo
    queries = read_queries(ds["queries"])
    cat, _ = build_catalog(read_gallery(ds["gallery"]), tmp_path / "cat", embedder="efficientnet-lite0",
                           progress=False)
    with cat:
        by_detector, _ = rank_queries(cat, queries, 10, detector=det, progress=False)
        by_box, _ = rank_queries(cat, [dataclasses.replace(q, box=box) for q in queries], 10, progress=False)
        whole, _ = rank_queries(cat, queries, 10, progress=False)
        assert np.array_equal(by_detector, by_box)
        hits = cat.search(queries[0].image, detector=det, k=3)
        assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in cat.search(queries[0].image, box=box, k=3)]
        assert [h.score for h in hits] != [h.score for h in cat.search(queries[0].image, k=3)]
    assert whole.shape == by_box.shape
    res = CliRunner().invoke(app, ["search", str(tmp_path / "cat"), queries[0].image, "--detect",
                                   "--detector", f"onnx:{model}", "-k", "2"])
    assert res.exit_code == 0, res.output
    assert "detected box: 12,12,48,48" in res.output  # x,y,w,h as --box takes it


def test_feature_cache_cap_keeps_one_view_per_later_image(tmp_path):
    from productlens.pipeline.detect_train import DetectTrainOptions, extract_views

    data = read_coco(write_coco(tmp_path, "set", 3))
    (tmp_path / "photos" / "set_1.jpg").write_bytes(b"broken")
    views = extract_views(data, DetectTrainOptions(size=128, scales=(0.8, 1.0), max_cache_gb=1e-9), progress=False)
    assert len(views) == 4 + 1  # all 4 views of the first image, then one view each; the broken one skipped
    assert len(views.skipped) == 1 and "set_1.jpg" in views.skipped[0][0]
    c3, c4, c5 = views.feats[-1]
    assert c3.dtype == np.float16 and c3.shape[0] == 48 and c5.shape[0] == 1280


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["efficientnet-lite0", "efficientnet-lite2"])
def test_every_pyramid_backbone_runs_on_random_input(arch):
    import onnxruntime as ort

    from productlens.models.detectors.pyramid import STRIDES, cached_onnx, channels

    sess = ort.InferenceSession(str(cached_onnx(arch)), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 255, (1, 96, 160, 3), dtype=np.uint8)
    maps = sess.run(None, {"pixels": x})
    assert [m.shape for m in maps] == [(1, c, 96 // s, 160 // s) for c, s in zip(channels(arch), STRIDES)]
    assert all(np.isfinite(m).all() for m in maps)


@pytest.mark.slow
def test_tuned_tail_continues_the_frozen_trunk():
    """The trunk that stops before a tuned block, then the tail, gives the frozen pyramid's C5."""
    import onnxruntime as ort
    import torch

    from productlens.models.detectors.pyramid import cached_onnx, split_torch, tune_range

    assert tune_range("efficientnet-lite0") == (11, 16)
    x = np.random.default_rng(0).integers(0, 255, (1, 96, 128, 3), dtype=np.uint8)
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})
    c3, c4, c5 = run(cached_onnx("efficientnet-lite0"))
    for tune_from in (14, 16):  # two blocks and the head convolution; the head convolution alone
        t3, t4, t = run(cached_onnx("efficientnet-lite0", tune_from))
        with torch.no_grad():
            tail_c5 = split_torch("efficientnet-lite0", tune_from)[2](torch.from_numpy(t)).numpy()
        assert np.allclose(t3, c3, atol=1e-4) and np.allclose(t4, c4, atol=1e-4)
        assert np.allclose(tail_c5, c5, atol=1e-3), np.abs(tail_c5 - c5).max()
    for bad in (10, 17):  # C4 would change; past the last block
        with pytest.raises(ProductLensError, match=r"must be in 11\.\.16"):
            split_torch("efficientnet-lite0", bad)


@pytest.mark.slow
def test_training_with_a_tuned_tail_exports_the_tuned_backbone(tmp_path, monkeypatch):
    import torch

    from productlens.models.detectors import pyramid
    from productlens.pipeline.detect_train import DetectTrainOptions, train_detector

    made = []
    split = pyramid.split_torch
    monkeypatch.setattr(pyramid, "split_torch", lambda *a: made.append(split(*a)) or made[-1])
    data = read_coco(write_coco(tmp_path, "set", 6))
    opts = DetectTrainOptions(**dict(TINY, epochs=2), tune_from=15, head=HeadConfig(width=16, convs=1))
    m = train_detector(data, tmp_path / "det", opts, progress=False)
    assert m["views"] == 6 and json.loads((tmp_path / "det" / "config.json").read_text())["tune_from"] == 15
    tuned_pyramid, _, tail = made[0]
    tuned, frozen = tuned_pyramid.state_dict(), split("efficientnet-lite0")[0].state_dict()
    changed = {k for k in frozen if k.startswith("trunk.net.") and not torch.equal(tuned[k], frozen[k])}
    assert changed and all(k.startswith(("trunk.net._blocks.15.", "trunk.net._conv_head.", "trunk.net._bn1."))
                           for k in changed), changed  # only block 15 and the head convolution trained
    assert not any("running_" in k for k in changed)  # BatchNorm statistics stayed frozen
    assert not tail.training and not tuned_pyramid.training
    det = load_detector(tmp_path / "det")  # the exported model runs
    assert det.labels == ("square", "disc")
    det.detect(Image.open(data.images[0].path).convert("RGB"))


def test_a_tuned_block_out_of_range_fails_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from productlens.cli.main import app

    train = write_coco(tmp_path, "train", 2)
    for cmd in (["detector", "train", str(train), "--out", str(tmp_path / "det")],
                ["eval", "detect", "--train", str(train), "--test", str(train), "--out", str(tmp_path / "det")]):
        r = CliRunner().invoke(app, [*cmd, "--backbone", "efficientnet-lite0", "--tune-from", "5"])
        assert r.exit_code == 1 and "efficientnet-lite0: the first tuned block must be in 11..16" in r.output
        assert "backbone views" not in r.output and not (tmp_path / "det").exists()


def test_tune_from_help_names_each_backbones_range():
    """The option's help spells the ranges out (the CLI does not import the model code to build it)."""
    from productlens.cli.detect_cmd import _TUNE
    from productlens.models.detectors.pyramid import supported, tune_range

    text = " ".join(_TUNE.help.split())
    for arch in supported():
        low, high = tune_range(arch)
        assert f"{arch} {low}..{high}" in text


def test_best_boxes_takes_decoded_frames(tmp_path):
    """identify-video --detect passes decoded frames: each was refused as 'unsupported image source',
    so every frame was searched whole and --detect did nothing."""
    from productlens.pipeline.detect import best_boxes

    model = _write_user_detector(tmp_path / "mine.onnx", square=True)
    det = load_detector(f"onnx:{model}")
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    red.save(tmp_path / "red.png")
    boxes = best_boxes(det, [red, str(tmp_path / "red.png"), b"not an image"], progress=False)
    assert boxes[0] is not None and boxes[0] == boxes[1] and boxes[2] is None


def test_detect_output_names_are_unique_and_checks_before_training(tmp_path):
    """Output names: a-1.jpg beside two a.jpg had its results overwritten by the second a.jpg's. A size
    outside 32..8192 failed after the training (or took all memory), an empty category name made a
    detector that did not load, and unreadable training images were not named."""
    from productlens.data.coco import read_coco
    from productlens.pipeline.detect import _names
    from productlens.pipeline.detect_train import DetectTrainOptions, train_detector
    from productlens.types import ProductLensError

    names = _names(["n/a-1.jpg", "n/s1/a.jpg", "n/s2/a.jpg", "n/s3/a.jpg"])
    assert len(set(names)) == 4 and names[0] == "a-1"
    for size in (0, 16, 100_000):
        with pytest.raises(ProductLensError, match="from 32 to 8192 pixels"):
            DetectTrainOptions(size=size)
    base = {"images": [{"id": 1, "file_name": "gone/a.jpg", "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20]}]}
    (tmp_path / "empty_name.json").write_text(json.dumps({**base, "categories": [{"id": 1, "name": " "}]}))
    with pytest.raises(ProductLensError, match="category id 1 has an empty name"):
        read_coco(tmp_path / "empty_name.json")
    (tmp_path / "gone.json").write_text(json.dumps({**base, "categories": [{"id": 1, "name": "bag"}]}))
    with pytest.raises(ProductLensError, match="no training image could be read.*1 skipped: .*gone/a.jpg"):
        train_detector(read_coco(tmp_path / "gone.json"), tmp_path / "det",
                       DetectTrainOptions(backbone="efficientnet-lite0", size=64, epochs=1))


def test_detect_leaves_its_own_output_folder_out_of_the_inputs(tmp_path):
    """`detect FOLDER --out FOLDER/det` run twice took the first run's drawings for inputs and stopped."""
    from typer.testing import CliRunner

    from productlens.cli.main import app

    model = _write_user_detector(tmp_path / "mine.onnx", square=True)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(photos / "red.jpg")
    for _ in range(2):
        res = CliRunner().invoke(app, ["detect", str(photos), "--model", f"onnx:{model}", "--out", str(photos / "det")])
        assert res.exit_code == 0 and "wrote 1 drawn images" in res.output, res.output


def test_best_box_of_a_large_jpeg_decodes_it_small_and_gives_the_photos_pixels(tmp_path, monkeypatch):
    """--detect decoded a query in full for the detector (80 ms for a 12 MP JPEG, more than the
    detector), then again for the search. A file is now drafted to the detector's input size, and
    the box scaled back to the photo's own pixels, EXIF rotation included."""
    from productlens.data import images
    from productlens.pipeline.detect import best_box, best_box_of

    det = load_detector(f"onnx:{_write_user_detector(tmp_path / 'mine.onnx', square=True)}")
    photo = Image.new("RGB", (1024, 2048), (255, 0, 0))
    photo.save(tmp_path / "big.jpg", quality=95)
    decoded = []
    real = images._decode
    monkeypatch.setattr(images, "_decode", lambda img, name: decoded.append(img.size) or real(img, name))
    box = best_box_of(det, str(tmp_path / "big.jpg"))
    assert decoded == [(128, 256)]  # an eighth, the most a JPEG shrinks while it is decoded
    full = best_box(det, photo)
    assert box.as_tuple() == pytest.approx(full.as_tuple(), abs=1.0)  # (128, 256, 512, 1024) either way
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 2048 x 1024
    photo.save(tmp_path / "turned.jpg", quality=95, exif=exif)
    turned = best_box_of(det, (tmp_path / "turned.jpg").read_bytes())
    assert turned.as_tuple() == pytest.approx(best_box(det, photo.transpose(Image.Transpose.ROTATE_270)).as_tuple(),
                                              abs=1.0)
    with Image.open(tmp_path / "turned.jpg") as opened:  # a PIL image from Image.open is turned upright too
        assert best_box_of(det, opened).as_tuple() == pytest.approx(turned.as_tuple(), abs=1.0)

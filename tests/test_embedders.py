"""Every registered embedder runs on random input; onnx:PATH loads a user model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from productlens.models.embedders import EMBEDDERS, create_embedder, list_embedders
from productlens.models.embedders.base import Preprocess
from productlens.types import ProductLensError


@pytest.mark.parametrize("name", list_embedders())
def test_registered_embedder_runs_on_random_input(name: str) -> None:
    emb = create_embedder(name)
    size = emb.preprocess.size
    assert emb.preprocess.uint8 and emb.preprocess.shape == (size, size, 3)
    batch = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    vecs = emb.embed(batch)
    assert vecs.shape == (2, emb.dim) and emb.dim == 1280
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])  # different inputs, different vectors
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 80, 3), dtype=np.uint8))
    assert emb.embed_images([img]).shape == (1, emb.dim)


def test_bundled_graph_normalises_and_pools_like_numpy() -> None:
    """The exported graph (uint8 pixels in, GeM features out) equals the torch backbone
    on numpy-normalised float input followed by numpy GeM pooling."""
    torch = pytest.importorskip("torch")
    from productlens.models.embedders.base import gem, l2_normalize
    from productlens.models.embedders.efficientnet_lite import build_torch

    emb = create_embedder("efficientnet-lite0")
    pixels = np.random.default_rng(3).integers(0, 256, (2, *emb.preprocess.shape), dtype=np.uint8)
    as_float = Preprocess(size=emb.preprocess.size, mean=emb.preprocess.mean, std=emb.preprocess.std)
    x = np.stack([as_float.to_array(p) for p in pixels])
    with torch.no_grad():
        feats = build_torch("efficientnet-lite0")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(emb.embed(pixels), l2_normalize(gem(feats, 3.0)), atol=2e-5)
    with pytest.raises(ProductLensError, match="uint8"):
        emb.run(x.transpose(0, 2, 3, 1))  # float input for a uint8 model


def test_export_is_cached_by_weight_hash() -> None:
    a = create_embedder("efficientnet-lite0")
    b = create_embedder("efficientnet-lite0")
    assert a.onnx_path == b.onnx_path and a.onnx_path.exists()
    assert "efficientnet-lite0-" in a.onnx_path.name


def test_ensemble_concatenates_its_members_unit_vectors() -> None:
    """``ensemble:A+B`` takes the largest member's pixels and returns each member's unit
    vector (scaled by 1/sqrt(2)) side by side; a member's part equals the member's own
    embedding of the same pixels resized to its input size (resized inside the graph)."""
    ens = create_embedder("ensemble:efficientnet-lite2+efficientnet-lite0")
    lite2, lite0 = create_embedder("efficientnet-lite2"), create_embedder("efficientnet-lite0")
    assert ens.dim == 2560 and ens.preprocess.size == 260 and ens.preprocess.uint8
    rng = np.random.default_rng(4)
    img = Image.fromarray(np.kron(rng.integers(0, 255, (26, 26, 3)), np.ones((10, 10, 1))).astype(np.uint8))
    vec = ens.embed_images([img])[0]
    assert np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    np.testing.assert_allclose(vec[:1280] * np.sqrt(2), lite2.embed_images([img])[0], atol=1e-4)
    part = vec[1280:] * np.sqrt(2)
    assert np.isclose(np.linalg.norm(part), 1.0, atol=1e-4)
    assert float(part @ lite0.embed_images([img])[0]) > 0.97  # bilinear in the graph vs Pillow's resize


def test_joined_embedder_runs_companions_on_the_whole_image_only() -> None:
    """A joined embedder is [main / sqrt(3), companions / sqrt(3)]; pooled over views, the main
    part is the main backbone's pooled descriptor and the companions see only the first view."""
    from productlens.data.augment import PooledViewEmbedder, view_set
    from productlens.models.embedders.joined import companions_for, joined

    lite2 = create_embedder("efficientnet-lite2")
    names = companions_for("efficientnet-lite2")
    assert names == ["efficientnet-lite0", "mobilenetv2"]
    with pytest.raises(ProductLensError, match="bundled backbone"):
        companions_for("onnx:x.onnx")
    emb = joined(lite2, names)
    assert emb.dim == 3840 and emb.preprocess is lite2.preprocess
    rng = np.random.default_rng(5)
    img = Image.fromarray(np.kron(rng.integers(0, 255, (26, 26, 3)), np.ones((10, 10, 1))).astype(np.uint8))
    vec = emb.embed_images([img])[0]
    assert np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    np.testing.assert_allclose(vec[:1280] * np.sqrt(3), lite2.embed_images([img])[0], atol=1e-4)
    assert np.isclose(np.linalg.norm(vec[1280:]), np.sqrt(2 / 3), atol=1e-4)
    views = view_set("regions")
    pooled = PooledViewEmbedder(emb, views).embed_images([img])[0]
    np.testing.assert_allclose(pooled[:1280] * np.sqrt(3), PooledViewEmbedder(lite2, views).embed_images([img])[0],
                               atol=1e-4)
    np.testing.assert_allclose(pooled[1280:], vec[1280:], atol=1e-5)  # companions: the whole image
    assert joined(lite2, []) is lite2
    with pytest.raises(ProductLensError, match="companions"):
        joined(lite2, ["efficientnet-lite0", "resnet50"])


@pytest.mark.parametrize("spec", ["efficientnet-lite2", "efficientnet-lite2+efficientnet-lite2",
                                  "efficientnet-lite2+resnet50"])
def test_ensemble_refuses_bad_member_lists(spec: str) -> None:
    with pytest.raises(ProductLensError, match="ensemble"):
        create_embedder(f"ensemble:{spec}")


def test_unknown_embedder_lists_known_names() -> None:
    with pytest.raises(KeyError, match="efficientnet-lite2"):
        create_embedder("resnet-9000")
    with pytest.raises(ProductLensError) as err:  # a clear error of ours too, printed without quotes
        create_embedder("resnet-9000")
    assert str(err.value).startswith("unknown embedder 'resnet-9000'; known: ")
    with pytest.raises(ProductLensError, match="the embedder name must be a string, got None"):
        create_embedder(None)  # had been "'NoneType' object has no attribute 'partition'"
    assert None not in EMBEDDERS
    with pytest.raises(ProductLensError, match="embed_images takes PIL images, got ndarray"):
        create_embedder("efficientnet-lite0").embed_images([np.zeros((20, 20, 3), np.uint8)])


def _tiny_onnx(path, out_map: bool = False, batch: str | int = "N", nan: bool = False, pool_batch: bool = False,
               tokens_first: bool = False) -> None:
    """A 3-channel model: 1x1 conv to 8 channels (+ global average pool unless out_map). ``batch``: the
    input's batch axis (1: a model exported for one image a call); ``nan``: its output is all NaN;
    ``pool_batch``: it averages the batch into one row; ``tokens_first``: a first output of N x 8 x 256
    "tokens" before the embedding, as transformer exports list last_hidden_state first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["map"])]
    nodes.append(helper.make_node("Relu", ["map"], ["relu"]))
    inits = [w]
    if nan:
        inits.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
        nodes.append(helper.make_node("Mul", ["relu0", "nan"], ["relu"]))
        nodes[1] = helper.make_node("Relu", ["map"], ["relu0"])
    out_name, out_shape = "relu", [batch, 8, 16, 16]
    if not out_map:
        nodes += [helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["emb"])]
        out_name, out_shape = "emb", [batch, 8]
    if pool_batch:
        nodes.append(helper.make_node("ReduceMean", [out_name], ["mean"], axes=[0], keepdims=1))
        out_name, out_shape = "mean", [1, 8]
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)]
    if tokens_first:
        inits.append(numpy_helper.from_array(np.array([0, 8, -1], np.int64), "tshape"))
        nodes.append(helper.make_node("Reshape", ["relu", "tshape"], ["tokens"]))
        outputs.insert(0, helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [batch, 8, 256]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("out_map", [False, True])
def test_user_onnx_model_with_preprocessing_json(tmp_path, out_map: bool) -> None:
    model = tmp_path / "tower.onnx"
    _tiny_onnx(model, out_map)
    (tmp_path / "tower.json").write_text(json.dumps({"size": 16, "mean": [0.48, 0.46, 0.41],
                                                      "std": [0.27, 0.26, 0.28], "resize": "crop"}))
    emb = create_embedder(f"onnx:{model}")
    assert emb.dim == 8 and emb.preprocess.size == 16 and emb.preprocess.resize == "crop"
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    v = emb.embed_images([img, img.transpose(Image.FLIP_LEFT_RIGHT)])
    assert v.shape == (2, 8) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_user_onnx_model_input_type_must_match_json(tmp_path) -> None:
    model = tmp_path / "tower.onnx"
    _tiny_onnx(model)
    (tmp_path / "tower.json").write_text(json.dumps({"size": 16, "uint8": True}))
    with pytest.raises(ProductLensError, match="tensor\\(float\\)"):
        create_embedder(f"onnx:{model}")


def test_user_onnx_model_errors(tmp_path) -> None:
    with pytest.raises(ProductLensError, match="not found"):
        create_embedder(f"onnx:{tmp_path / 'missing.onnx'}")
    model = tmp_path / "tower.onnx"
    _tiny_onnx(model)
    with pytest.raises(ProductLensError, match="preprocessing"):
        create_embedder(f"onnx:{model}")
    (tmp_path / "tower.json").write_text('{"mean": [0.5]}')
    with pytest.raises(ProductLensError, match="size"):
        create_embedder(f"onnx:{model}")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    (tmp_path / "bad.json").write_text('{"size": 16}')
    with pytest.raises(ProductLensError, match="cannot load"):
        create_embedder(f"onnx:{bad}")


def test_a_user_model_for_one_image_a_call_runs_batches_one_by_one(tmp_path) -> None:
    """A model exported with its batch axis fixed to 1 loaded, then failed on every batch of two or more
    with onnxruntime's own error."""
    _tiny_onnx(tmp_path / "one.onnx", batch=1)
    _tiny_onnx(tmp_path / "any.onnx")
    for name in ("one", "any"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"size": 16}))
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 20, 3), dtype=np.uint8)) for i in range(5)]
    one = create_embedder(f"onnx:{tmp_path / 'one.onnx'}").embed_images(imgs)
    np.testing.assert_allclose(one, create_embedder(f"onnx:{tmp_path / 'any.onnx'}").embed_images(imgs), atol=1e-6)


@pytest.mark.parametrize("spec, why", [
    ({"size": 32}, "has shape \\['N', 3, 16, 16\\], but its preprocessing gives N x 3 x 32 x 32"),
    ({"size": 16, "mean": ["a", "b", "c"]}, "'mean' needs 3 finite numbers"),
    ({"size": 16, "mean": 0.5}, "'mean' needs 3 finite numbers"),
    ({"size": 16, "std": [float("nan"), 1, 1]}, "'std' needs 3 finite numbers"),
    ({"size": 16, "uint8": "false"}, "'uint8' must be true or false"),
    ({"size": 16.9}, "whole number 'size'"),
    ({"size": True}, "whole number 'size'"),
    ({"size": 10 ** 6}, "input size 1000000 is too large"),  # its probe had asked for 10.9 TiB
    ([16], "must be a JSON object"),
])
def test_user_model_mistakes_are_named_with_their_file(tmp_path, spec, why) -> None:
    """Each was a raw ValueError / TypeError / onnxruntime error, a message without the file, or accepted
    (a NaN std gave NaN vectors; "false" was read as true; 16.9 as 16)."""
    _tiny_onnx(tmp_path / "t.onnx")
    (tmp_path / "t.json").write_text(json.dumps(spec))
    with pytest.raises(ProductLensError, match="t.(json|onnx): .*" + why):
        create_embedder(f"onnx:{tmp_path / 't.onnx'}")


def test_a_user_model_must_keep_its_batch_axis(tmp_path) -> None:
    """A model that pooled its batch into one row gave one vector for 18 photos (a raw reshape traceback in
    classify train); one with its batch fixed to 4 failed with onnxruntime's own words. A tower that lists
    its tokens before its embedding is read from the embedding."""
    for name, kwargs, why in (("pooled", {"pool_batch": True}, "returned 1 rows for a batch of 2 images"),
                              ("four", {"batch": 4}, "batch axis fixed to 4")):
        _tiny_onnx(tmp_path / f"{name}.onnx", **kwargs)
        (tmp_path / f"{name}.json").write_text(json.dumps({"size": 16}))
        with pytest.raises(ProductLensError, match=f"{name}.onnx: .*{why}"):
            create_embedder(f"onnx:{tmp_path / name}.onnx")
    _tiny_onnx(tmp_path / "tower.onnx", tokens_first=True)
    _tiny_onnx(tmp_path / "plain.onnx")
    for name in ("tower", "plain"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"size": 16}))
    img = Image.new("RGB", (20, 20), (90, 30, 200))
    tower = create_embedder(f"onnx:{tmp_path / 'tower.onnx'}")
    assert tower.dim == 8
    np.testing.assert_allclose(tower.embed_images([img]),
                               create_embedder(f"onnx:{tmp_path / 'plain.onnx'}").embed_images([img]), atol=1e-6)


def test_a_user_model_that_returns_nan_is_refused(tmp_path) -> None:
    _tiny_onnx(tmp_path / "t.onnx", nan=True)
    (tmp_path / "t.json").write_text("\ufeff" + json.dumps({"size": 16}))  # a BOM is fine
    emb = create_embedder(f"onnx:{tmp_path / 't.onnx'}")
    with pytest.raises(ProductLensError, match="t.onnx: the model returned NaN"):
        emb.embed_images([Image.new("RGB", (20, 20), (9, 9, 9))])


def test_pil_images_are_taken_as_a_path_would_give_them(tmp_path) -> None:
    """A PIL image from Image.open with EXIF orientation 6 was embedded unrotated, and a 16-bit one
    clipped instead of scaled, unlike the same photo given by its path."""
    from productlens.pipeline.embed import embed_items

    emb = create_embedder("efficientnet-lite0")
    rng = np.random.default_rng(0)
    upright = Image.fromarray(np.kron(rng.integers(0, 255, (6, 4, 3), dtype=np.uint8), np.ones((20, 20, 1), np.uint8)))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: a viewer rotates it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    by_path = embed_items(emb, [str(tmp_path / "turned.jpg")], progress=False).vectors
    opened = Image.open(tmp_path / "turned.jpg")
    assert float(by_path[0] @ emb.embed_images([opened])[0]) > 0.999
    assert float(by_path[0] @ embed_items(emb, [Image.open(tmp_path / "turned.jpg")], progress=False).vectors[0]) > 0.999
    grey = (np.asarray(upright.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    from_path = embed_items(emb, [str(tmp_path / "g16.png")], progress=False).vectors[0]
    assert float(from_path @ emb.embed_images([Image.open(tmp_path / "g16.png")])[0]) > 0.999


def test_shared_user_model_is_loaded_again_when_its_files_change(tmp_path) -> None:
    from productlens.models import embedders
    from productlens.models.embedders import get_embedder

    _tiny_onnx(tmp_path / "t.onnx")
    (tmp_path / "t.json").write_text(json.dumps({"size": 16}))
    name = f"onnx:{tmp_path / 't.onnx'}"
    first = get_embedder(name)
    assert get_embedder(name) is first  # shared while nothing changes
    (tmp_path / "t.json").write_text(json.dumps({"size": 16, "resize": "crop"}))
    second = get_embedder(name)
    assert second is not first and second.preprocess.resize == "crop"
    assert sum(k.startswith(name) for k in embedders._CACHE) == 1  # the old model is let go


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_preprocess_modes_give_model_input(mode: str) -> None:
    pp = Preprocess(size=32, resize=mode)
    img = Image.new("RGB", (100, 40), (255, 0, 0))
    arr = pp(img)
    assert arr.shape == (3, 32, 32) and arr.dtype == np.float32
    assert arr.max() <= 1.0 and arr.min() >= -1.0
    if mode == "pad":  # white padding above and below the wide red image
        assert np.allclose(arr[:, 0, 16], 1.0)
    else:
        assert np.allclose(arr[:, 16, 16], [1.0, -1.0, -1.0])


@pytest.mark.parametrize("size", [(8000, 40), (40, 8000)])
def test_squash_pads_a_panorama_instead_of_flattening_it(size) -> None:
    pp = Preprocess(size=30, uint8=True)  # stretches by 3 at most
    red = pp.pixels(Image.new("RGB", size, (255, 0, 0)))
    is_red = (red == (255, 0, 0)).all(-1)
    band = is_red.any(axis=1 if size[0] > size[1] else 0)
    assert red.shape == (30, 30, 3) and np.flatnonzero(band).tolist() == [14]  # 30 * 3 * 40 / 8000: a 1-px band
    assert ((red == 255).all(-1) | is_red).all()  # the rest is white
    assert (pp.pixels(Image.new("RGB", (90, 30), (255, 0, 0))) == (255, 0, 0)).all()  # 3:1 is still squashed
    with pytest.raises(ProductLensError, match="max_stretch"):
        Preprocess.from_json({"size": 16, "max_stretch": 0.5})


def test_preprocess_float_matches_formula() -> None:
    pp = Preprocess(size=24, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    ref = (np.asarray(img, np.float32) / 255 - np.float32(pp.mean)) / np.float32(pp.std)
    np.testing.assert_allclose(pp(img), ref.transpose(2, 0, 1), atol=1e-5)
    raw = Preprocess(size=24, uint8=True)
    assert raw(img).dtype == np.uint8 and np.array_equal(raw(img), np.asarray(img))
    assert Preprocess.from_json(raw.to_json()) == raw


def test_preprocess_says_which_keys_it_ignores(caplog) -> None:
    with caplog.at_level("WARNING"):
        pp = Preprocess.from_json({"size": 32, "sise": 5, "mean": [0.5, 0.5, 0.5]})
    assert pp.size == 32 and "'sise' unknown, ignored" in caplog.text and "max_stretch" in caplog.text


@pytest.mark.parametrize("size", [(260, 260), (300, 200), (150, 90)])
def test_resize_is_bilinear_with_or_without_opencv(size, monkeypatch) -> None:
    """OpenCV (optional, used to enlarge) and Pillow agree within one grey level."""
    from productlens.models.embedders import base

    rng = np.random.default_rng(5)
    smooth = rng.integers(0, 256, (28, 21, 3)).astype(np.uint8)
    img = Image.fromarray(smooth).resize((224, 168), Image.BICUBIC)  # a smooth 224 x 168 photo
    fast = base.resize_rgb(img, size)
    monkeypatch.setattr(base, "_opencv", lambda: None)
    slow = base.resize_rgb(img, size)
    assert fast.shape == slow.shape == (size[1], size[0], 3)
    assert np.abs(fast.astype(int) - slow).max() <= 1

"""Run a detector exported to ONNX: preprocessing, the model, thresholds and NMS.

The contract (the same for productlens's own trained detectors and for a
user's ``onnx:PATH`` model) is an ONNX file with

* input: RGB pixels, 1 x H x W x 3 ``uint8`` (``"input": "uint8"``), or
  1 x 3 x H x W ``float32`` normalised with ``mean``/``std`` (``"input": "float"``);
* outputs ``boxes`` 1 x L x 4 (x0, y0, x1, y1 in input pixels) and ``scores``
  1 x L x C (per-class probabilities, C = number of labels);

and a JSON file beside it (``model.onnx`` -> ``model.json``, or
``detector.json`` in a detector folder) with::

    {"labels": ["bag", "shoes", ...],      # C tag names, in score order (required)
     "size": 512,                          # input size (required)
     "resize": "long",                     # "long": longer side to size, aspect kept, padded
                                           #   to a multiple of "multiple"; "square": size x size
     "multiple": 32,
     "input": "uint8",                     # or "float" with "mean"/"std" (on 0..1 pixels)
     "score_threshold": 0.05, "nms_iou": 0.6, "max_detections": 100}

productlens applies the score threshold and per-class NMS, and maps boxes back
to the original image's pixels. Loading checks the spec's fields and the model's
one input (rank 4, the dtype and layout above); a fixed input size must be
size x size ("square"), or for "long" the square photos are letterboxed into
(size rounded up to "multiple"; they are padded to it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from productlens.data.images import decoded_rgb, reduce_for
from productlens.models.detectors.nms import batched_nms, iou_matrix
from productlens.types import Box, ProductLensError, check_k

SPEC_KEYS = ("labels", "size")


@dataclass(frozen=True)
class Detection:
    """One detected object: box in original pixels, tag, score in [0, 1]; ``alternatives``:
    (tag, score) of other tags the detector gave the same object (see ``Detector.detect``)."""

    box: Box
    tag: str
    score: float
    label: int
    alternatives: tuple[tuple[str, float], ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"box": [round(v, 1) for v in self.box.as_tuple()], "tag": self.tag,
                               "score": round(float(self.score), 4)}
        if self.alternatives:
            out["alternatives"] = [{"tag": t, "score": round(float(s), 4)} for t, s in self.alternatives]
        return out


@dataclass(frozen=True)
class DetectorSpec:
    labels: tuple[str, ...]
    size: int
    resize: str = "long"
    multiple: int = 32
    input: str = "uint8"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    score_threshold: float = 0.05
    nms_iou: float = 0.6
    max_detections: int = 100

    @classmethod
    def from_json(cls, data: Any, where: str = "detector spec") -> "DetectorSpec":
        """Check ``data`` (a spec's JSON) field by field; ProductLensError naming ``where`` and the field."""
        if not isinstance(data, dict):
            raise ProductLensError(f"{where}: a detector spec is a JSON object with 'labels' and 'size' (see "
                                   f"productlens.models.detectors.runtime), got {type(data).__name__} {data!r:.40}")
        missing = [k for k in SPEC_KEYS if k not in data]
        if missing:
            raise ProductLensError(f"{where}: missing {', '.join(missing)} (see productlens.models.detectors.runtime)")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:  # a misspelt key ("score_treshold") would silently take its default
            logging.getLogger(__name__).warning("%s: key(s) %s unknown, ignored (the keys are %s)", where,
                                                ", ".join(map(repr, unknown)), ", ".join(known))
        labels = data["labels"]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise ProductLensError(f"{where}: 'labels' must be a non-empty list of tag names (strings), "
                                   f"got {labels!r:.60}")
        twice = sorted(x for x, n in Counter(labels).items() if n > 1)
        if twice:
            raise ProductLensError(f"{where}: 'labels' names {', '.join(map(repr, twice[:5]))} more than once; "
                                   "each class needs a name of its own")

        def field(key: str, kind: type, ok: Any, what: str) -> Any:
            v = data[key] if key in data else getattr(cls, key)
            if kind is str:
                good = isinstance(v, str)
            else:
                good = isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool)
            if not good or not ok(v):
                raise ProductLensError(f"{where}: {key!r} must be {what}, got {v!r:.40}")
            return kind(v)

        def triple(key: str, ok: Any, what: str) -> tuple[float, float, float]:
            v = data[key] if key in data else getattr(cls, key)
            if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and ok(x)
                    for x in v)):
                raise ProductLensError(f"{where}: {key!r} must be 3 {what} (R, G, B, on 0..1 pixels), got {v!r:.40}")
            return (float(v[0]), float(v[1]), float(v[2]))

        size = field("size", int, lambda v: 32 <= v <= 8192, "an integer from 32 to 8192 (pixels)")
        return cls(labels=tuple(labels), size=size,
                   resize=field("resize", str, lambda v: v in ("long", "square"), '"long" or "square"'),
                   multiple=field("multiple", int, lambda v: 1 <= v <= size, f"an integer from 1 to 'size' ({size})"),
                   input=field("input", str, lambda v: v in ("uint8", "float"), '"uint8" or "float"'),
                   mean=triple("mean", lambda x: True, "numbers"),
                   std=triple("std", lambda x: x > 0, "numbers > 0"),
                   score_threshold=field("score_threshold", float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
                   nms_iou=field("nms_iou", float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                   max_detections=field("max_detections", int, lambda v: v >= 1, "an integer >= 1"))

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "size": self.size, "resize": self.resize, "multiple": self.multiple,
                "input": self.input, "mean": list(self.mean), "std": list(self.std),
                "score_threshold": self.score_threshold, "nms_iou": self.nms_iou,
                "max_detections": self.max_detections}


def letterbox(img: Image.Image, size: int, multiple: int = 32, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """Resize so the longer side is ``size * scale`` (aspect kept), pad right/bottom with
    black to a multiple of ``multiple``. Returns (uint8 H x W x 3 pixels, resize factor)."""
    from productlens.models.embedders.base import resize_rgb

    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    f = size * scale / max(w, h)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    H, W = -(-nh // multiple) * multiple, -(-nw // multiple) * multiple
    out = np.zeros((H, W, 3), np.uint8)
    out[:nh, :nw] = resize_rgb(img, (nw, nh))
    return out, f


class Detector:
    """An ONNX detector and its spec; ``detect(image)`` gives :class:`Detection` s."""

    def __init__(self, onnx_path: str | Path, spec: DetectorSpec, *, name: str | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        from productlens.config import num_threads

        self.onnx_path = Path(onnx_path)
        self.spec = spec
        self.name = name or str(self.onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or num_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ProductLensError(f"cannot load ONNX detector {self.onnx_path}: {exc}") from None
        self._input, self._pad_to = self._check_input()
        outs = {o.name: o for o in self.session.get_outputs()}
        if not {"boxes", "scores"} <= set(outs):
            raise ProductLensError(f"{self.onnx_path}: a detector must have outputs 'boxes' and 'scores', "
                                   f"found {sorted(outs)}")
        n = outs["scores"].shape[-1] if outs["scores"].shape else None
        if isinstance(n, int) and n != len(spec.labels):
            raise ProductLensError(f"{self.onnx_path}: output 'scores' has {n} classes but its spec lists "
                                   f"{len(spec.labels)} labels")

    def _check_input(self) -> tuple[str, tuple[int, int] | None]:
        """The input's name, and the fixed H x W to pad letterboxed pixels to (None: any size);
        ProductLensError when the input does not follow the contract and the spec."""
        where, s = self.onnx_path, self.spec
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ProductLensError(f"{where}: a detector has one input (the photo), this model has {len(inputs)}: "
                                   f"{', '.join(i.name for i in inputs)}")
        inp = inputs[0]
        want, layout = ("tensor(uint8)", "1 x H x W x 3") if s.input == "uint8" else ("tensor(float)", "1 x 3 x H x W")
        if inp.type != want:
            raise ProductLensError(f"{where}: input {inp.name!r} is {inp.type}, but its spec's \"input\": "
                                   f"\"{s.input}\" feeds {want} {layout} (uint8 pixels: \"input\": \"uint8\"; "
                                   f"normalised float32: \"input\": \"float\")")
        shape = list(inp.shape or [])
        if len(shape) != 4:
            raise ProductLensError(f"{where}: input {inp.name!r} has rank {len(shape)} {shape}; a detector takes "
                                   f"a batch of one photo, {layout}")
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if s.input == "float" and dims[3] == 3 and dims[1] != 3:
            raise ProductLensError(f"{where}: input {inp.name!r} is {shape}, channels last; a float detector "
                                   f"takes {layout} (channels first)")
        c, (h, w) = (dims[3], dims[1:3]) if s.input == "uint8" else (dims[1], dims[2:4])
        if dims[0] not in (None, 1) or c not in (None, 3):
            raise ProductLensError(f"{where}: input {inp.name!r} is {shape}; the contract is {layout} "
                                   f"(one RGB photo)")
        if h is None and w is None:
            return inp.name, None
        if s.resize == "square":
            if (h or s.size) != s.size or (w or s.size) != s.size:
                raise ProductLensError(f"{where}: input {inp.name!r} has a fixed size {shape}, but its spec says "
                                       f"\"size\": {s.size} (\"resize\": \"square\" feeds {s.size} x {s.size})")
            return inp.name, None
        side = -(-s.size // s.multiple) * s.multiple
        if h != side or w != side:
            fix = (f"set \"size\": {h} (photos are letterboxed into {h} x {h})" if h == w and h is not None
                   else "a fixed input must be square")
            raise ProductLensError(
                f"{where}: input {inp.name!r} has a fixed size {shape}, but its spec's \"resize\": \"long\" with "
                f"\"size\": {s.size} letterboxes photos into {side} x {side}; {fix}, or use a model with a "
                "dynamic input size")
        return inp.name, (side, side)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def prepare(self, img: Image.Image) -> tuple[np.ndarray, tuple[float, float]]:
        """The model's input for ``img`` and the (x, y) factors from original to input pixels."""
        s = self.spec
        small = reduce_for(img, s.size)  # a large photo: resized from under twice the input, not from all of it
        if s.resize == "square":
            from productlens.models.embedders.base import resize_rgb

            rgb = small if small.mode == "RGB" else small.convert("RGB")
            pixels, factors = resize_rgb(rgb, (s.size, s.size)), (s.size / img.size[0], s.size / img.size[1])
        else:
            pixels, f = letterbox(small, s.size, s.multiple)
            factors = (f * small.size[0] / img.size[0], f * small.size[1] / img.size[1])
            if self._pad_to and pixels.shape[:2] != self._pad_to:  # a fixed-size model: pad to its square
                pixels = np.pad(pixels, ((0, self._pad_to[0] - pixels.shape[0]),
                                         (0, self._pad_to[1] - pixels.shape[1]), (0, 0)))
        if s.input == "uint8":
            return pixels[None], factors
        x = (pixels.astype(np.float32) / 255.0 - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), factors

    def raw(self, img: Image.Image) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """The model's (boxes L x 4, scores L x C) for ``img`` before thresholds and NMS."""
        x, factors = self.prepare(img)
        try:
            boxes, scores = self.session.run(["boxes", "scores"], {self._input: x})
        except Exception as exc:  # the user's model failing on this input: say which model and input
            raise ProductLensError(f"{self.onnx_path}: the model failed on a {' x '.join(map(str, x.shape))} "
                                   f"{x.dtype} input: {exc}") from None
        boxes, scores = np.asarray(boxes), np.asarray(scores)
        if scores.ndim != 3 or scores.shape[0] != 1 or scores.shape[2] != len(self.labels) \
                or boxes.shape != (1, scores.shape[1], 4):
            raise ProductLensError(f"{self.onnx_path}: outputs must be boxes 1 x L x 4 and scores 1 x L x "
                                   f"{len(self.labels)}, got {boxes.shape} and {scores.shape}")
        finite = np.isfinite(scores)
        if scores.size and not (finite.all() and scores.min() >= -1e-3 and scores.max() <= 1 + 1e-3):
            # raw logits had been reported as scores of 6.0, and NaN ones as no detection
            bad = float(scores[~finite | (scores < 0) | (scores > 1)].flat[0])
            raise ProductLensError(f"{self.onnx_path}: 'scores' must be probabilities in [0, 1], got {bad} "
                                   "(end the graph with a sigmoid or softmax)")
        return boxes[0], scores[0].clip(0, 1), factors

    def detect(self, img: Image.Image, *, score_threshold: float | None = None,
               max_detections: int | None = None, one_tag: bool = False) -> list[Detection]:
        """Boxes (original pixels, clipped to the image), tags and scores, best first.

        By default NMS runs per tag, so one object can come back several times with
        different tags (what the COCO protocol scores best). ``one_tag``: one box per
        object, for people to read: a box overlapping a better one of another tag
        (IoU above ``nms_iou``) is folded into it as one of its ``alternatives``.
        """
        if not isinstance(img, Image.Image):
            raise ProductLensError(f"detect takes a PIL image, got {type(img).__name__}; for a file use "
                                   "productlens.data.images.load_image(path) (EXIF-upright) or best_box_of")
        # Image.open's photo as shown, the frame search and load_image give boxes in; 8-bit RGB as the embedders
        # take it (a 16-bit photo had reached the model white, a transparent one black)
        img = decoded_rgb(img)
        s = self.spec
        thr = s.score_threshold if score_threshold is None else score_threshold
        top = check_k(s.max_detections if max_detections is None else max_detections, "max_detections")
        boxes, scores, (fx, fy) = self.raw(img)
        loc, cls = np.nonzero(scores > thr)
        if not len(loc):
            return []
        sc = scores[loc, cls]
        if len(sc) > 1000:  # the best candidates only
            best = np.argpartition(-sc, 1000)[:1000]
            loc, cls, sc = loc[best], cls[best], sc[best]
        b = boxes[loc].astype(np.float64) / np.array([fx, fy, fx, fy])
        W, H = img.size
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, W)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, H)
        ok = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
        b, cls, sc = b[ok], cls[ok], sc[ok]
        keep = batched_nms(b, sc, cls, s.nms_iou)
        dets = [Detection(Box(float(b[i, 0]), float(b[i, 1]), float(b[i, 2] - b[i, 0]), float(b[i, 3] - b[i, 1])),
                          self.labels[cls[i]], float(sc[i]), int(cls[i])) for i in keep]
        return (one_per_object(dets, s.nms_iou) if one_tag else dets)[:top]


def one_per_object(detections: Sequence[Detection], iou: float = 0.6, alternatives: int = 4) -> list[Detection]:
    """One box per object: best first, each detection overlapping a better kept one (IoU above
    ``iou``) is folded into it; its tag, if not the kept one's or already listed, becomes one
    of the kept one's (up to ``alternatives``) ``alternatives``."""
    dets = sorted(detections, key=lambda d: -d.score)
    if len(dets) < 2:
        return list(dets)
    xyxy = np.array([[d.box.x, d.box.y, d.box.x + d.box.w, d.box.y + d.box.h] for d in dets])
    over = iou_matrix(xyxy, xyxy) > iou
    kept: dict[int, list[tuple[str, float]]] = {}
    is_kept = np.zeros(len(dets), bool)
    for j, d in enumerate(dets):
        owners = np.flatnonzero(is_kept[:j] & over[:j, j])
        if not len(owners):
            kept[j], is_kept[j] = [*d.alternatives], True
        else:
            alt, owner = kept[int(owners[0])], dets[int(owners[0])]
            if len(alt) < alternatives and d.tag != owner.tag and all(d.tag != t for t, _ in alt):
                alt.append((d.tag, d.score))
    return [dataclasses.replace(dets[k], alternatives=tuple(alt)) for k, alt in kept.items()]


def load_spec(path: Path) -> DetectorSpec:
    """Read and check a detector spec (JSON, UTF-8); ProductLensError naming the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8-sig"))  # a BOM, as Windows editors write
    except FileNotFoundError:
        raise ProductLensError(f"detector spec {path} does not exist (labels, size: see "
                               "productlens.models.detectors.runtime)") from None
    except UnicodeDecodeError as exc:
        raise ProductLensError(f"cannot read detector spec {path}: not UTF-8 JSON ({exc})") from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON
        raise ProductLensError(f"cannot read detector spec {path}: {exc}") from None
    return DetectorSpec.from_json(data, str(path))

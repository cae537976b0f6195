"""The image-embedder contract: a model created together with its preprocessing.

An embedder maps a batch of preprocessed images to L2-normalised vectors
(N x dim). Its :class:`Preprocess` turns a decoded RGB PIL image into the one
array the model takes per image, so ``embedder.preprocess`` and
``embedder.embed`` always travel together (the open_clip lesson)::

    emb.embed(np.stack([emb.preprocess(img) for img in images]))

Two input formats: the bundled backbones take the resized pixels as they are
(uint8 H x W x 3, RGB) and normalise them inside their ONNX graph
(``Preprocess.uint8``); a user's ``onnx:PATH`` model takes float32
3 x H x W, normalised here with the ``mean``/``std`` of its JSON file.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from productlens.data.images import decoded_rgb, reduce_for, to_rgb
from productlens.types import ProductLensError

RESIZE_MODES = ("squash", "crop", "pad")


@functools.cache
def _opencv():
    """``cv2`` if OpenCV is installed (it is optional), else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def resize_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB image to ``size`` (w, h), as a uint8 h x w x 3 array.

    Enlarging goes through OpenCV when it is installed: ~4x less CPU than Pillow,
    the same pixels within one grey level. Shrinking (on either axis) stays with
    Pillow, whose bilinear filter widens with the scale (antialiasing) where
    OpenCV's samples only two pixels.
    """
    if img.size == size:
        return np.asarray(img)
    cv2 = _opencv()
    if cv2 is not None and size[0] >= img.size[0] and size[1] >= img.size[1]:
        return cv2.resize(np.asarray(img), size, interpolation=cv2.INTER_LINEAR)
    return np.asarray(img.resize(size, Image.BILINEAR, reducing_gap=None))


def _on_white(img: Image.Image, side: int, size: tuple[int, int]) -> np.ndarray:
    """``img`` resized to ``size`` (w, h), centred on a white ``side`` x ``side`` canvas."""
    nw, nh = size
    left, top = (side - nw) // 2, (side - nh) // 2
    canvas = np.full((side, side, 3), 255, np.uint8)
    canvas[top:top + nh, left:left + nw] = resize_rgb(img, (nw, nh))
    return canvas


MAX_SIZE = 4096  # pixels on a side of a model's input


@dataclass(frozen=True)
class Preprocess:
    """Resize (and normalise) an RGB image for a model.

    ``size``: the square model input side. ``mean``/``std``: per-channel, on
    pixel values scaled to [0, 1]. ``resize``: ``squash`` (whole image to
    size x size, aspect ratio not kept: nothing of the product is cut off),
    ``crop`` (shorter side to size, centre crop) or ``pad`` (longer side to
    size, padded with white, the usual seller-photo background).
    ``max_stretch``: ``squash`` stretches one axis against the other by at most
    this factor; a longer image (a panorama, a thin box) is padded with white
    to that ratio first, instead of being flattened out of recognition.
    ``uint8``: the model takes the resized pixels as they are (uint8
    size x size x 3, RGB) and applies ``mean``/``std`` itself; otherwise it takes
    float32 3 x size x size, normalised here.
    """

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: str = "squash"
    uint8: bool = False
    max_stretch: float = 3.0

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ProductLensError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.size < 8:
            raise ProductLensError(f"input size {self.size} is too small")
        if self.size > MAX_SIZE:  # a probe of 1,000,000 pixels a side had asked for 10.9 TiB
            raise ProductLensError(f"input size {self.size} is too large (at most {MAX_SIZE})")
        if not self.max_stretch >= 1.0:
            raise ProductLensError(f"max_stretch must be at least 1, got {self.max_stretch}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one preprocessed image (``__call__``'s result)."""
        s = self.size
        return (s, s, 3) if self.uint8 else (3, s, s)

    @property
    def dtype(self) -> type:
        return np.uint8 if self.uint8 else np.float32

    def pixels(self, img: Image.Image) -> np.ndarray:
        """The image resized for the model, as uint8 size x size x 3 RGB pixels."""
        s = self.size
        img = to_rgb(img)  # 16-bit scaled, alpha on white (convert("RGB") clipped and used black)
        w, h = img.size
        if self.resize == "squash":
            k = self.max_stretch
            if w > k * h:
                return _on_white(img, s, (s, max(1, round(s * k * h / w))))
            if h > k * w:
                return _on_white(img, s, (max(1, round(s * k * w / h)), s))
            return resize_rgb(img, (s, s))
        if self.resize == "crop":
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            left, top = (nw - s) // 2, (nh - s) // 2
            return resize_rgb(img, (nw, nh))[top:top + s, left:left + s]
        scale = s / max(w, h)
        return _on_white(img, s, (max(1, round(w * scale)), max(1, round(h * scale))))

    def to_array(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Resized uint8 pixels -> the model's input for one image (into ``out`` if given).

        ``uint8``: the pixels themselves; else float32 3 x size x size,
        ``(pixels / 255 - mean) / std``.
        """
        if self.uint8:
            if out is None:
                return pixels
            out[...] = pixels
            return out
        if out is None:
            out = np.empty(self.shape, np.float32)
        scale = 1.0 / (255.0 * np.asarray(self.std, np.float32))
        shift = np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)
        np.multiply(pixels.transpose(2, 0, 1), scale[:, None, None], out=out)
        out -= shift[:, None, None]
        return out

    def __call__(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """A decoded image -> the model's input for it (``shape``, ``dtype``); a large one is first
        reduced to under twice ``size`` (:func:`~productlens.data.images.reduce_for`)."""
        return self.to_array(self.pixels(reduce_for(img, self.size)), out)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "Preprocess":
        """The preprocessing an ``onnx:PATH`` model's JSON file describes: ``size`` (a whole number of
        pixels), optional ``mean`` and ``std`` (3 finite numbers each, std > 0), ``resize`` (one of
        ``RESIZE_MODES``), ``uint8`` (true or false) and ``max_stretch`` (a number >= 1).
        Anything else of the wrong type or range: ProductLensError saying which key."""
        if not isinstance(data, dict):
            raise ProductLensError(f"preprocessing must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:  # a misspelt key would silently take its default
            logging.getLogger(__name__).warning("preprocessing key(s) %s unknown, ignored (the keys are %s)",
                                                ", ".join(map(repr, unknown)), ", ".join(known))
        size = data.get("size")
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int):
            raise ProductLensError(f"preprocessing needs a whole number 'size' (pixels), got {size!r}")

        def triple(key: str) -> tuple[float, float, float]:
            value = data.get(key, [0.5, 0.5, 0.5])
            if (not isinstance(value, (list, tuple)) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                    or not all(math.isfinite(v) for v in value)):
                raise ProductLensError(f"preprocessing '{key}' needs 3 finite numbers (one per RGB channel), "
                                       f"got {value!r}")
            return tuple(float(v) for v in value)  # type: ignore[return-value]

        mean, std = triple("mean"), triple("std")
        if min(std) <= 0:
            raise ProductLensError(f"preprocessing 'std' must be positive, got {list(std)}")
        uint8 = data.get("uint8", False)
        if not isinstance(uint8, bool):
            raise ProductLensError(f"preprocessing 'uint8' must be true or false, got {uint8!r}")
        stretch = data.get("max_stretch", 3.0)
        if isinstance(stretch, bool) or not isinstance(stretch, (int, float)):
            raise ProductLensError(f"preprocessing 'max_stretch' must be a number, got {stretch!r}")
        resize = data.get("resize", "squash")
        if not isinstance(resize, str):
            raise ProductLensError(f"preprocessing 'resize' must be one of {RESIZE_MODES}, got {resize!r}")
        return cls(size=size, mean=mean, std=std, resize=resize, uint8=uint8, max_stretch=float(stretch))

    @classmethod
    def load(cls, path: Path) -> "Preprocess":
        """:meth:`from_json` of a JSON file (UTF-8, a BOM allowed); every error names the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProductLensError(f"cannot read preprocessing file {path}: {exc}") from None
        try:
            return cls.from_json(data)
        except ProductLensError as exc:
            raise ProductLensError(f"{path}: {exc}") from None


def gem(features: np.ndarray, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """Generalised-mean pooling of N x C x H x W maps to N x C (p=1: average)."""
    x = np.maximum(features, eps, dtype=np.float32)
    if p == 1.0:
        return x.mean(axis=(2, 3))
    return np.power(np.power(x, p).mean(axis=(2, 3)), 1.0 / p)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


#: The most images :meth:`Embedder.embed` gives onnxruntime in one call. On this project's 2-core
#: machine efficientnet-lite2 ran 113-121 images/s in calls of 8 to 32 and 90-106 in calls of 64 to
#: 224 (seven views of 32 photos), whose activations no longer fit the CPU's caches.
MODEL_BATCH = 32


class Embedder:
    """An ONNX image model plus its preprocessing.

    ``run`` is the bare model: one onnxruntime call on a batch of preprocessed
    images (``preprocess.shape`` each, ``preprocess.dtype``). ``embed`` runs it on
    at most :data:`MODEL_BATCH` images a call and adds GeM pooling (only for a model
    that returns a feature map; the bundled ones pool inside their graph) and L2
    normalisation.
    """

    def __init__(self, name: str, onnx_path: Path, preprocess: Preprocess, *,
                 gem_p: float = 3.0, threads: int | None = None) -> None:
        import onnxruntime as ort

        from productlens.config import num_threads

        if not gem_p > 0:
            raise ProductLensError(f"GeM's power must be positive, got {gem_p}")
        self.name = name
        self.onnx_path = Path(onnx_path)
        self.preprocess = preprocess
        self.gem_p = gem_p
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle inference threads must not spin: the decode thread needs that core
        # (measured: spinning made each ms of decoding cost ~2 ms of core time).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ProductLensError(f"cannot load ONNX model {self.onnx_path}: {exc}") from None
        inp = self.session.get_inputs()[0]
        expected = "tensor(uint8)" if preprocess.uint8 else "tensor(float)"
        if inp.type != expected:
            raise ProductLensError(
                f"{self.onnx_path}: input {inp.name!r} is {inp.type}, but its preprocessing "
                f"gives {expected} ('uint8': {str(preprocess.uint8).lower()})")
        self._input = inp.name
        outputs = self.session.get_outputs()
        # the embedding, or a feature map: an export of a transformer tower may list its tokens first
        # (last_hidden_state N x T x D before pooler_output N x D)
        fit = [o for o in outputs if len(o.shape) in (2, 4)]
        self._output = (fit or outputs)[0].name
        self._outputs = [f"{o.name} {list(o.shape)}" for o in outputs]
        shape = list(inp.shape)
        want = list(preprocess.shape)
        if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], want)):
            raise ProductLensError(
                f"{self.onnx_path}: input {inp.name!r} has shape {shape}, but its preprocessing gives "
                f"N x {' x '.join(map(str, want))} (size {preprocess.size}, 'uint8': {str(preprocess.uint8).lower()}); "
                "export it with that input, or with free height and width")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ProductLensError(f"{self.onnx_path}: input {inp.name!r} has its batch axis fixed to {shape[0]}; "
                                   "export it with a free batch axis (or 1)")
        #: a model exported for one image a call (batch axis fixed to 1) is run one image at a time
        self._one_at_a_time = shape[0] == 1
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        n = 1 if self._one_at_a_time else 2  # two: a model that pools its batch into one row is caught here
        out = self.run(np.zeros((n, *self.preprocess.shape), self.preprocess.dtype))
        if out.ndim not in (2, 4):
            raise ProductLensError(
                f"{self.onnx_path}: output must be N x D (embedding) or N x C x H x W (feature map),"
                f" got shape {out.shape} from {self._output!r} (outputs: {'; '.join(self._outputs)})")
        return int(out.shape[1])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The bare model: one inference call on a preprocessed batch."""
        batch = np.asarray(batch)
        if self.preprocess.uint8 and batch.dtype != np.uint8:
            raise ProductLensError(f"{self.name} takes uint8 pixels (N x {self.preprocess.size} x "
                                   f"{self.preprocess.size} x 3, see .preprocess), got {batch.dtype}")
        batch = np.ascontiguousarray(batch, self.preprocess.dtype)
        if self._one_at_a_time and len(batch) > 1:
            return np.concatenate([self.run(batch[i:i + 1]) for i in range(len(batch))])
        try:
            out = self.session.run([self._output], {self._input: batch})[0]
        except Exception as exc:  # onnxruntime's own types: a shape the model does not take, ...
            raise ProductLensError(f"{self.onnx_path}: the model failed on a batch of shape {list(batch.shape)} "
                                   f"({type(exc).__name__}: {exc})") from None
        if out.ndim == 0 or len(out) != len(batch):  # rows would be given to the wrong photos, or none
            raise ProductLensError(f"{self.onnx_path}: the model returned {out.shape[0] if out.ndim else 'no'} "
                                   f"rows for a batch of {len(batch)} images (output {self._output!r}, shape "
                                   f"{list(out.shape)}); its first axis must be the batch")
        return out

    def pool(self, out: np.ndarray) -> np.ndarray:
        return gem(out, self.gem_p) if out.ndim == 4 else np.asarray(out, np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed batch (N x ``preprocess.shape``) -> L2-normalised vectors (N x dim)."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        if len(batch) > MODEL_BATCH:
            return np.concatenate([self.embed(batch[i:i + MODEL_BATCH]) for i in range(0, len(batch), MODEL_BATCH)])
        out = self.pool(self.run(batch))
        if not np.isfinite(out).all():  # a broken export: NaN vectors would go into a catalog unnoticed
            raise ProductLensError(f"{self.onnx_path}: the model returned NaN or infinite values")
        return l2_normalize(out)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> L2-normalised vectors (N x dim); see :func:`embed_decoded`."""
        return embed_decoded(self, images)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, dim={self.dim}, input={self.preprocess.size})"


def embed_decoded(embedder: Any, images: Sequence[Image.Image]) -> np.ndarray:
    """PIL images -> ``embedder``'s vectors (N x dim). Each is taken as a caller gives it: one straight
    from ``Image.open`` is turned upright by its EXIF orientation, and any mode is made 8-bit RGB
    (alpha on white, 16-bit scaled: :func:`~productlens.data.images.decoded_rgb`)."""
    if not images:
        return np.zeros((0, embedder.dim), np.float32)
    bad = next((im for im in images if not isinstance(im, Image.Image)), None)
    if bad is not None:  # an array had failed deep inside with "'numpy.ndarray' object has no attribute 'format'"
        raise ProductLensError(f"embed_images takes PIL images, got {type(bad).__name__} (an array: "
                               "PIL.Image.fromarray(a); a file: productlens.data.images.load_image(path))")
    return embedder.embed(np.stack([embedder.preprocess(decoded_rgb(im)) for im in images]))

"""A trained classifier as a folder, and prediction with it (numpy + the embedder only).

Folder layout (written atomically: a temporary folder renamed into place)::

    head.npz       head weights, feature mean, temperature
    labels.json    the hierarchy: fine labels and each coarser level's labels + parents
    config.json    embedder name (and model fingerprint), views, head config, data source
    metrics.json   held-out figures measured at training time
    backbone/      the fine-tuned backbone, when training fine-tuned one (model.onnx, model.json)

:func:`load_classifier` re-creates the embedder recorded in ``config.json``
(``onnx:PATH`` included; a relative ``onnx:`` path is relative to the folder,
so the folder can be moved) on first use, and refuses a different one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from productlens.fileio import atomic_dir, read_npz
from productlens.models.classifiers.calibration import view_probs
from productlens.models.classifiers.head import HeadWeights
from productlens.models.classifiers.hierarchy import Hierarchy
from productlens.types import ImageError, ProductLensError, check_k

#: Format 2: the folder joins companion backbones (``config.json``: ``"companions"``).
#: Format 3: a view crops a mosaic of the image (a ``,tileK`` view key, e.g. the ``shelf`` set).
#: Each folder is written as the oldest format that describes it (plain ones as format 1, which every
#: version reads), so older versions refuse the rest by name instead of failing on a dimension or a key.
FORMAT_VERSION = 3
Prediction = list[tuple[str, float]]


def prepare(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Head input: features centred on the training mean, then L2-normalised (last axis)."""
    z = np.asarray(x, np.float32) - mean
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


@dataclass
class Predictions:
    """``probs[j]`` belongs to input ``ok[j]``; ``errors``: (index, source, message) of skipped inputs."""

    probs: np.ndarray
    ok: np.ndarray
    errors: list = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def top_k(self, k: int = 4) -> list[Prediction]:
        return top_k(self.probs, self.labels, k)


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[Prediction]:
    """The ``k`` most probable labels of each row, best first (argpartition: O(C) per row)."""
    k = max(1, min(int(k), probs.shape[1]))
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < probs.shape[1] else np.tile(np.arange(k), (len(probs), 1))
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(probs, part, 1), axis=1, kind="stable"), 1)
    return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


class Classifier:
    """A head over a frozen embedder; predicts top-k categories with calibrated probabilities."""

    def __init__(self, embedder_name: str, head: HeadWeights, mean: np.ndarray, hierarchy: Hierarchy, *,
                 temperature: float = 1.0, views: Sequence[str] = ("0.000,0.000,1.000,1.000",),
                 config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                 fingerprint: str = "", companions: Sequence[str] = ()) -> None:
        self.embedder_name = embedder_name
        #: bundled backbones joined to the embedder (:mod:`productlens.models.embedders.joined`)
        self.companions = list(companions)
        self.head = head
        self.mean = np.asarray(mean, np.float32)
        self.hierarchy = hierarchy
        self.temperature = float(temperature)
        self.views = list(views)
        self.config = config or {}
        self.metrics = metrics or {}
        self.fingerprint = fingerprint
        self.root: Path | None = None  # the folder a relative ``onnx:`` embedder path starts from
        self._embedder = None

    def attach_backbone(self, root: str | os.PathLike[str], embedder=None) -> None:
        """Use the model under ``root`` for a relative ``onnx:`` embedder (and ``embedder``, already loaded)."""
        self.root = Path(root)
        self._embedder = embedder

    @property
    def own_backbone(self) -> bool:
        """Whether the backbone is this classifier's own (fine-tuned, inside its folder)."""
        return self.embedder_name.startswith("onnx:") and not Path(self.embedder_name[5:]).expanduser().is_absolute()

    def _backbone_path(self) -> Path | None:
        """The model file of this classifier's own backbone, else None."""
        from productlens.models.embedders import local_model_path

        try:
            return local_model_path(self.embedder_name, self.root)
        except ProductLensError:
            raise ProductLensError(f"embedder {self.embedder_name} is relative to a classifier folder; "
                                   "load the classifier with load_classifier(folder)") from None

    @property
    def labels(self) -> list[str]:
        return self.hierarchy.labels

    @property
    def embedder(self):
        """The embedder this head was trained on (created on first use, checked against the record)."""
        if self._embedder is None:
            from productlens.models.embedders import create_embedder, get_embedder
            from productlens.models.embedders.joined import joined
            from productlens.pipeline.features_cache import model_change

            local = self._backbone_path()  # this classifier's own backbone: loaded afresh
            main = create_embedder(f"onnx:{local}") if local is not None else get_embedder(self.embedder_name)
            changed = model_change({"fingerprint": self.fingerprint, "preprocess": self.config.get("preprocess")},
                                   main, since="this classifier was trained")
            if changed:
                raise ProductLensError(f"{changed}; restore it or retrain the classifier")
            emb = joined(main, self.companions)
            if emb.dim != self.mean.shape[0]:
                raise ProductLensError(f"embedder {'+'.join([self.embedder_name, *self.companions])} gives "
                                       f"{emb.dim}-d features; this classifier expects {self.mean.shape[0]}")
            self._embedder = emb
        return self._embedder

    @property
    def input_size(self) -> int:
        """The side an image needs for every view (``load_image(..., target=input_size)`` decodes a large
        JPEG at a fraction of its size and loses nothing the views use)."""
        from productlens.data.augment import PooledViewPreprocess, View

        return PooledViewPreprocess(self.embedder.preprocess, [View.parse(v) for v in self.views]).size

    def probs_from_features(self, feats: np.ndarray, level: str | None = None) -> np.ndarray:
        """Features (N x D, or V x N x D for several views) -> calibrated probabilities at ``level``."""
        logits = self.head.logits(prepare(feats, self.mean))
        return self.hierarchy.probs(view_probs(logits, self.temperature).astype(np.float32), level)

    def predict_batch(self, sources: Sequence, *, level: str | None = None, progress: bool = False,
                      cache: bool = False) -> Predictions:
        """Probabilities for many images (paths, Items, URLs, bytes); unreadable ones are skipped."""
        from productlens.data.augment import View
        from productlens.pipeline.features_cache import embed_views

        feats = embed_views(self.embedder, list(sources), [View.parse(v) for v in self.views],
                            cache=cache, progress=progress)
        probs = self.probs_from_features(feats.vectors, level) if len(feats.ok) else \
            np.zeros((0, len(self.hierarchy.labels_of(level))), np.float32)
        return Predictions(probs, feats.ok, feats.errors, self.hierarchy.labels_of(level))

    def predict(self, images: Any, k: int = 4, *, level: str | None = None) -> list[Prediction]:
        """Top-``k`` ``(label, probability)`` per image, best first.

        ``images``: one or a list of paths, URLs, bytes, :class:`Item` or PIL images.
        Raises :class:`ImageError` naming the file when an image cannot be read.
        """
        k = check_k(k)  # 0 and -3 had given the top 1
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        from PIL import Image

        if any(isinstance(im, Image.Image) for im in batch):
            probs = self._probs_pil(batch, level)
            labels = self.hierarchy.labels_of(level)
        else:
            res = self.predict_batch(batch, level=level)
            if res.errors:
                raise ImageError("; ".join(msg for _, _, msg in res.errors))
            probs, labels = res.probs, res.labels
        return top_k(probs, labels, k)

    def _probs_pil(self, images: list, level: str | None) -> np.ndarray:
        import io

        from productlens.data.augment import StackedViewEmbedder, View
        from productlens.data.images import MIN_SIDE, load_image

        # the views as embed_views gives them in training: each photo reduced once (a decoded upload
        # may be 12 MP), then every view
        stacked = StackedViewEmbedder(self.embedder, [View.parse(v) for v in self.views])
        sources = [im.image if hasattr(im, "image") else im.getvalue() if isinstance(im, io.BytesIO) else im
                   for im in images]
        # a PIL image: upright, RGB; a 1x1 one is refused as search and the files' path refuse it
        decoded = [load_image(src, target=self.input_size, min_side=MIN_SIDE) for src in sources]
        vecs = stacked.embed(np.stack([stacked.preprocess(img) for img in decoded]))
        feats = vecs.reshape(len(decoded), len(self.views), -1).transpose(1, 0, 2)
        return self.probs_from_features(feats.astype(np.float16), level)

    # -- persistence -------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model folder atomically (an existing folder is replaced whole)."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            with open(tmp / "head.npz", "wb") as f:
                np.savez(f, mean=self.mean, temperature=np.float32(self.temperature), **self.head.arrays())
            (tmp / "labels.json").write_text(json.dumps(self.hierarchy.to_json(), indent=1))
            from productlens.data.augment import View

            tiles = any(View.parse(v).tile > 1 for v in self.views)
            config = {"format": 3 if tiles else 2 if self.companions else 1, "kind": "productlens-classifier",
                      "embedder": self.embedder_name,
                      "fingerprint": self.fingerprint, "dim": int(self.mean.shape[0]), "views": self.views,
                      "temperature": self.temperature, "companions": self.companions, **self.config}
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2))
            local = self._backbone_path()
            if local is not None:
                rel = Path(self.embedder_name[5:])
                if rel.parent != Path("."):  # the backbone's folder: model, preprocessing JSON, training notes
                    shutil.copytree(local.parent, tmp / rel.parent)
                else:
                    for f in local.parent.glob(local.stem + ".*"):
                        shutil.copy2(f, tmp / f.name)
        return folder


def load_classifier(path: str | os.PathLike[str], embedder: str | None = None) -> Classifier:
    """Load a classifier folder. ``embedder``: refuse the model unless it was trained on this backbone."""
    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text())
        labels = json.loads((folder / "labels.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
        arrays = read_npz(folder / "head.npz")
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ProductLensError(f"{folder}: not a productlens classifier folder ({exc})") from None
    if not {"mean", "temperature"} <= set(arrays):
        raise ProductLensError(f"{folder}: head.npz lacks {', '.join(sorted({'mean', 'temperature'} - set(arrays)))}")
    if not isinstance(config, dict) or config.get("kind") != "productlens-classifier":
        raise ProductLensError(f"{folder}: not a productlens classifier folder")
    fmt = config.get("format", 0)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise ProductLensError(f"{folder}: config.json's 'format' must be a whole number, got {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise ProductLensError(f"{folder}: written by a newer productlens (format {config['format']})")
    if not isinstance(config.get("embedder"), str):
        raise ProductLensError(f"{folder}: config.json names no 'embedder'")
    if embedder is not None and embedder != config["embedder"]:
        raise ProductLensError(f"{folder} was trained on {config['embedder']!r} features, not {embedder!r}")
    from productlens.data.augment import View

    views = config.get("views") or [View().key]  # a folder without views (a minimal one): the whole photo
    try:
        for v in views:
            View.parse(v)
        hierarchy = Hierarchy.from_json(labels)
        head = HeadWeights.from_arrays(arrays)
    except (KeyError, TypeError, ValueError, AttributeError, ProductLensError) as exc:  # a field missing or wrong
        raise ProductLensError(f"{folder}: damaged classifier folder ({type(exc).__name__}: {exc}); train it "
                               "again") from None
    temperature = float(np.asarray(arrays["temperature"]).reshape(-1)[0])
    if not (math.isfinite(temperature) and temperature > 0):  # NaN probabilities, printed with exit 0
        raise ProductLensError(f"{folder}: head.npz's temperature must be a positive number, got {temperature}")
    if head.weight.shape[0] != len(hierarchy.labels):
        raise ProductLensError(f"{folder}: head has {head.weight.shape[0]} classes, labels.json {len(hierarchy.labels)}")
    for lv in hierarchy.levels:
        if len(lv.parent) != len(hierarchy.labels) or (lv.parent < 0).any() or (lv.parent >= len(lv.labels)).any():
            raise ProductLensError(f"{folder}: labels.json's level {lv.name!r} gives no parent in range to some "
                                   f"{hierarchy.name}; train it again")
    extra = {k: v for k, v in config.items() if k not in
             ("format", "kind", "embedder", "fingerprint", "dim", "views", "temperature", "companions")}
    clf = Classifier(config["embedder"], head, arrays["mean"], hierarchy,
                     temperature=temperature, views=views,
                     config=extra, metrics=metrics, fingerprint=config.get("fingerprint", ""),
                     companions=config.get("companions", []))
    clf.root = folder
    return clf


__all__ = ["Classifier", "Predictions", "load_classifier", "prepare", "top_k"]

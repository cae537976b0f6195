"""Image -> text alignment: a linear map from image vectors into the text encoder's space.

Trained on a catalog's own (image, product text) pairs: ridge regression from
the image vector to the MiniLM vector of the product's text, with the ridge
strength chosen by leave-one-out cross-validation on those pairs
(scikit-learn's RidgeCV). A projected photo is then compared by cosine with
any text: product titles (match a photo by name), category names (zero-shot
categories, including ones with no training photo) or a shopper's text query
(find photos by words).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from productlens.fileio import atomic_dir, read_npz
from productlens.types import ProductLensError

ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass
class Alignment:
    """``project(x) = normalise((x - mean) @ weight + bias)``: image vectors -> unit text-space vectors."""

    mean: np.ndarray     # (image_dim,)
    weight: np.ndarray   # (image_dim, text_dim)
    bias: np.ndarray     # (text_dim,)
    image_space: str     # the image vectors it expects (an embedder name or "catalog:<embedder>")
    text_encoder: str
    alpha: float

    def project(self, image_vectors: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(image_vectors, np.float32))
        if x.shape[1] != self.mean.shape[0]:
            raise ProductLensError(f"alignment expects {self.mean.shape[0]}-d image vectors ({self.image_space}), "
                                   f"got {x.shape[1]}-d")
        y = (x - self.mean) @ self.weight + self.bias
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def similarity(self, image_vectors: np.ndarray, text_vectors: np.ndarray) -> np.ndarray:
        """Cosine of each projected image with each (unit) text vector: n_images x n_texts."""
        return self.project(image_vectors) @ np.asarray(text_vectors, np.float32).T

    def save(self, folder: str | Path, metrics: dict | None = None) -> Path:
        with atomic_dir(folder) as tmp:
            np.savez(tmp / "weights.npz", mean=self.mean, weight=self.weight, bias=self.bias)
            (tmp / "config.json").write_text(json.dumps({
                "kind": "alignment", "image_space": self.image_space, "text_encoder": self.text_encoder,
                "alpha": self.alpha, "image_dim": int(self.mean.shape[0]), "text_dim": int(self.bias.shape[0]),
                "metrics": metrics or {}}, indent=1))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, image_space: str | None = None) -> "Alignment":
        folder = Path(folder)
        try:
            cfg = json.loads((folder / "config.json").read_text())
            w = read_npz(folder / "weights.npz")
        except (OSError, ValueError) as e:
            raise ProductLensError(f"{folder}: not a readable alignment folder ({e})") from None
        if image_space is not None and cfg["image_space"] != image_space:
            raise ProductLensError(f"{folder} was trained on {cfg['image_space']} vectors, not {image_space}")
        return cls(w["mean"], w["weight"], w["bias"], cfg["image_space"], cfg["text_encoder"], float(cfg["alpha"]))


def fit_alignment(image_vectors: np.ndarray, text_vectors: np.ndarray, *, image_space: str,
                  text_encoder: str, alphas: Sequence[float] = ALPHAS,
                  sample_weight: np.ndarray | None = None) -> Alignment:
    """Fit the image -> text map on paired rows (``image_vectors[i]`` shows what ``text_vectors[i]`` says).

    ``sample_weight``: e.g. to balance products with many photos against those with few.
    Rows whose text vector is zero (no text) are ignored.
    """
    from sklearn.linear_model import RidgeCV

    x = np.asarray(image_vectors, np.float32)
    t = np.asarray(text_vectors, np.float32)
    if len(x) != len(t):
        raise ProductLensError(f"{len(x)} image vectors but {len(t)} text vectors")
    keep = np.linalg.norm(t, axis=1) > 0
    if keep.sum() < 2:
        raise ProductLensError("aligning images with text needs at least 2 photos with text")
    x, t = x[keep], t[keep]
    sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)[keep]
    mean = x.mean(0)
    reg = RidgeCV(alphas=list(alphas), fit_intercept=True).fit(x - mean, t, sample_weight=sw)
    return Alignment(mean.astype(np.float32), reg.coef_.T.astype(np.float32),
                     np.asarray(reg.intercept_, np.float32), image_space, text_encoder, float(reg.alpha_))


def product_text(title: object = "", category: object = "", name: object = "") -> str:
    """The text a photo of a product is paired with: its title, name and category."""
    parts, seen = [], set()
    for p in (title, str(name or "").replace("-", " "), category):
        s = " ".join(str(p or "").split())
        if s and s.lower() not in seen:
            parts.append(s)
            seen.add(s.lower())
    return ". ".join(parts)

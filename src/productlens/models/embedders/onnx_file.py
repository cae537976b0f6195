"""``onnx:PATH``: a user's own image model exported to ONNX (e.g. a CLIP/SigLIP tower).

The model takes one float32 input N x 3 x S x S (normalised here with the JSON's
``mean``/``std``) and returns either embeddings (N x D) or a feature map
(N x C x H x W, GeM-pooled). Its preprocessing sits beside it in ``PATH`` with
the suffix replaced by ``.json`` (or ``PATH.json``)::

    {"size": 224, "mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276],
     "resize": "crop"}

A model that normalises inside its graph, like the bundled ones, takes the
resized uint8 RGB pixels N x S x S x 3 instead: add ``"uint8": true``.
"""

from __future__ import annotations

from pathlib import Path

from productlens.models.embedders.base import Embedder, Preprocess
from productlens.types import ProductLensError


def preprocess_file(model: Path) -> Path:
    for cand in (model.with_suffix(".json"), Path(str(model) + ".json")):
        if cand.exists():
            return cand
    raise ProductLensError(
        f"no preprocessing file beside {model}: write {model.with_suffix('.json')} with "
        '{"size": 224, "mean": [r, g, b], "std": [r, g, b]}')


def onnx_model(path: str, **kwargs) -> Embedder:
    """Load a user-supplied ONNX image model with the preprocessing JSON beside it."""
    model = Path(path).expanduser()
    if not model.is_file():
        raise ProductLensError(f"ONNX model not found: {model}")
    return Embedder(f"onnx:{model}", model, Preprocess.load(preprocess_file(model)), **kwargs)

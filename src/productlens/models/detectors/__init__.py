"""Object detectors: trained by productlens (an FCOS head on a frozen backbone) or the user's own ONNX.

>>> from productlens.models.detectors import load_detector
>>> det = load_detector("runs/detector")          # doctest: +SKIP  (a folder from `productlens detector train`)
>>> det = load_detector("onnx:my_detector.onnx")  # doctest: +SKIP  (with my_detector.json beside it)
>>> det.detect(pil_image)                         # doctest: +SKIP  [Detection(box, tag, score, label), ...]

The input/output contract both follow is in :mod:`productlens.models.detectors.runtime`.
Training needs the ``torch`` extra; running a detector needs only onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path

from productlens.models.detectors.runtime import Detection, Detector, DetectorSpec, load_spec
from productlens.types import ProductLensError

#: The detector ``productlens detect`` uses when none is named.
ENV_DEFAULT = "PRODUCTLENS_DETECTOR"


def default_detector_path() -> Path:
    """The detector folder used when none is named: ``$PRODUCTLENS_DETECTOR`` if set, else
    ``<cache>/detectors/default``. (The variable may also name ``onnx:PATH``, which
    :func:`load_detector` loads as such.)"""
    env = os.environ.get(ENV_DEFAULT)
    if env:
        return Path(env)
    from productlens.config import cache_dir

    return cache_dir() / "detectors" / "default"


def load_detector(name: str | os.PathLike[str] | None = None, *, threads: int | None = None) -> Detector:
    """Load a detector: a folder with ``model.onnx`` + ``detector.json`` (what training writes),
    ``onnx:PATH`` (the user's ONNX file with ``PATH`` minus ``.onnx`` plus ``.json`` beside it),
    or None for :func:`default_detector_path`. Raises ProductLensError with what is missing."""
    if name is None:
        env = os.environ.get(ENV_DEFAULT, "")
        if env.startswith("onnx:"):  # the variable takes what --model takes: a folder or the user's ONNX
            return load_detector(env, threads=threads)
        path = default_detector_path()
        if not (path / "detector.json").is_file():
            raise ProductLensError(
                f"no detector at {path}: train one with `productlens detector train TRAIN.json --out {path}` "
                f"(or name a detector folder or onnx:PATH: --detector, or --model for `productlens detect`; "
                f"or set ${ENV_DEFAULT})")
        return load_detector(path, threads=threads)
    name = str(name)
    if name.startswith("onnx:"):
        model = Path(name[5:]).expanduser()
        if not model.is_file():
            raise ProductLensError(f"detector model {model} does not exist")
        spec = model.with_suffix(".json")
        if not spec.is_file() and model.name == "model.onnx" and (model.parent / "detector.json").is_file():
            spec = model.parent / "detector.json"  # the model of a trained detector's folder, named by its file
        return Detector(model, load_spec(spec), name=name, threads=threads)
    folder = Path(name).expanduser()
    if not (folder / "detector.json").is_file() or not (folder / "model.onnx").is_file():
        raise ProductLensError(f"{folder} is not a detector folder (model.onnx and detector.json); "
                               "for your own ONNX file use onnx:PATH")
    return Detector(folder / "model.onnx", load_spec(folder / "detector.json"), name=str(folder), threads=threads)


__all__ = ["Detection", "Detector", "DetectorSpec", "default_detector_path", "load_detector", "load_spec"]

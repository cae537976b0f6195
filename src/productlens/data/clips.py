"""Synthetic live-stream clips: photos of one product in sequence, with the
degradations of a hand-held stream (motion blur, shake, zoom, a hand passing
in front), written as mp4 for the video benchmark and tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from productlens.data.images import load_image
from productlens.types import ProductLensError


def _motion_blur(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    n = int(rng.integers(9, 19))
    kernel = np.zeros((n, n), np.float32)
    kernel[n // 2, :] = 1.0 / n
    rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (n, n))
    return cv2.filter2D(frame, -1, kernel / max(kernel.sum(), 1e-6))


def render_frames(photo: Image.Image, n: int, size: int, rng: np.random.Generator, *, blur: float = 0.3,
                  occlude: float = 0.3) -> list[np.ndarray]:
    """``n`` frames (RGB uint8, size x size) of one photo: zooming in or out, shaking, some
    motion-blurred (probability ``blur``), some with an occluding patch (probability ``occlude``)."""
    import cv2

    base = np.asarray(photo.convert("RGB").resize((size, size), Image.BILINEAR))
    z0, z1 = (1.0, 1.35) if rng.random() < 0.5 else (1.35, 1.0)
    out = []
    for t in range(n):
        z = z0 + (z1 - z0) * t / max(n - 1, 1)
        dx, dy = rng.normal(0, 0.04 * size, 2)
        m = np.array([[z, 0, (1 - z) * size / 2 + dx], [0, z, (1 - z) * size / 2 + dy]], np.float32)
        f = cv2.warpAffine(base, m, (size, size), borderMode=cv2.BORDER_REFLECT)
        if rng.random() < blur:
            f = _motion_blur(f, rng)
        if rng.random() < occlude:
            w, h = (rng.uniform(0.3, 0.55, 2) * size).astype(int)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            f = f.copy()
            f[y:y + h, x:x + w] = rng.integers(120, 220, 3)  # a hand or a card in front
        out.append(f)
    return out


def make_clip(photos: Sequence[Any], out_path: str | os.PathLike, *, fps: int = 8, seconds_per_photo: float = 1.0,
              size: int = 224, seed: int = 0, blur: float = 0.3, occlude: float = 0.3) -> Path:
    """Write an mp4 showing ``photos`` (paths or PIL images) one after the other; returns its path."""
    import cv2

    if not photos:
        raise ProductLensError("a clip needs at least one photo")
    rng = np.random.default_rng(seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".partial" + out_path.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise ProductLensError(f"cannot write {out_path} (OpenCV has no mp4 encoder here)")
    try:
        for p in photos:
            img = p if isinstance(p, Image.Image) else load_image(p)
            for f in render_frames(img, max(1, round(fps * seconds_per_photo)), size, rng, blur=blur,
                                   occlude=occlude):
                writer.write(f[:, :, ::-1])
        writer.release()
        os.replace(tmp, out_path)
    except BaseException:  # a photo that cannot be read leaves no half-written clip behind
        writer.release()
        tmp.unlink(missing_ok=True)
        raise
    return out_path

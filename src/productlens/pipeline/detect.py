"""Detect products in image files: drawn images and JSON out; best-box crops for search.

``detect_files`` runs a detector on each image, writes ``<name>.jpg`` with the
boxes and tags drawn and ``<name>.json`` (box x, y, w, h in original pixels,
tag, score), and reports unreadable images instead of stopping.
``best_boxes`` gives, for query photos without a box, the box of the best
detection, so search and classification can look at the product only.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from productlens import fonts
from productlens.data.images import load_image
from productlens.fileio import atomic_path
from productlens.models.detectors.runtime import Detection, Detector
from productlens.progress import bar_disable
from productlens.types import Box, ImageError, ProductLensError


def _colour(label: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(img: Image.Image, detections: Sequence[Detection], *, min_score: float = 0.3,
                    scores: bool = True) -> Image.Image:
    """A copy of ``img`` with the detections scoring at least ``min_score`` drawn (box, tag and,
    with ``scores``, score; ground truth is drawn without)."""
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    shown = [d for d in sorted(detections, key=lambda d: d.score) if d.score >= min_score]
    labels = [f"{d.tag} {d.score:.2f}" if scores else d.tag for d in shown]
    font = fonts.font(max(11, round(max(out.size) / 40)), " ".join(labels))  # one that draws every label
    width = max(2, round(max(out.size) / 250))
    for d, text in zip(shown, labels):
        c = _colour(d.label)
        x0, y0, x1, y1 = d.box.x, d.box.y, d.box.x + d.box.w, d.box.y + d.box.h
        draw.rectangle((x0, y0, x1, y1), outline=c, width=width)
        tb = draw.textbbox((x0, y0), text, font=font)
        ty = y0 - (tb[3] - tb[1]) - 4 if y0 - (tb[3] - tb[1]) - 4 >= 0 else y0
        tb = draw.textbbox((x0 + 2, ty + 1), text, font=font)
        draw.rectangle((tb[0] - 2, tb[1] - 1, tb[2] + 2, tb[3] + 1), fill=c)
        draw.text((x0 + 2, ty + 1), text, fill=(0, 0, 0), font=font)
    return out


def _names(paths: Sequence[str | Path]) -> list[str]:
    """Output stems, one per input and all different: a repeated file name gets ``-1``, ``-2``, ...,
    the first such name that no other input has (``a-1.jpg`` beside two ``a.jpg`` keeps its own)."""
    stems = [Path(str(p)).stem or "image" for p in paths]
    taken, used = set(stems), set()
    out = []
    for stem in stems:
        name, n = stem, 0
        while name in used or (n and name in taken):  # a made-up name never takes another input's own
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        out.append(name)
    return out


def detect_files(detector: Detector, paths: Sequence[str | Path], out_dir: str | Path | None = None, *,
                 min_score: float = 0.3, one_tag: bool = True, progress: bool = True
                 ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Detect in each image; with ``out_dir``, write ``<name>.jpg`` (drawn) and ``<name>.json``.

    Detections scoring below ``min_score`` are neither drawn nor listed. ``one_tag``
    (default): one box per object, other tags listed as its ``alternatives``
    (``Detector.detect``); False: a box per tag, as the COCO scorer sees them. Returns
    (one record per readable image: ``image``, ``width``, ``height``,
    ``detections``; the (path, error) of each unreadable image).
    """
    from tqdm import tqdm

    out = Path(out_dir) if out_dir is not None else None
    names = _names(paths)
    if out is not None:
        check_detect_out(out, paths, names)
        out.mkdir(parents=True, exist_ok=True)
    records, errors = [], []
    for path, name in tqdm(list(zip(paths, names)), desc="detect", unit="image",
                           disable=bar_disable(progress and len(paths) > 1)):
        try:
            img = load_image(path)
        except ImageError as exc:
            errors.append((str(path), str(exc)))
            continue
        dets = detector.detect(img, score_threshold=min_score, one_tag=one_tag)  # alternatives too
        rec = {"image": str(path), "width": img.size[0], "height": img.size[1],
               "detections": [d.as_json() for d in dets]}
        records.append(rec)
        if out is not None:
            with atomic_path(out / f"{name}.jpg") as tmp:
                draw_detections(img, dets, min_score=min_score).save(tmp, format="JPEG", quality=90)
            with atomic_path(out / f"{name}.json") as tmp:
                tmp.write_text(json.dumps(rec, indent=1))
    return records, errors


def check_detect_out(out: Path, paths: Sequence[str | Path], names: Sequence[str]) -> None:
    """Before any work: ProductLensError when writing ``<name>.jpg`` / ``<name>.json`` into ``out``
    would replace an input photo, or a file that an earlier ``detect`` did not write (its
    ``<name>.json`` is then not a detection record). Earlier results are replaced."""
    inputs = {Path(p).resolve(): Path(p) for p in paths if not str(p).lower().startswith(("http://", "https://"))}
    clashes = []
    for name in names:
        record = out / f"{name}.json"
        ours = _is_record(record)
        for target in (out / f"{name}.jpg", record):
            if target.resolve() in inputs:
                raise ProductLensError(f"writing {target} would replace the input photo {inputs[target.resolve()]}; "
                                       "choose another --out")
            if target.exists() and not ours:
                clashes.append(target.name)
    if clashes:
        shown = ", ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
        raise ProductLensError(f"{out} already holds {shown}, which detect did not write; choose another --out")


def _is_record(path: Path) -> bool:
    """Whether ``path`` is a detection record written by :func:`detect_files`."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and "detections" in rec and "image" in rec


def best_box(detector: Detector, img: Image.Image, *, min_score: float = 0.05) -> Box | None:
    """The box of the highest-scoring detection in ``img`` (None when nothing scores ``min_score``)."""
    dets = detector.detect(img, max_detections=1)
    return dets[0].box if dets and dets[0].score >= min_score else None


def best_box_of(detector: Detector, source: Any, *, min_score: float = 0.05) -> Box | None:
    """:func:`best_box` of a photo given as a path, URL, bytes or decoded PIL image, in the photo's own
    (upright) pixels. A file is decoded at the detector's input size (a large JPEG shrinks while it is
    decoded, Pillow's ``draft``: a 12 MP photo decoded in full costs more than the detector) and the
    box scaled back. ``ImageError`` when it cannot be read."""
    if isinstance(source, Image.Image):  # made upright (EXIF) and 8-bit RGB, as the search then crops it
        return best_box(detector, load_image(source), min_score=min_score)
    from productlens.data.images import image_size, read_once

    source = read_once(source)  # a URL: fetched once for the header and the pixels
    img = load_image(source, target=detector.spec.size)
    box = best_box(detector, img, min_score=min_score)
    width, height = image_size(source)
    if box is None or img.size in ((width, height), (height, width)):  # not shrunk (a PNG's EXIF may sit
        return box                                                      # after its pixels, unseen by the header)
    sx, sy = width / img.size[0], height / img.size[1]
    return Box(box.x * sx, box.y * sy, box.w * sx, box.h * sy)


def best_boxes(detector: Detector, sources: Sequence[Any], boxes: Sequence[Box | None] | None = None, *,
               progress: bool = True) -> list[Box | None]:
    """For each source (path, URL, bytes or decoded PIL image, such as a video frame) without a box
    (in ``boxes``), the best detected box; given boxes are kept. Unreadable sources get None (the
    embedding step reports them)."""
    from tqdm import tqdm

    boxes = list(boxes) if boxes is not None else [None] * len(sources)
    out: list[Box | None] = []
    for src, given in tqdm(list(zip(sources, boxes)), desc="detect", unit="image", disable=bar_disable(progress)):
        if given is not None:
            out.append(given)
            continue
        try:
            out.append(best_box_of(detector, src))
        except ImageError:
            out.append(None)
    return out

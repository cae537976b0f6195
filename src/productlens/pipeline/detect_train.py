"""Train a detector on COCO boxes: frozen backbone features, cached views, an FCOS head.

1. Every training image is decoded once and seen under several views (scale
   jitter x horizontal flip); the frozen backbone (ONNX) turns each view into
   C3/C4/C5 maps, kept in memory as float16 with the view's FCOS targets.
2. The head trains in torch on those maps (AdamW, warm-up then cosine). With
   ``tune_from`` the backbone's last blocks and head convolution (which make
   C5) train with it, at a tenth of its learning rate: the cache then keeps
   their input instead of C5, and C3/C4 stay frozen.
3. Backbone and head are exported together to one ONNX file that follows the
   detector contract of :mod:`productlens.models.detectors.runtime`.

Bad images are reported and skipped, and so are images whose only annotations
are crowd regions (iscrowd=1: they are no background). In other images, the
background inside crowd regions is left out of the class loss. Training without
a single usable box is an error. The model folder is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from productlens.config import num_threads, seeded_torch
from productlens.data.coco import CocoSet, DetImage, load_det_image
from productlens.fileio import atomic_dir, check_replaceable
from productlens.models.detectors.fcos import HeadConfig, assign
from productlens.models.detectors.runtime import DetectorSpec, letterbox
from productlens.progress import bar_disable
from productlens.types import ImageError, ProductLensError

log = logging.getLogger(__name__)

#: the tuned backbone blocks' learning rate, as a share of the head's
TAIL_LR = 0.1


@dataclass
class DetectTrainOptions:
    """Training settings. ``size``: longer input side; ``scales``: scale-jitter views
    (times ``size``), each also flipped when ``flip``; ``max_cache_gb`` caps the
    in-memory feature cache (fewer views are kept when it would be exceeded);
    ``tune_from``: the first backbone block trained with the head (None: frozen;
    see :func:`~productlens.models.detectors.pyramid.tune_range`)."""

    backbone: str = "efficientnet-lite2"
    size: int = 512
    scales: tuple[float, ...] = (0.8, 1.0, 1.25)
    flip: bool = True
    epochs: int = 7
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    head: HeadConfig = field(default_factory=HeadConfig)
    max_cache_gb: float = 8.0
    tune_from: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # what a detector spec accepts: 0 failed at the export after the training, 100000 ran out of memory
        if not 32 <= int(self.size) <= 8192:
            raise ProductLensError(f"the detector's input size must be from 32 to 8192 pixels, got {self.size}")
        if int(self.epochs) < 1:
            raise ProductLensError(f"epochs must be at least 1, got {self.epochs}")


@dataclass
class Views:
    """Cached backbone maps (C3, C4, and C5 or, with ``tune_from``, the tuned blocks' input) and
    FCOS targets of every training view; ``images`` and ``boxes`` count the images (and their
    boxes) actually used, ``skipped`` the others."""

    feats: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    cls_t: list[np.ndarray]
    reg_t: list[np.ndarray]
    skipped: list[tuple[str, str]]
    images: int = 0
    boxes: int = 0

    def __len__(self) -> int:
        return len(self.feats)


def _clipped(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``boxes`` clipped to an image of ``size`` (W, H), and which of them keep some area."""
    b = boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, size[0])
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, size[1])
    return b, ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)


def _image(rec: DetImage) -> tuple[Image.Image, np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``rec``; its boxes, labels and crowd regions clipped to the decoded image (EXIF
    applied). ImageError when it has only crowd regions (no background) or none of its boxes
    lies inside the photo."""
    if not len(rec.boxes) and len(rec.crowd):
        raise ImageError(f"{rec.path}: only crowd regions (iscrowd=1), no boxes: not used as a background image")
    img = load_det_image(rec)
    W, H = img.size
    b, ok = _clipped(rec.boxes, img.size)
    if len(b) and not ok.any():
        raise ImageError(f"{rec.path}: none of its {len(b)} boxes lies inside the {W}x{H} photo")
    if not ok.all():  # the json gave no size to check them against when it was read
        log.warning("%s: %d of its %d boxes lie outside the %dx%d photo and are left out", rec.path,
                    int((~ok).sum()), len(b), W, H)
    crowd, inside = _clipped(rec.crowd, img.size)
    return img, b[ok], rec.labels[ok], crowd[inside]


def _pyramid_session(arch: str, tune_from: int | None = None):
    import onnxruntime as ort

    from productlens.models.detectors.pyramid import cached_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(cached_onnx(arch, tune_from)), opts, providers=["CPUExecutionProvider"])


def extract_views(data: CocoSet, opts: DetectTrainOptions, *, progress: bool = True) -> Views:
    """Decode each image once and cache the backbone maps and targets of its views."""
    from tqdm import tqdm

    session = _pyramid_session(opts.backbone, opts.tune_from)
    views = Views([], [], [], [])
    flips = (False, True) if opts.flip else (False,)
    budget = opts.max_cache_gb * 2**30
    used, over = 0.0, False
    for rec in tqdm(data.images, desc="backbone views", unit="image", disable=bar_disable(progress)):
        try:
            img, boxes, labels, crowd = _image(rec)
        except ImageError as exc:
            views.skipped.append((str(rec.path), str(exc)))
            continue
        views.images += 1
        views.boxes += len(boxes)
        todo = [(1.0, False)] if over else [(s, f) for s in opts.scales for f in flips]
        for scale, flip in todo:
            im, b, cr = img, boxes.copy(), crowd.copy()
            if flip:
                im = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                b[:, [0, 2]] = img.size[0] - boxes[:, [2, 0]]
                cr[:, [0, 2]] = img.size[0] - crowd[:, [2, 0]]
            pixels, f = letterbox(im, opts.size, 32, scale)
            c3, c4, c5 = session.run(None, {"pixels": pixels[None]})
            shapes = [c.shape[-2:] for c in (c3, c4, c5)]
            cls_t, reg_t = assign(b * f, labels, shapes, opts.head, crowd=cr * f)
            feats = tuple(np.ascontiguousarray(c[0], np.float16) for c in (c3, c4, c5))
            used += sum(x.nbytes for x in feats) + reg_t.nbytes
            views.feats.append(feats)  # type: ignore[arg-type]
            views.cls_t.append(cls_t)
            views.reg_t.append(reg_t)
        if used > budget and not over:
            over = True
            log.warning("feature cache reached %.1f GiB: the remaining images keep one view each", opts.max_cache_gb)
    if not views.feats:
        shown = "; ".join(msg for _, msg in views.skipped[:3]) + ("; ..." if len(views.skipped) > 3 else "")
        raise ProductLensError(f"no training image could be read, nothing to train on ({len(views.skipped)} "
                               f"skipped: {shown or 'the annotations list no image'})")
    if not views.boxes:
        why = (f"every image with boxes was skipped ({len(views.skipped)} skipped, e.g. {views.skipped[0][1]}); "
               if views.skipped else "")
        raise ProductLensError(f"{data.path}: no usable boxes to train on: {why}"
                               f"only {views.images} background image(s) could be read")
    return views


def train_head(views: Views, n_classes: int, opts: DetectTrainOptions, *, progress: bool = True,
               in_channels: tuple[int, int, int] | None = None, tail: Any = None) -> tuple[Any, list[float]]:
    """Train the FCOS head on cached views; returns (head in eval mode, loss history).

    ``tail`` (torch, the cached third map -> C5) trains with the head at a tenth of its
    learning rate, its BatchNorm statistics frozen; it is left in eval mode. Torch trains on
    every usable core (:func:`~productlens.config.num_threads`); its own setting and the
    caller's torch random state are restored after."""
    with seeded_torch(opts.seed):
        return _train_head(views, n_classes, opts, progress, in_channels, tail)


def _train_head(views: Views, n_classes: int, opts: DetectTrainOptions, progress: bool,
                in_channels: tuple[int, int, int] | None, tail: Any) -> tuple[Any, list[float]]:
    import torch
    from tqdm import tqdm

    from productlens.models.detectors.fcos import build_head, loss

    rng = random.Random(opts.seed)
    chans = in_channels or tuple(int(f.shape[0]) for f in views.feats[0])
    if tail is not None and in_channels is None:  # the cache holds the tail's input, the head gets C5
        from productlens.models.detectors.pyramid import channels

        chans = (*chans[:2], channels(opts.backbone)[2])
    tail = torch.nn.Identity() if tail is None else tail
    head = build_head(chans, n_classes, opts.head)  # type: ignore[arg-type]
    buckets: dict[tuple, list[int]] = {}
    for i, f in enumerate(views.feats):
        buckets.setdefault(tuple(f[0].shape[-2:]), []).append(i)

    def epoch_batches() -> list[list[int]]:
        out = []
        for idx in buckets.values():
            idx = idx[:]
            rng.shuffle(idx)
            out += [idx[j:j + opts.batch] for j in range(0, len(idx), opts.batch)]
        rng.shuffle(out)
        return out

    steps_per_epoch = len(epoch_batches())
    total = steps_per_epoch * opts.epochs
    warm = min(200, total // 10)
    groups = [{"params": list(head.parameters()), "lr": opts.lr},
              {"params": list(tail.parameters()), "lr": opts.lr * TAIL_LR}]
    optim = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
    params = [p for g in groups for p in g["params"]]
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    history: list[float] = []
    head.train()
    tail.train()
    for m in tail.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # batches of a few photos: keep ImageNet statistics
    bar = tqdm(total=total, desc="detector head", unit="step", disable=bar_disable(progress))
    for _ in range(opts.epochs):
        run, n = 0.0, 0
        for batch in epoch_batches():
            maps = [torch.from_numpy(np.stack([views.feats[i][k] for i in batch]).astype(np.float32)) for k in range(3)]
            cls_t = torch.from_numpy(np.stack([views.cls_t[i] for i in batch]))
            reg_t = torch.from_numpy(np.stack([views.reg_t[i] for i in batch]))
            maps[2] = tail(maps[2])
            total_loss, parts = loss(head(*maps), cls_t, reg_t)
            optim.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optim.step()
            sched.step()
            run += float(total_loss.detach())
            n += 1
            bar.update(1)
        history.append(run / max(n, 1))
        bar.set_postfix(loss=f"{history[-1]:.3f}")
    bar.close()
    tail.eval()
    return head.eval(), history


def export_detector(head: Any, opts: DetectTrainOptions, labels: list[str], out_dir: Path,
                    pyramid: Any = None) -> Path:
    """Backbone (``pyramid``, by default the frozen one) + head + box decoding as one ONNX file
    (``model.onnx``) with ``detector.json``."""
    import torch

    from productlens.models.detectors.fcos import decode_module
    from productlens.models.detectors.pyramid import build_torch, export

    if pyramid is None:
        pyramid = build_torch(opts.backbone)
    decode = decode_module(head)

    class Full(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pyramid, self.decode = pyramid, decode

        def forward(self, pixels):
            return self.decode(*self.pyramid(pixels))

    export(Full().eval(), out_dir / "model.onnx", ["boxes", "scores"], size=(opts.size, opts.size))
    spec = DetectorSpec(labels=tuple(labels), size=opts.size)
    (out_dir / "detector.json").write_text(json.dumps(spec.to_json(), indent=1))
    return out_dir / "model.onnx"


def train_detector(data: CocoSet, out_dir: str | Path, opts: DetectTrainOptions | None = None, *,
                   progress: bool = True, views: Views | None = None) -> dict:
    """Train on ``data`` and write a detector folder at ``out_dir`` (atomically).

    The folder holds ``model.onnx`` and ``detector.json`` (the detector contract),
    ``config.json`` (training settings, categories) and ``metrics.json``. Returns the metrics.
    """
    opts = opts or DetectTrainOptions()
    out_dir = Path(out_dir)
    if not data.n_boxes:
        raise ProductLensError(f"{data.path}: no usable boxes to train on")
    check_replaceable(out_dir)  # before the training, not after it
    t0 = time.perf_counter()
    pyramid = tail = None
    if opts.tune_from is not None:
        from productlens.models.detectors.pyramid import split_torch

        pyramid, _, tail = split_torch(opts.backbone, opts.tune_from)  # checks tune_from before the views
    views = views or extract_views(data, opts, progress=progress)
    head, history = train_head(views, len(data.categories), opts, progress=progress, tail=tail)
    with atomic_dir(out_dir) as tmp:
        export_detector(head, opts, data.names, tmp, pyramid)
        cfg = asdict(opts)
        cfg.update(categories=data.categories, train=str(data.path), format="productlens-detector/1")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        metrics = {"images": views.images, "views": len(views), "boxes": views.boxes,
                   "loss": [round(v, 4) for v in history],
                   "skipped": [{"image": p, "error": e} for p, e in views.skipped],
                   "problems": data.problems, "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics

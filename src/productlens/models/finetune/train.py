"""Fine-tune the last blocks of a bundled backbone on labelled photos.

The frozen trunk (stem and early blocks) runs once per training view in
onnxruntime; its feature maps are kept in memory (float16) and only the last
blocks, the head convolution and a cosine classifier are trained in torch, so
an epoch over a few thousand views takes seconds to a minute on two cores.
The result is the whole backbone exported to ONNX with its preprocessing JSON
beside it: an ``onnx:PATH`` embedder that every part of productlens can use.
"""

from __future__ import annotations

import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from productlens.config import cache_dir, seeded_torch
from productlens.data.images import load_image
from productlens.models.embedders.base import Embedder
from productlens.models.embedders.export import EXPORT_VERSION, export_onnx, file_sha256, image_model
from productlens.models.finetune.augment import random_view
from productlens.progress import bar_disable
from productlens.types import Item, ProductLensError

log = logging.getLogger(__name__)

#: per backbone: (first trained block, random views per photo, epochs); the head convolution
#: trains too. Each trains its last block. Its last 3 blocks (18:2:3 for efficientnet-lite2) scored
#: better on the train-only dev splits but lost 5 points on the open val set, and so were not adopted:
#: a choice val informed (docs/benchmarks.md, "Deeper fine-tuning" and "Where val informed a choice").
RECIPES = {"efficientnet-lite2": (20, 4, 4), "efficientnet-lite0": (15, 4, 4)}
#: the same for a classifier's backbone, where it differs from RECIPES. A classifier's classes are the
#: products it trains on, so the deeper training that hurt search for products never trained on costs
#: nothing there: on the classifier's session split (``benchmarks/dev_classify.py --finetune``) 18:2:3
#: scored 0.800 against 0.779 for the search recipe, in the same time. Search's catalog mode, which
#: reads the catalog's product ids, fine-tunes the same way (``FinetuneConfig.for_catalog``).
CLASSIFIER_RECIPES = {"efficientnet-lite2": (18, 2, 3)}
_RECIPE_FIELDS = ("train_from", "views", "epochs")
MODEL_FILE = "model.onnx"


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune_backbone` (chosen on train-only dev splits, but for the search recipe's
    depth: see ``RECIPES``)."""

    backbone: str = "efficientnet-lite2"
    views: int | None = None       # random views per photo, through the frozen trunk once each
    epochs: int | None = None
    train_from: int | None = None  # first trained block; None (each of these three): the backbone's RECIPES
    lr: float = 2e-4               # trained blocks; the classifier gets 10x
    label_smoothing: float = 0.1
    batch_size: int = 64
    max_cache_gib: float = 4.0     # trunk maps kept in memory; fewer views (then photos) above it
    seed: int = 0

    def resolved(self) -> FinetuneConfig:
        """This config with the backbone's recipe filled in where a setting is None."""
        if self.backbone not in RECIPES:
            raise ProductLensError(f"fine-tuning supports {sorted(RECIPES)}, not {self.backbone!r}")
        recipe = dict(zip(_RECIPE_FIELDS, RECIPES[self.backbone]))
        return replace(self, **{k: v for k, v in recipe.items() if getattr(self, k) is None})

    @classmethod
    def for_classifier(cls, backbone: str) -> FinetuneConfig:
        """The config that fine-tunes ``backbone`` for a classifier: its ``CLASSIFIER_RECIPES`` entry,
        else (settings left None) its search recipe."""
        return cls(backbone=backbone, **dict(zip(_RECIPE_FIELDS, CLASSIFIER_RECIPES.get(backbone, ()))))

    @classmethod
    def for_catalog(cls, backbone: str, catalog_mode: bool) -> FinetuneConfig:
        """The config that fine-tunes ``backbone`` for a search catalog. In catalog mode (the gallery's
        product ids are read, and the seller photos of trained products join the fine-tuning) the
        backbone learns to tell the catalog's products apart, as a classifier's does, so it takes
        :meth:`for_classifier`'s recipe; in challenge mode, where queries may show products never
        trained on, the shallower search recipe (``RECIPES``). On the train-only splits
        (``benchmarks/dev_finetune.py --split session,open --seller-repeats 4 --recipe 20:4:4,18:2:3``)
        catalog mode scored higher with 18:2:3 on both."""
        return cls.for_classifier(backbone) if catalog_mode else cls(backbone=backbone)


@dataclass
class FinetuneResult:
    path: Path                          # the ONNX model; its preprocessing JSON is beside it
    skipped: list[tuple[int, Any, str]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def embedder_name(self) -> str:
        return f"onnx:{self.path}"


def supports(backbone: str) -> bool:
    """Whether :func:`finetune_backbone` can fine-tune the embedder named ``backbone``."""
    return backbone in RECIPES


def _parts(backbone: str, train_from: int):
    from productlens.models.embedders import efficientnet_lite

    pre = efficientnet_lite.preprocess(backbone)
    try:
        full, trunk, top = efficientnet_lite.split_torch(backbone, train_from)
    except ValueError as exc:
        raise ProductLensError(str(exc)) from None
    digest = file_sha256(efficientnet_lite.weights_path(backbone))[:16]
    trunk_file = cache_dir() / "onnx" / f"{backbone}-{digest}-trunk{train_from}-v{EXPORT_VERSION}.onnx"
    if not trunk_file.exists():
        export_onnx(image_model(trunk, pre, gem_p=None), pre.size, trunk_file)
    return pre, full, top, Embedder(f"{backbone}-trunk", trunk_file, pre)


def _trunk_maps(trunk: Embedder, images: list, views: int, rng: random.Random, progress: bool) -> np.ndarray:
    """N x views x C x h x w float16 trunk feature maps of random views."""
    from tqdm import tqdm

    pre = trunk.preprocess
    jobs = [(i, v) for v in range(views) for i in range(len(images))]
    seeds = [rng.random() for _ in jobs]
    shape = trunk.run(np.zeros((1, *pre.shape), np.uint8)).shape[1:]
    out = np.empty((len(images), views, *shape), np.float16)

    def batch(start: int) -> np.ndarray:
        return np.stack([pre(random_view(images[i], random.Random(seeds[start + j])))
                         for j, (i, _) in enumerate(jobs[start:start + 32])])

    with ThreadPoolExecutor(1) as pool, tqdm(total=len(jobs), desc="training views", unit="img",
                                             disable=bar_disable(progress)) as bar:
        nxt = pool.submit(batch, 0)
        for start in range(0, len(jobs), 32):
            x = nxt.result()
            if start + 32 < len(jobs):
                nxt = pool.submit(batch, start + 32)  # augment the next batch while this one runs
            maps = trunk.run(x)
            for j, (i, v) in enumerate(jobs[start:start + 32]):
                out[i, v] = maps[j]
            bar.update(len(x))
    return out


def finetune_backbone(items: Sequence[Item], labels: Sequence[Any], out_dir: str | Path,
                      config: FinetuneConfig | None = None, progress: bool = True,
                      repeats: Sequence[int] | None = None) -> FinetuneResult:
    """Fine-tune ``config.backbone``'s last blocks to tell ``labels`` apart; write ``out_dir/model.onnx``.

    ``items``: labelled photos (their ``box`` is applied); ``labels``: one
    hashable label per item (product ids for search, categories for
    classification). ``repeats``: how many times each photo counts (default 1
    each): a photo repeated r times gets r x ``config.views`` random views,
    e.g. the single seller photo of a product beside its many shopper photos.
    Unreadable photos are skipped and returned in ``skipped``.
    The model and ``model.json`` (its preprocessing) are written atomically;
    use the result as the embedder ``onnx:<out_dir>/model.onnx``. Torch trains on every
    usable core, seeded (``config.seed``); the caller's thread count and random state are
    left as they were.
    """
    with seeded_torch(None):  # building the model draws too; training seeds itself (_train)
        return _finetune(items, labels, out_dir, config, progress, repeats)


def _finetune(items: Sequence[Item], labels: Sequence[Any], out_dir: str | Path, config: FinetuneConfig | None,
              progress: bool, repeats: Sequence[int] | None) -> FinetuneResult:
    cfg = (config or FinetuneConfig()).resolved()
    if len(items) != len(labels):
        raise ProductLensError(f"got {len(labels)} labels for {len(items)} photos")
    repeats = [1] * len(items) if repeats is None else [int(r) for r in repeats]
    if len(repeats) != len(items) or min(repeats, default=1) < 1:
        raise ProductLensError("repeats needs one count >= 1 per photo")
    t0 = time.perf_counter()
    pre, full, top, trunk = _parts(cfg.backbone, cfg.train_from)
    images, y_raw, skipped = [], [], []
    for i, (it, lab, r) in enumerate(zip(items, labels, repeats)):
        try:  # decoded once, shrunk on decode; views are cut from these
            images.extend([load_image(it.image, box=it.box, target=pre.size)] * r)
            y_raw.extend([lab] * r)
        except Exception as exc:  # noqa: BLE001 - one bad photo must not stop training
            skipped.append((i, it.image, str(exc)))
    classes = sorted(set(y_raw), key=str)
    if len(classes) < 2:
        raise ProductLensError("fine-tuning needs readable photos of at least 2 labels")
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[v] for v in y_raw])
    rng = random.Random(cfg.seed)
    per_map = trunk.run(np.zeros((1, *pre.shape), np.uint8)).size * 2
    views = max(1, min(cfg.views, int(cfg.max_cache_gib * 2**30 // (per_map * len(images)))))
    if views * per_map * len(images) > cfg.max_cache_gib * 2**30:
        keep = sorted(rng.sample(range(len(images)), int(cfg.max_cache_gib * 2**30 // per_map)))
        log.warning("fine-tuning on %d of %d photos (max_cache_gib=%.1f)", len(keep), len(images), cfg.max_cache_gib)
        images, y = [images[i] for i in keep], y[keep]
    maps = _trunk_maps(trunk, images, views, rng, progress)
    del images
    t_views = time.perf_counter() - t0
    losses = _train(top, maps, y, len(classes), cfg, progress)
    out = Path(out_dir)
    target = export_onnx(image_model(full.eval(), pre, gem_p=3.0), pre.size, out / MODEL_FILE)
    (out / "model.json").write_text(json.dumps(pre.to_json()))
    metrics = {"backbone": cfg.backbone, "train_from_block": cfg.train_from,
               "photos": len(items) - len(skipped), "photos_with_repeats": int(len(y)), "labels": len(classes),
               "views": views, "epochs": cfg.epochs, "final_loss": losses[-1],
               "seconds_views": round(t_views, 1), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "finetune.json").write_text(json.dumps(metrics, indent=1))
    return FinetuneResult(target, skipped, metrics)


def _train(top, maps: np.ndarray, y: np.ndarray, n_classes: int, cfg: FinetuneConfig, progress: bool) -> list[float]:
    """Train ``top`` + a cosine classifier on trunk ``maps`` (N x V x ...); BatchNorm statistics stay frozen."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    n, views = maps.shape[:2]
    fc = torch.nn.Linear(top.head.out_channels, n_classes)
    groups = [{"params": list(top.parameters()), "lr": cfg.lr}, {"params": list(fc.parameters()), "lr": cfg.lr * 10}]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    per_epoch = max(1, n * views // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                total_steps=cfg.epochs * per_epoch, pct_start=0.15)
    labels = torch.from_numpy(y)
    gen = np.random.default_rng(cfg.seed)
    losses = []
    try:
        top.train()
        for m in top.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()  # few photos per batch: keep ImageNet statistics
        for epoch in tqdm(range(cfg.epochs), desc="fine-tuning", unit="epoch", disable=bar_disable(progress)):
            order, total = gen.permutation(n * views), 0.0
            for b in range(per_epoch):
                pick = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                x = torch.from_numpy(maps[pick // views, pick % views].astype(np.float32))
                f = top(x).clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
                logits = fc(torch.nn.functional.normalize(f, dim=1) * 16.0)
                loss = torch.nn.functional.cross_entropy(logits, labels[pick // views],
                                                         label_smoothing=cfg.label_smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
            losses.append(round(total / per_epoch, 4))
            log.info("fine-tuning epoch %d: loss %.3f", epoch, losses[-1])
    finally:
        top.eval()
    return losses

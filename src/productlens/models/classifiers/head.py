"""Train a classification head on frozen backbone features (torch, CPU).

The head is a softmax classifier with one hidden layer (512 ReLU units, dropout
0.3; ``hidden=0`` makes it linear) over centred, L2-normalised features. Each
training image contributes one sample per view (feature augmentation). What
makes it more than logistic regression:

* **Imbalance**: logit adjustment (Menon et al. 2021): the loss sees
  ``logits + tau * log(prior)``, the saved head predicts with plain logits, so
  rare classes are not drowned by frequent ones (balanced-error optimal).
  ``balance="class-weight"`` weights the loss by inverse class frequency instead.
* **Noisy labels**: label smoothing, plus small-loss selection. A linear head
  is trained first; after a short warm-up, each epoch its per-image training
  loss (mean over the views) is modelled by a two-component Gaussian mixture,
  and images in the high-loss component (posterior > 0.5) that the head
  predicts as another class are left out of the next epoch (DivideMix's
  selection without its semi-supervised part). The final head is trained on the
  images kept at the end, or on all of them when fewer than ``min_noise`` were
  flagged (on clean dev splits the ~0.2% flagged were hard, useful images:
  dropping them cost 0.4 points of top-1). The selection head is linear
  because a hidden layer memorises flipped labels within a few epochs, after
  which their loss is no longer high (train-only dev splits, 20% of labels
  flipped: the linear selection found 98% of them at 98% precision, selecting
  inside the hidden-layer head 6-31%). When the filter leaves nothing out, the
  final head trains for ``clean_epochs`` (25) instead of ``epochs`` (15): on the
  train-only session split (multi-region views, the three-backbone ensemble)
  clean labels gained 2.7 points of top-1 from the longer training, while 20%
  flipped labels gained nothing from it (0.776 -> 0.770).
* **Hierarchy**: with parent levels, the loss also scores each coarse level on
  the sum of the fine probabilities of its children, so coarse predictions
  (always obtained by that sum) are trained directly.

Inference needs only numpy: :class:`HeadWeights` holds the arrays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np

from productlens.config import seeded_torch
from productlens.progress import bar_disable
from productlens.types import ProductLensError

log = logging.getLogger(__name__)


BALANCES = ("logit-adjust", "class-weight", "none")


@dataclass
class HeadConfig:
    """Hyper-parameters of :func:`train_head` (defaults chosen on train-only dev splits)."""

    epochs: int = 15
    clean_epochs: int = 25            # the final head's epochs when the noise filter left nothing out
    batch_size: int = 256             # the most: small sets use smaller batches
    lr: float = 1e-2
    weight_decay: float = 1e-4
    hidden: int = 512
    dropout: float = 0.3
    label_smoothing: float = 0.1
    balance: str = "logit-adjust"     # "none" | "logit-adjust" | "class-weight"
    tau: float = 1.0
    noise_filter: bool = True
    warmup: float = 0.1               # share of the epochs before selection starts
    max_drop: float = 0.5             # never leave out more than this share of images
    min_noise: float = 0.02           # flagged share below which nothing is left out
    coarse_weight: float = 0.5
    seed: int = 0
    # torch threads; 0: every usable core (``config.num_threads()``). One thread until 2026-12-06; on 2 cores
    # two train a 3,840-d head (the three-backbone features) 1.4x faster, a 1,280-d one 1.3x
    threads: int = 0

    def __post_init__(self) -> None:
        if self.balance not in BALANCES:
            raise ProductLensError(f"balance must be one of {', '.join(BALANCES)}, got {self.balance!r}")
        if min(self.epochs, self.clean_epochs) < 1:  # 0 wrote an untrained head that predicted uniform shares
            raise ProductLensError(f"epochs must be at least 1, got {min(self.epochs, self.clean_epochs)}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "HeadConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class HeadWeights:
    """A trained head: ``logits = relu(x W1^T + b1) W^T + b`` (or ``x W^T + b`` without hidden layer)."""

    weight: np.ndarray
    bias: np.ndarray
    weight1: np.ndarray | None = None
    bias1: np.ndarray | None = None
    kept: np.ndarray | None = field(default=None, repr=False)  # images used at the end (noise filter)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores of features ``x`` (... x D)."""
        x = np.asarray(x, np.float32)
        with _one_blas_thread(x.size // max(1, x.shape[-1]) < 64):
            if self.weight1 is not None:
                x = np.maximum(x @ self.weight1.T + self.bias1, 0.0)
            return x @ self.weight.T + self.bias

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight, "bias": self.bias}
        if self.weight1 is not None:
            out.update(weight1=self.weight1, bias1=self.bias1)
        return out

    @classmethod
    def from_arrays(cls, data) -> "HeadWeights":
        w1 = data["weight1"] if "weight1" in data else None
        b1 = data["bias1"] if "bias1" in data else None
        return cls(np.asarray(data["weight"], np.float32), np.asarray(data["bias"], np.float32),
                   None if w1 is None else np.asarray(w1, np.float32),
                   None if b1 is None else np.asarray(b1, np.float32))


_BLAS = None


def _one_blas_thread(active: bool):
    """Single-threaded BLAS for a few rows: a multi-threaded matrix-vector product over
    thousands of classes took 8 ms instead of 0.2 ms on a busy 2-core machine."""
    global _BLAS
    import contextlib

    if not active:
        return contextlib.nullcontext()
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
            _BLAS = False
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()


def _model(dim: int, n_classes: int, cfg: HeadConfig):
    import torch

    if cfg.hidden > 0:
        return torch.nn.Sequential(torch.nn.Dropout(cfg.dropout), torch.nn.Linear(dim, cfg.hidden),
                                   torch.nn.ReLU(), torch.nn.Dropout(cfg.dropout),
                                   torch.nn.Linear(cfg.hidden, n_classes))
    return torch.nn.Sequential(torch.nn.Dropout(cfg.dropout), torch.nn.Linear(dim, n_classes))


def _weights(model, kept: np.ndarray) -> HeadWeights:
    lin = [m for m in model if m.__class__.__name__ == "Linear"]
    get = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    if len(lin) == 2:
        return HeadWeights(get(lin[1].weight), get(lin[1].bias), get(lin[0].weight), get(lin[0].bias), kept)
    return HeadWeights(get(lin[0].weight), get(lin[0].bias), kept=kept)


def small_loss_keep(losses: np.ndarray, max_drop: float, agree: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the images to keep: not in the high-loss mixture component.

    A two-component 1-D Gaussian mixture on the per-image losses; an image is
    dropped when its posterior for the high-mean component exceeds 0.5 and
    (when ``agree`` is given) the model's top class is not its label, so that a
    clean set, whose training images are nearly all predicted right, loses
    almost nothing. At most ``max_drop`` of the images (the highest losses) are dropped.
    """
    n = len(losses)
    keep = np.ones(n, bool)
    if n < 10 or np.ptp(losses) < 1e-6:
        return keep
    x = ((losses - losses.min()) / np.ptp(losses)).reshape(-1, 1)
    keep = _gmm_high_posterior(x.ravel()) <= 0.5
    if agree is not None:
        keep |= np.asarray(agree, bool)
    limit = int(np.floor(max_drop * n))
    if (~keep).sum() > limit:
        keep = np.ones(n, bool)
        if limit:
            keep[np.argsort(-losses)[:limit]] = False
    return keep


def _gmm_high_posterior(x: np.ndarray, iters: int = 50, reg: float = 5e-4) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component 1-D Gaussian mixture (EM)."""
    lo, hi = np.percentile(x, [25, 75])
    mu = np.array([lo, hi], np.float64)
    var = np.full(2, x.var() / 4 + reg)
    w = np.array([0.5, 0.5])
    for _ in range(iters):
        logp = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(w)
        logp -= logp.max(axis=1, keepdims=True)
        r = np.exp(logp)
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0) + 1e-12
        w, mu = nk / len(x), (r * x[:, None]).sum(axis=0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(axis=0) / nk + reg
    return r[:, int(np.argmax(mu))]


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: HeadConfig | None = None, *,
               parents: Sequence[np.ndarray] = (), progress: bool = False) -> HeadWeights:
    """Fit a head on features ``x`` (V x N x D: N images under V views, or N x D) and labels ``y`` (N).

    ``parents``: for each coarse level, an array mapping every fine class to its
    coarse class. Returns numpy weights; ``kept`` marks the images the noise
    filter kept at the end.
    """
    import torch

    cfg = cfg or HeadConfig()
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    y = np.asarray(y, np.int64)
    with seeded_torch(cfg.seed, cfg.threads):  # the caller's random state is left alone
        keep = np.ones(len(y), bool)
        epochs = cfg.epochs
        if cfg.noise_filter:
            with torch.random.fork_rng(devices=[]):  # the final head starts from the same state either way
                keep = _noise_keep(x, y, n_classes, cfg, parents, progress)
            if keep.all():  # the labels look clean: train longer (with flipped labels that only hurts)
                epochs = max(cfg.epochs, cfg.clean_epochs)
        head = _train(x[:, keep], y[keep], n_classes, replace(cfg, noise_filter=False, epochs=epochs), parents,
                      progress)
        head.kept = keep
        return head


def likely_clean(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: HeadConfig | None = None, *,
                 parents: Sequence[np.ndarray] = (), progress: bool = False) -> np.ndarray:
    """The noise filter of :func:`train_head` alone: a boolean mask of the images whose label looks right.

    Used before fine-tuning a backbone, so that it does not learn flipped labels either.
    """
    cfg = cfg or HeadConfig()
    x = np.asarray(x)
    with seeded_torch(cfg.seed, cfg.threads):
        return _noise_keep(x if x.ndim == 3 else x[None], np.asarray(y, np.int64), n_classes, cfg, parents,
                           progress)


def _noise_keep(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: HeadConfig, parents: Sequence[np.ndarray],
                progress: bool) -> np.ndarray:
    keep = _train(x, y, n_classes, replace(cfg, hidden=0, dropout=0.0, noise_filter=True), parents, progress).kept
    for c in np.unique(y):  # never lose a class entirely
        if not keep[y == c].any():
            keep[y == c] = True
    if (~keep).mean() < cfg.min_noise:  # (nearly) clean: the few flags are hard images, keep them
        keep[:] = True
    return keep


def _train(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: HeadConfig, parents: Sequence[np.ndarray],
           progress: bool) -> HeadWeights:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    n_views, n, dim = x.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float16))
    yt = torch.from_numpy(y)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    prior = np.maximum(counts, 1) / max(1, counts.sum())
    adjust = torch.zeros(n_classes)
    class_w = None
    if cfg.balance == "logit-adjust":
        adjust = torch.tensor(cfg.tau * np.log(prior), dtype=torch.float32)
    elif cfg.balance == "class-weight":
        w = 1.0 / np.maximum(counts, 1)
        class_w = torch.tensor(w / (w * counts).sum() * counts.sum(), dtype=torch.float32)
    elif cfg.balance != "none":
        raise ValueError(f"balance must be none, logit-adjust or class-weight, got {cfg.balance!r}")
    maps = [torch.from_numpy(np.asarray(p, np.int64)) for p in parents]
    model = _model(dim, n_classes, cfg)
    opt = _AdamW(list(model.parameters()), cfg.weight_decay)
    # small sets get smaller batches: at least ~20 steps an epoch
    batch_size = int(min(cfg.batch_size, max(8, -(-n * n_views // 20))))
    total_steps = cfg.epochs * max(1, -(-n * n_views // batch_size))
    warm_steps = max(1, total_steps // 20)
    step = 0
    keep = np.ones(n, bool)
    warm = int(round(cfg.warmup * cfg.epochs))

    def loss_fn(logits, target, reduce=True):
        z = logits + adjust
        red = "mean" if reduce else "none"
        loss = F.cross_entropy(z, target, weight=class_w, label_smoothing=cfg.label_smoothing, reduction=red)
        if maps and cfg.coarse_weight > 0:
            logp = F.log_softmax(z, dim=1)
            for m in maps:
                n_coarse = int(m.max()) + 1
                coarse = torch.zeros(len(z), n_coarse).index_add_(1, m, logp.exp()).clamp_min(1e-8).log()
                c = F.nll_loss(coarse, m[target], reduction=red)
                loss = loss + cfg.coarse_weight * c
        return loss

    for epoch in tqdm(range(cfg.epochs), desc="training head", disable=bar_disable(progress)):
        if cfg.noise_filter and epoch >= warm and epoch > 0:
            losses, agree = _per_image_loss(model, xt, yt, loss_fn)
            keep = small_loss_keep(losses, cfg.max_drop, agree)
        model.train()
        idx = np.flatnonzero(keep)
        pairs = torch.stack(torch.meshgrid(torch.arange(n_views), torch.from_numpy(idx), indexing="ij"), -1).reshape(-1, 2)
        order = pairs[torch.randperm(len(pairs), generator=gen)]
        for start in range(0, len(order), batch_size):
            b = order[start:start + batch_size]
            xb = xt[b[:, 0], b[:, 1]].float()
            loss = loss_fn(model(xb), yt[b[:, 1]])
            # linear warm-up, then cosine decay
            lr = cfg.lr * min(1.0, (step + 1) / warm_steps) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
            opt.zero_grad()
            loss.backward()
            opt.step(lr)
            step += 1
    model.eval()
    return _weights(model, keep)


class _AdamW:
    """AdamW (Loshchilov & Hutter) in a few tensor operations.

    torch.optim's optimizers import torch._dynamo on first use (3-4 s on this
    machine), which would dominate training a small head.
    """

    def __init__(self, params: list, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        import torch

        self.params, self.wd, self.betas, self.eps, self.t = params, weight_decay, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, lr: float) -> None:
        import torch

        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                if p.grad is None:
                    continue
                p.mul_(1 - lr * self.wd)
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)


def _per_image_loss(model, xt, yt, loss_fn, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Mean training loss of each image over its views, and whether the mean logits' top class is its label."""
    import torch

    model.eval()
    n_views, n = xt.shape[:2]
    loss = np.zeros(n, np.float64)
    agree = np.zeros(n, bool)
    with torch.no_grad():
        for s in range(0, n, chunk):
            logits = 0
            for v in range(n_views):
                z = model(xt[v, s:s + chunk].float())
                loss[s:s + chunk] += loss_fn(z, yt[s:s + chunk], reduce=False).numpy()
                logits = logits + z
            agree[s:s + chunk] = (logits.argmax(1) == yt[s:s + chunk]).numpy()
    return loss / n_views, agree


__all__ = ["HeadConfig", "HeadWeights", "likely_clean", "small_loss_keep", "train_head"]

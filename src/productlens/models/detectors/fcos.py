"""An FCOS-style anchor-free detection head on frozen C3/C4/C5 features.

FCOS (Tian et al., 2019): every location of a feature pyramid (strides 8, 16,
32) predicts class scores, the distances to the four sides of its object's box
and a centre-ness that down-weights locations far from the centre. Here the
pyramid is a light FPN over the frozen backbone maps, with shared towers of
``convs`` 3x3 convolutions (GroupNorm, ReLU). ``convs=0`` with ``fpn=False``
is the baseline: linear predictions on each map.

Training targets (:func:`assign`) use centre sampling (a location is positive
when it lies within ``radius`` strides of a box centre, inside the box, and the
box's largest side distance fits the level's range); the smallest box wins.
A background location inside a crowd region (COCO ``iscrowd: 1``, a group of
objects drawn as one box) is neither positive nor negative: it is ignored by
the class loss (``IGNORE``), as the COCO scorer ignores detections there.
Losses: sigmoid focal loss (classes), GIoU (boxes), BCE (centre-ness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from productlens.models.detectors.pyramid import STRIDES

#: the class target of a location that no loss sees (a background location inside a crowd region)
IGNORE = -2

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HeadConfig:
    """The head's shape. ``ranges``: the largest side distance (input pixels) each level takes."""

    width: int = 64
    convs: int = 2
    fpn: bool = True
    radius: float = 1.5
    ranges: tuple[float, ...] = (64.0, 128.0)


def build_head(in_channels: tuple[int, int, int], num_classes: int, cfg: HeadConfig) -> torch.nn.Module:
    """The torch head: (C3, C4, C5) -> per level (class logits, ltrb distances in pixels, centre-ness logit)."""
    import torch
    from torch import nn

    w = cfg.width

    def norm(c: int) -> nn.Module:
        return nn.GroupNorm(min(32, c // 4) if c >= 8 else 1, c)

    def tower() -> nn.Module:
        layers: list[nn.Module] = []
        for _ in range(cfg.convs):
            layers += [nn.Conv2d(w, w, 3, padding=1), norm(w), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, w, 1), norm(w)) for c in in_channels)
            self.smooth = nn.ModuleList(nn.Conv2d(w, w, 3, padding=1) for _ in in_channels) if cfg.fpn else None
            self.cls_tower, self.reg_tower = tower(), tower()
            k = 3 if cfg.convs else 1
            self.cls = nn.Conv2d(w, num_classes, k, padding=k // 2)
            self.reg = nn.Conv2d(w, 4, k, padding=k // 2)
            self.ctr = nn.Conv2d(w, 1, k, padding=k // 2)
            self.scales = nn.Parameter(torch.ones(len(in_channels)))
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)
            for m in self.lateral:
                nn.init.kaiming_uniform_(m[0].weight, a=1)
            nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))

        def forward(self, c3, c4, c5):
            feats = [lat(c) for lat, c in zip(self.lateral, (c3, c4, c5))]
            if self.smooth is not None:
                for i in (1, 0):  # top-down: add the upsampled coarser level
                    up = nn.functional.interpolate(feats[i + 1], size=feats[i].shape[-2:], mode="nearest")
                    feats[i] = feats[i] + up
                feats = [torch.relu(s(f)) for s, f in zip(self.smooth, feats)]
            out = []
            for lvl, f in enumerate(feats):
                c, r = self.cls_tower(f), self.reg_tower(f)
                dist = torch.exp((self.scales[lvl] * self.reg(r)).clamp(max=8.0)) * STRIDES[lvl]
                out.append((self.cls(c), dist, self.ctr(r)))
            return out

    return Head()


def locations(h: int, w: int, stride: int) -> np.ndarray:
    """Centres (x, y) in input pixels of an h x w map's cells, row-major (h*w x 2)."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32) * stride + stride // 2


def assign(boxes: np.ndarray, labels: np.ndarray, shapes: list[tuple[int, int]], cfg: HeadConfig,
           crowd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FCOS targets for one image.

    ``boxes``: N x 4 (x0, y0, x1, y1) in input pixels; ``labels``: N class indices;
    ``shapes``: (h, w) of each level's map; ``crowd``: M x 4 crowd regions (same
    coordinates). Returns, over all levels' locations concatenated: class index per
    location (-1 = background, ``IGNORE`` = background inside a crowd region) and
    ltrb distances (L x 4).
    """
    cls_out, reg_out = [], []
    bounds = (0.0, *cfg.ranges, math.inf)
    for lvl, (h, w) in enumerate(shapes):
        stride = STRIDES[lvl]
        pts = locations(h, w, stride)
        n = len(pts)
        cls_t = np.full(n, -1, np.int64)
        reg_t = np.zeros((n, 4), np.float32)
        if len(boxes):
            x, y = pts[:, 0:1], pts[:, 1:2]
            ltrb = np.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)  # L x N x 4
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            r = cfg.radius * stride
            inside_centre = ((np.abs(x - cx) < r) & (np.abs(y - cy) < r))
            inside_box = ltrb.min(-1) > 0
            m = ltrb.max(-1)
            in_range = (m > bounds[lvl]) & (m <= bounds[lvl + 1])
            ok = inside_centre & inside_box & in_range
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            cost = np.where(ok, area[None, :], np.inf)
            best = cost.argmin(1)
            pos = np.isfinite(cost[np.arange(n), best])
            cls_t[pos] = labels[best[pos]]
            reg_t[pos] = ltrb[np.arange(n), best][pos]
        if crowd is not None and len(crowd):
            x, y = pts[:, 0:1], pts[:, 1:2]
            inside = ((x > crowd[:, 0]) & (x < crowd[:, 2]) & (y > crowd[:, 1]) & (y < crowd[:, 3])).any(1)
            cls_t[inside & (cls_t == -1)] = IGNORE
        cls_out.append(cls_t)
        reg_out.append(reg_t)
    return np.concatenate(cls_out), np.concatenate(reg_out)


def centreness(ltrb: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of torch ltrb distances."""
    import torch

    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) *
                      (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)))


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of boxes given as ltrb distances from the same location (torch, L x 4)."""
    import torch

    pa = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    ta = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    iw = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
    ih = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = pa + ta - inter
    iou = inter / union.clamp(min=1e-6)
    ew = torch.max(pred[:, 0], target[:, 0]) + torch.max(pred[:, 2], target[:, 2])
    eh = torch.max(pred[:, 1], target[:, 1]) + torch.max(pred[:, 3], target[:, 3])
    enclose = (ew * eh).clamp(min=1e-6)
    return 1 - (iou - (enclose - union) / enclose)


def flatten(outputs: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-level head outputs -> (logits N x L x C, distances N x L x 4, centre-ness N x L)."""
    import torch

    cls = torch.cat([c.flatten(2).transpose(1, 2) for c, _, _ in outputs], 1)
    reg = torch.cat([r.flatten(2).transpose(1, 2) for _, r, _ in outputs], 1)
    ctr = torch.cat([t.flatten(1) for _, _, t in outputs], 1)
    return cls, reg, ctr


def loss(outputs: list, cls_t: torch.Tensor, reg_t: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
         ) -> tuple[torch.Tensor, dict[str, float]]:
    """FCOS loss of a batch: ``cls_t`` N x L (long, -1 background, ``IGNORE`` left out of
    the class loss), ``reg_t`` N x L x 4."""
    import torch
    from torch.nn import functional as F

    cls, reg, ctr = flatten(outputs)
    pos = cls_t >= 0
    n_pos = max(float(pos.sum()), 1.0)
    onehot = torch.zeros_like(cls)
    onehot[pos] = F.one_hot(cls_t[pos], cls.shape[-1]).to(cls.dtype)
    p = torch.sigmoid(cls)
    ce = F.binary_cross_entropy_with_logits(cls, onehot, reduction="none")
    pt = p * onehot + (1 - p) * (1 - onehot)
    focal = ce * (1 - pt) ** gamma * (alpha * onehot + (1 - alpha) * (1 - onehot))
    l_cls = (focal * (cls_t != IGNORE).unsqueeze(-1).to(focal.dtype)).sum() / n_pos
    if not pos.any():
        zero = reg.sum() * 0 + ctr.sum() * 0
        return l_cls + zero, {"cls": float(l_cls.detach()), "box": 0.0, "ctr": 0.0}
    tgt = reg_t[pos]
    ctr_t = centreness(tgt)
    l_box = (giou_loss(reg[pos], tgt) * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
    l_ctr = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="mean")
    total = l_cls + l_box + l_ctr
    return total, {"cls": float(l_cls.detach()), "box": float(l_box.detach()), "ctr": float(l_ctr.detach())}


def decode_module(head: torch.nn.Module, strides: tuple[int, ...] = STRIDES) -> torch.nn.Module:
    """Wrap ``head`` so that it returns (boxes N x L x 4 as x0,y0,x1,y1 in input pixels,
    scores N x L x C = sqrt(sigmoid(class) * sigmoid(centre-ness)))."""
    import torch

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, c3, c4, c5):
            outs = self.head(c3, c4, c5)
            boxes, scores = [], []
            for lvl, (cls, dist, ctr) in enumerate(outs):
                n, _, h, w = cls.shape
                s = strides[lvl]
                ys = torch.arange(h, dtype=torch.float32) * s + s // 2
                xs = torch.arange(w, dtype=torch.float32) * s + s // 2
                cy = ys.view(1, h, 1).expand(1, h, w).reshape(1, -1)
                cx = xs.view(1, 1, w).expand(1, h, w).reshape(1, -1)
                d = dist.flatten(2)  # N x 4 x hw
                boxes.append(torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], -1))
                sc = torch.sigmoid(cls.flatten(2)) * torch.sigmoid(ctr.flatten(2))
                scores.append(torch.sqrt(sc).transpose(1, 2))
            return torch.cat(boxes, 1), torch.cat(scores, 1)

    return Decode()

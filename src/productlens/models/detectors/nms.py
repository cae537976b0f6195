"""Non-maximum suppression in numpy (torchvision does not import on CPU torch here)."""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N x 4, x0 y0 x1 y1) with every box in ``b`` (M x 4)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds ``iou``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    if order.size <= 1:
        return order.astype(np.int64)
    over = iou_matrix(boxes[order], boxes[order]) > iou  # one matrix, then a cheap greedy pass
    alive = np.ones(order.size, bool)
    keep: list[int] = []
    for i in range(order.size):
        if alive[i]:
            keep.append(i)
            alive &= ~over[i]
    return order[np.asarray(keep, np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """NMS within each class (boxes of different classes never suppress each other); best score first."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores)
    classes = np.asarray(classes)
    if not len(boxes):
        return np.zeros(0, np.int64)
    keep = [np.flatnonzero(classes == c)[nms(boxes[classes == c], scores[classes == c], iou)]
            for c in np.unique(classes)]
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")]

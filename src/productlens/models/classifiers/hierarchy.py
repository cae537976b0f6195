"""Category hierarchies: fine classes with one parent each at every coarser level.

The classifier predicts the fine classes; a coarse class's probability is the
sum of its children's, so fine and coarse predictions always agree: the
probabilities of every level sum to one and come from the same fine ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from productlens.types import ProductLensError


class HierarchyError(ProductLensError):
    """A fine class has two different parents at one level."""


@dataclass
class Level:
    """One coarse level: its name (csv column), labels, and the parent index of every fine class."""

    name: str
    labels: list[str]
    parent: np.ndarray

    def to_json(self) -> dict:
        return {"name": self.name, "labels": self.labels, "parent": self.parent.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "Level":
        return cls(str(data["name"]), [str(v) for v in data["labels"]], np.asarray(data["parent"], np.int64))


@dataclass
class Hierarchy:
    """The fine level's name and labels, and its coarser levels."""

    name: str
    labels: list[str]
    levels: list[Level] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [self.name] + [lv.name for lv in self.levels]

    def level(self, name: str | None) -> Level | None:
        """The coarse level called ``name``; None for the fine level (or ``name`` None)."""
        if name is None or name == self.name:
            return None
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise ProductLensError(f"unknown level {name!r}; this model predicts {', '.join(self.names)}")

    def labels_of(self, name: str | None) -> list[str]:
        lv = self.level(name)
        return self.labels if lv is None else lv.labels

    def probs(self, fine_probs: np.ndarray, name: str | None) -> np.ndarray:
        """Probabilities at level ``name``: fine ones summed over each coarse class's children."""
        lv = self.level(name)
        if lv is None:
            return fine_probs
        out = np.zeros((len(fine_probs), len(lv.labels)), fine_probs.dtype)
        np.add.at(out.T, lv.parent, np.asarray(fine_probs).T)
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "labels": self.labels, "levels": [lv.to_json() for lv in self.levels]}

    @classmethod
    def from_json(cls, data: dict) -> "Hierarchy":
        return cls(str(data["name"]), [str(v) for v in data["labels"]],
                   [Level.from_json(lv) for lv in data.get("levels", [])])


def build_hierarchy(name: str, fine: Sequence[str], parents: dict[str, Sequence[str]]) -> Hierarchy:
    """Number the fine labels (sorted) and check that each has one parent per coarse level."""
    labels = sorted(set(fine), key=_natural)
    index = {v: i for i, v in enumerate(labels)}
    levels = []
    for col, values in parents.items():
        if len(values) != len(fine):
            raise ValueError(f"level {col}: {len(values)} values for {len(fine)} items")
        coarse = sorted(set(values), key=_natural)
        cidx = {v: i for i, v in enumerate(coarse)}
        parent = np.full(len(labels), -1, np.int64)
        for f, c in zip(fine, values):
            i = index[f]
            if parent[i] not in (-1, cidx[c]):
                raise HierarchyError(
                    f"{name} {f!r} has two parents in {col}: {coarse[parent[i]]!r} and {c!r}; "
                    f"each {name} must belong to exactly one {col}")
            parent[i] = cidx[c]
        levels.append(Level(col, coarse, parent))
    _warn_unnested(levels)
    return Hierarchy(name, labels, levels)


def _warn_unnested(levels: Sequence["Level"]) -> None:
    """Log a warning for two coarse levels neither of which nests in the other (a department under two
    roots, say): each level's probabilities still sum its fine classes', but the levels can disagree."""
    for a, lower in enumerate(levels):
        for upper in levels[a + 1:]:
            pairs = set(zip(lower.parent.tolist(), upper.parent.tolist()))
            ups: dict[int, set[int]] = {}
            downs: dict[int, set[int]] = {}
            for lo, hi in pairs:
                ups.setdefault(lo, set()).add(hi)
                downs.setdefault(hi, set()).add(lo)
            if all(len(v) == 1 for v in ups.values()) or all(len(v) == 1 for v in downs.values()):
                continue  # one nests in the other
            split = min((lo for lo, his in ups.items() if len(his) > 1), key=lambda lo: _natural(lower.labels[lo]))
            others = sorted((upper.labels[hi] for hi in ups[split]), key=_natural)
            logging.getLogger(__name__).warning(
                "levels %s and %s do not nest: %s %r falls under %s %s; each level is predicted from the fine "
                "classes, so a %s and its %s can disagree", lower.name, upper.name, lower.name,
                lower.labels[split], upper.name, " and ".join(map(repr, others[:3])), lower.name, upper.name)


def _natural(v: str):
    """Sort numbers numerically ('2' < '10'), text alphabetically, numbers first."""
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


__all__ = ["Hierarchy", "HierarchyError", "Level", "build_hierarchy"]

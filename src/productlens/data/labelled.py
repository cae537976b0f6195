"""Labelled image sets for classification, and unlabelled inputs for prediction.

Training layouts read by :func:`read_labelled`:

* a folder per category: ``root/<category>/<image>``;
* the Shopee layout: ``root/train/<category>/<image>`` (``root/test.csv`` and
  ``root/test/`` are the images to predict, see :func:`read_inputs`);
* a csv with an image column (default ``image``) and the label column chosen
  by ``label``, plus optional parent-category columns; image paths are
  relative to the csv's folder.

Labels are kept as the text written in the csv or folder name (``"07"`` stays
``"07"``), so predictions give back exactly the same labels.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from productlens.data.readers import IGNORED_FOLDERS, MISSING_IMAGE, _header, _image, _rows, image_files, read_folder
from productlens.types import Item, ProductLensError

log = logging.getLogger(__name__)

SHOPEE_TEST = "test.csv"


class LabelError(ProductLensError):
    """Labels that cannot be used: missing, a class too small, unseen at training time."""


@dataclass
class LabelledSet:
    """Items with their label (text) in column ``label`` and optional coarser columns."""

    items: list[Item]
    labels: list[str]
    label: str
    parents: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # csv rows left out (no image path), one message each

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, index: Sequence[int]) -> "LabelledSet":
        idx = list(index)
        return LabelledSet([self.items[i] for i in idx], [self.labels[i] for i in idx], self.label,
                           {k: [v[i] for i in idx] for k, v in self.parents.items()}, self.source)

    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _nfc(label: str) -> str:
    """A label in Unicode's composed form: "Crème" typed on one system and a folder named so on macOS
    (decomposed, e + combining accent) are one label, not two that look alike."""
    return unicodedata.normalize("NFC", label)


def is_shopee(root: Path) -> bool:
    """A Shopee root: a ``train/`` folder (of category folders), and no other folder than ``test/``.
    A folder per category of which one is named "train" is not one."""
    if not (root.is_dir() and (root / "train").is_dir()) or (root / "train" / "train").exists():
        return False
    return all(d.name in ("train", "test") for d in root.iterdir()
               if d.is_dir() and not d.name.startswith(".") and d.name not in IGNORED_FOLDERS)


def read_labelled(path: str | os.PathLike[str], label: str | None = None, parents: Sequence[str] = (),
                  image_column: str = "image", *, skip_missing: bool = False) -> LabelledSet:
    """Read a labelled set from a folder per category, a Shopee root or a csv.

    For a csv, ``label`` names the label column (required) and ``parents`` the
    coarser columns. For folders the label is the folder name (column name
    ``label`` or ``"category"``). Raises :class:`LabelError` (a
    :class:`ProductLensError`) for missing columns or empty labels. A csv row with no
    image path is an error naming its line (training photos are read strictly), or with
    ``skip_missing`` (photos to score) left out and reported in ``skipped``.
    """
    p = Path(path)
    parents = list(dict.fromkeys(parents))  # a column given twice is one level
    if label and label in parents:
        raise LabelError(f"{label!r} is both the label and a parent column")
    if p.is_dir():
        if parents:
            raise LabelError(f"{p}: parent columns need a csv (a folder layout has one level)")
        root = p / "train" if is_shopee(p) else p
        items = read_folder(root)
        return LabelledSet(items, [_nfc(it.category) for it in items], label or "category", {}, str(p))
    if not p.is_file():
        raise ProductLensError(f"{p}: no such file or directory")
    if p.suffix.lower() != ".csv":
        raise ProductLensError(f"{p}: expected a folder per category, a Shopee root or a .csv")
    if not label:
        raise LabelError(f"{p}: name the label column (one of {', '.join(_header(p))})")
    return _read_csv(p, label, list(parents), image_column, skip_missing)


def _read_csv(path: Path, label: str, parents: list[str], image_column: str, skip_missing: bool) -> LabelledSet:
    columns = (image_column, label, *parents)
    items, labels, coarse, skipped = [], [], {c: [] for c in parents}, []
    first_line: dict[str, int] = {}  # photo -> the first row that names it
    repeats: list[tuple[int, int]] = []  # (line, the earlier line naming the same photo)
    for line, row in _rows(path, columns):
        if skip_missing and not row[image_column].strip():
            skipped.append(f"{path}, line {line}: {MISSING_IMAGE}")
            continue
        for col in (label, *parents):
            if not row[col].strip():
                raise LabelError(f"{path}, line {line}: empty {col!r} label")
        value = _nfc(row[label].strip())
        image = _image(row[image_column], path, line)
        if first_line.setdefault(image, line) != line:
            repeats.append((line, first_line[image]))
        items.append(Item(id=len(items), image=image, category=value,
                          extra={k: v for k, v in row.items() if k not in columns}))
        labels.append(value)
        for c in parents:
            coarse[c].append(_nfc(row[c].strip()))
    if not items:
        raise LabelError(f"{path}: no rows" + (f" with an image path ({len(skipped)} without)" if skipped else ""))
    if repeats:  # kept (a row is the user's), but a copy weighs its photo twice and can land in a hold-out
        log.warning("%s: %d row(s) name a photo that an earlier row names too (line %d repeats line %d)",
                    path, len(repeats), *repeats[0])
    return LabelledSet(items, labels, label, coarse, str(path), skipped)


@dataclass
class Inputs:
    """Images to predict: items and their display names (file name or csv value), and known labels."""

    items: list[Item]
    names: list[str]
    labels: list[str] | None = None
    shopee: bool = False
    skipped: list[str] = field(default_factory=list)  # csv rows left out, one message each (file, line)


def read_inputs(path: str | os.PathLike[str], image_column: str | None = None) -> Inputs:
    """Images to predict: one image, a folder (searched recursively), a csv, or a Shopee root.

    A csv needs an image column (``image``, else ``filename``, ``img_path`` or
    ``path``); a Shopee root is a folder with ``test.csv`` (``filename``) and the
    images in ``test/`` (``shopee=True``: the submission keeps ``test.csv``'s
    order and names). A csv row with no image path is reported in ``skipped``
    (file and line) and left out, like an unreadable image; the others are predicted.
    """
    p = Path(path)
    if p.is_dir() and (p / SHOPEE_TEST).is_file() and (p / "test").is_dir():
        csv_path = p / SHOPEE_TEST
        items, names = [], []
        for line, row in _rows(csv_path, ("filename",)):
            name = row["filename"].strip()
            if not name:
                raise ProductLensError(f"{csv_path}, line {line}: empty filename")
            items.append(Item(id=len(items), image=str((p / "test" / name).resolve())))
            names.append(name)
        if not items:
            raise ProductLensError(f"{csv_path}: no rows")
        return Inputs(items, names, shopee=True)
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise ProductLensError(f"{p}: no images found")
        return Inputs([Item(id=i, image=str(f.resolve())) for i, f in enumerate(files)],
                      [str(f.relative_to(p)) for f in files])
    if p.is_file() and p.suffix.lower() == ".csv":
        header = _header(p)
        col = image_column or next((c for c in ("image", "filename", "img_path", "path") if c in header), None)
        if col is None or col not in header:
            raise ProductLensError(f"{p}: no image column ('image', 'filename', 'img_path' or 'path'); "
                                   f"the csv has {', '.join(header) or 'no columns'}")
        return _csv_inputs(p, col)
    if p.is_file():
        return Inputs([Item(id=0, image=str(p.resolve()))], [p.name])
    raise ProductLensError(f"{p}: no such image, folder or csv")


def _csv_inputs(path: Path, column: str) -> Inputs:
    """The images of a csv's ``column``; a row with an empty cell is reported in ``skipped``, not fatal."""
    items, names, skipped = [], [], []
    for line, row in _rows(path, (column,)):
        if not row[column].strip():
            skipped.append(f"{path}, line {line}: {MISSING_IMAGE}")
            continue
        items.append(Item(id=len(items), image=_image(row[column], path, line)))
        names.append(row[column].strip())
    if not items and not skipped:
        raise ProductLensError(f"{path}: no rows")
    return Inputs(items, names, skipped=skipped)


def check_trainable(data: LabelledSet, min_per_class: int = 2, classes: Sequence[str] = (),
                    noun: str = "images") -> None:
    """Refuse a set with fewer than two classes or a class with fewer than ``min_per_class`` images.

    ``classes``: classes the set must keep (counted as 0 when none of their images is in
    ``data``); ``noun`` names what is counted in the message.
    """
    counts: dict[str, int] = {v: 0 for v in classes}
    for v in data.labels:
        counts[v] = counts.get(v, 0) + 1
    if len(counts) < 2:
        raise LabelError(f"{data.source}: need at least 2 classes in {data.label!r}, found {len(counts)}")
    small = sorted((v for v, c in counts.items() if c < min_per_class), key=str)
    if small:
        shown = ", ".join(f"{v!r} ({counts[v]})" for v in small[:10]) + (" ..." if len(small) > 10 else "")
        raise LabelError(f"{data.source}: {len(small)} class(es) of {data.label!r} have fewer than "
                         f"{min_per_class} {noun}: {shown}; add photos or drop these classes")


def check_readable(data: LabelledSet, ok: Sequence[int], errors: Sequence = (), min_per_class: int = 2) -> None:
    """After decoding, refuse training when no image of ``data`` could be read, or when a class
    is left with fewer than ``min_per_class`` readable images (``ok``: the readable positions).

    A class whose photos are all unreadable is named (count 0), never kept without a photo.
    ``errors``: the ``(index, source, message)`` of the unreadable images, quoted in the message.
    """
    if len(ok) == 0:
        raise LabelError(nothing_read(data, "training", errors))
    if len(ok) < len(data):
        try:
            check_trainable(data.subset(ok), min_per_class, classes=data.classes(), noun="readable images")
        except LabelError as exc:  # say which photos could not be read, and why
            if not errors:
                raise
            shown = "; ".join(str(e[2]) for e in errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3
                                                               else "")
            raise LabelError(f"{exc}; unreadable: {shown}") from None


def nothing_read(data: LabelledSet, what: str, errors: Sequence = ()) -> str:
    """The message for a set none of whose images could be read, quoting the first error."""
    first = f": {errors[0][2]}" + (" ..." if len(errors) > 1 else "") if errors else ""
    return f"{data.source}: no {what} image could be read ({len(data)} skipped){first}"


def check_known(test: LabelledSet, known: Sequence[str]) -> None:
    """Refuse test labels that the model was never trained on."""
    seen = set(known)
    unseen = sorted({v for v in test.labels if v not in seen}, key=str)
    if unseen:
        shown = ", ".join(repr(v) for v in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise LabelError(f"{test.source}: {len(unseen)} label(s) of {test.label!r} never seen in training: "
                         f"{shown}")


__all__ = ["Inputs", "LabelError", "LabelledSet", "check_known", "check_readable", "check_trainable", "is_shopee",
           "nothing_read", "read_inputs", "read_labelled"]

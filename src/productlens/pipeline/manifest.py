"""Catalog manifests: the list of images (and their metadata) a batch job embeds.

``manifest.parquet`` columns: ``id`` int64, ``image`` (absolute path or URL),
``box`` (nullable struct x, y, w, h) and ``metadata`` (JSON: the dict a catalog
stores for the item). :func:`read_manifest` also reads a user's csv or parquet
with ``id`` and ``image`` columns. pyarrow is imported inside the functions.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from productlens.fileio import atomic_path
from productlens.types import Box, Item, ProductLensError

MANIFEST = "manifest.parquet"
ROW_GROUP = 4096  # manifest rows per parquet row group: a worker reads only the groups of its shard
BOX_FIELDS = ("x", "y", "w", "h")
_URL_PREFIXES = ("http://", "https://", "file://")


def _pa():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _dumps(value: Any) -> str:
    from productlens.index.base import json_default

    return json.dumps(value, default=json_default, ensure_ascii=False)


def _abs_image(image: Any, item_id: int) -> str:
    if not isinstance(image, (str, os.PathLike)) or not str(image):
        raise ProductLensError(f"item {item_id}: a manifest needs an image path or URL, got {type(image).__name__}")
    text = str(image)
    return text if text.lower().startswith(_URL_PREFIXES) else os.path.abspath(os.path.expanduser(text))


def _manifest_table(items: Sequence[Item]):
    from productlens.index.base import check_ids
    from productlens.pipeline.catalog import item_metadata

    pa, _ = _pa()
    ids = check_ids([it.id for it in items], unique=True, what="item ids")
    box_type = pa.struct([(f, pa.float64()) for f in BOX_FIELDS])
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "image": pa.array([_abs_image(it.image, it.id) for it in items], pa.string()),
        "box": pa.array([dict(zip(BOX_FIELDS, it.box.as_tuple())) if it.box else None for it in items], box_type),
        "metadata": pa.array([_dumps(item_metadata(it)) for it in items], pa.string()),
    })


def write_manifest(items: Sequence[Item], work_dir: str | os.PathLike) -> Path:
    """Write ``items`` to ``work_dir/manifest.parquet`` (atomically) and return its path.

    Columns: ``id`` int64, ``image`` (absolute path or URL), ``box`` (nullable
    struct x, y, w, h) and ``metadata`` (JSON: the dict a catalog stores for the
    item). An existing manifest with the same ids, images and boxes in the same
    order is kept (so a rerun resumes); a different one raises ProductLensError.
    """
    if not items:
        raise ProductLensError("write_manifest: no items")
    _, pq = _pa()
    table = _manifest_table(items)
    path = Path(work_dir) / MANIFEST
    if path.is_file():
        old = pq.read_table(path, columns=["id", "image", "box"])
        for col in ("id", "image", "box"):
            if not old.column(col).equals(table.column(col)):
                a, b = old.column(col).to_pylist(), table.column(col).to_pylist()
                i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                raise ProductLensError(
                    f"{Path(work_dir)} belongs to another catalog: its manifest has {len(a)} items and differs "
                    f"from these {len(b)} items in column {col!r} at row {i}; use a new work dir (or delete it)")
        return path
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP)
    return path


def _cell(value: Any) -> Any:
    """A csv/parquet cell: None for empty or NaN, stripped strings, JSON-able scalars."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, (bool, int, float, list, dict)) else str(value)


def _row_item(row: dict[str, Any], path: Path, line: int) -> Item:
    from productlens.data.readers import _image, _int, _opt_int

    row = {k.strip(): _cell(v) for k, v in row.items() if k is not None}
    used = {"id", "image", "product_id", "box", "bbox_x", "bbox_y", "bbox_w", "bbox_h"}
    title_col = next((c for c in ("title", "product_name") if c in row), None)
    category_col = next((c for c in ("category", "category_name") if c in row), None)
    used |= {title_col, category_col} - {None}
    try:
        box = Box.parse(row["box"]) if row.get("box") is not None else (
            Box.parse([row.get(f"bbox_{c}") for c in BOX_FIELDS]) if "bbox_x" in row else None)
    except ProductLensError as exc:
        raise ProductLensError(f"{path}, line {line}: {exc}") from None
    if row.get("id") is None:
        raise ProductLensError(f"{path}, line {line}: missing id")
    return Item(id=_int(row["id"], "id", path, line), image=_image(str(row.get("image") or ""), path, line),
                product_id=_opt_int(row.get("product_id"), "product_id", path, line),
                title=str(row.get(title_col) or ""), category=str(row.get(category_col) or ""), box=box,
                extra={k: v for k, v in row.items() if k not in used and v is not None})


def _user_items(rows, path: Path, skipped: list[str] | None) -> list[Item]:
    """The items of a user's manifest rows ``(line, row)``; a row with no image is left out with a
    warning, as :func:`~productlens.data.readers.read_catalog` leaves out such rows."""
    from productlens.data.readers import _without_missing

    items, missing = [], []
    for line, row in rows:
        image = next((v for k, v in row.items() if k is not None and k.strip() == "image"), None)
        if not str(_cell(image) or "").strip():
            missing.append(line)
            continue
        items.append(_row_item(row, path, line))
    return _without_missing(items, missing, path, skipped)


def read_manifest(path: str | os.PathLike, *, skipped: list[str] | None = None) -> list[Item]:
    """Read a manifest back as items: this module's ``manifest.parquet``, or a user's own.

    A user's csv or parquet manifest needs ``id`` and ``image`` columns (relative
    image paths are resolved against the manifest's folder); ``product_id``,
    ``title`` (or ``product_name``), ``category`` (or ``category_name``) and a box
    (``box`` as "x,y,w,h", or ``bbox_x, bbox_y, bbox_w, bbox_h``) are optional;
    every other non-empty column goes to the item's metadata. Anything else
    (a folder, a gallery csv, products.jsonl) is read with
    :func:`productlens.data.readers.read_catalog`. Rows that name no image are left out
    with a warning, and one message each is added to ``skipped`` when a list is given.
    """
    from productlens.data.readers import _header, _rows, read_catalog

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet" and p.is_file():
        _, pq = _pa()
        table = pq.read_table(p)
        missing = [c for c in ("id", "image") if c not in table.column_names]
        if missing:
            raise ProductLensError(f"{p}: missing column(s) {', '.join(missing)}; "
                                   f"it has {', '.join(table.column_names)}")
        if "metadata" not in table.column_names:  # a user's parquet: one column per field
            return _user_items(((i + 1, row) for i, row in enumerate(table.to_pylist())), p, skipped)
        items = []
        columns = (table.column(c).to_pylist() for c in ("id", "image", "box", "metadata"))
        for item_id, image, box, text in zip(*columns):
            md = json.loads(text)
            pid = md.pop("product_id", None)
            items.append(Item(id=item_id, image=image, product_id=pid, title=md.pop("title", ""),
                              category=md.pop("category", ""), box=Box(**box) if box else None,
                              extra={k: v for k, v in md.items() if k != "image"}))
        return items
    if suffix == ".csv" and p.is_file() and "id" in _header(p):
        return _user_items(_rows(p, ("id", "image")), p, skipped)
    return read_catalog(p, skipped=skipped)


__all__ = ["MANIFEST", "read_manifest", "write_manifest"]
